"""LoupeObjective: every loss combination trains, the contrastive bank, labels' edge cases, dtypes,
UNSIL's hybrid decisions, bad batches."""
import pytest
import torch

from loupe_core.objective import ContrastiveBank, LoupeObjective, StepContext
from loupe_core.objective.losses import cmc_loss
from test_model import FAST, TINY, make_batch

COMBOS = {
    "cmc": dict(),
    "cmc+tsa": dict(tsa=True),
    "cmc+tsa+fsa(sampling)": dict(tsa=True, fsa=True, semantic_source="sampling"),
    "cmc+tsa+fsa+unsil(hybrid)": dict(tsa=True, fsa=True, unsil=True, token_source="hybrid",
                                      semantic_source="hybrid", warmup_fraction=0.3),
    "cmc+tsa+fsa(exact)": dict(tsa=True, fsa=True, semantic_source="exact"),
}


@pytest.mark.parametrize("name", sorted(COMBOS))
def test_every_loss_combination_trains(name):
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, **COMBOS[name]))
    batch = make_batch()
    opt = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    losses, steps = [], 20
    for step in range(steps):
        out = objective(batch, StepContext(index=step, total_steps=steps))
        assert set(out.terms) == {k for k in ("cmc", "tsa", "fsa", "unsil") if k in name}
        assert all(torch.isfinite(t) for t in out.terms.values())
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.total.item() - out.terms.get("unsil", torch.zeros(())).item())
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # L_UNSIL (noisy targets) is checked in test_unsil
    if "unsil" in name:
        assert {"unsil_share_token", "unsil_share_semantic", "unsil_probe_error_token",
                "label_time_token", "label_time_semantic"} <= set(out.logs)


def test_bank_loss_equals_plain_full_batch_loss():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY)
    batch = make_batch()
    with torch.no_grad():
        img, txt = objective(batch, embed_only=True)
    plain = objective(batch).total
    banked = objective(batch, StepContext(bank=ContrastiveBank(img, txt, 0))).total
    assert banked.item() == pytest.approx(plain.item(), rel=1e-6)
    half = {k: v[:2] for k, v in batch.items()}
    part = objective(half, StepContext(bank=ContrastiveBank(img, txt, 0))).total
    assert part.item() == pytest.approx(cmc_loss(img, txt, objective.model.logit_scale.exp()).item(), rel=1e-5)


def test_bad_batch_without_phrases_and_flat_images_is_finite():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, fsa=True))
    batch = make_batch()
    batch["phrase_mask"][:] = False
    batch["phrase_tokens"][:] = False
    batch["images"] = torch.full_like(batch["images"], 0.7)
    out = objective(batch)
    out.total.backward()
    assert torch.isfinite(out.total) and out.terms["fsa"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in objective.parameters() if p.grad is not None)


def test_single_candidate_gives_zero_tsa_not_nan():
    torch.manual_seed(0)
    objective = LoupeObjective(dict(TINY, top_k=1, num_random=0), dict(FAST, tsa=True, fsa=True))
    out = objective(make_batch())
    out.total.backward()
    assert out.terms["tsa"].item() == 0.0 and torch.isfinite(out.total)


@pytest.mark.parametrize("source", ["sampling", "hybrid"])
def test_one_patch_candidates_carry_no_tsa_label(monkeypatch, source):
    """Eq. 7 gives a one-patch region I = 0 whatever the objective does: no label, left out of L_TSA."""
    import loupe_core.objective.terms.tsa as loupe_module

    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, token_source=source, unsil=source == "hybrid"))
    B, A = 4, len(TINY["anchors"])  # grid 4 x 4; candidate = cell * A + anchor; anchors 1x1, 2x2, 3x2
    chosen = torch.tensor([0 * A + 0, 5 * A + 1, 5 * A + 0, 6 * A + 2, 0 * A + 1])
    monkeypatch.setattr(objective.model.region_head, "select", lambda logits, *a, **k: chosen.expand(logits.shape[0], -1))
    seen = {}
    real_tsa = loupe_module.tsa_loss
    monkeypatch.setattr(loupe_module, "tsa_loss",
                        lambda c, i, v, *rest: seen.update(values=i, valid=v) or real_tsa(c, i, v, *rest))
    out = objective(make_batch(B), StepContext(index=0, total_steps=10))
    cells = objective.model.region_head.geometry((4, 4), 8.0, "cpu", torch.float32).masks[chosen].sum(dim=1)
    assert cells.tolist() == [1, 4, 1, 6, 1]  # the 2x2 box of the corner cell 0 is clipped to one cell
    want = (cells >= 2).expand(B, -1)
    P = FAST["pairs_per_step"]
    assert torch.equal(seen["valid"], want[:P]) and (seen["values"][~seen["valid"]] == 0).all()
    assert torch.isfinite(out.terms["tsa"])


def test_diagnostics_off_skips_the_probe_and_changes_nothing_else():
    losses = {}
    for diagnostics in (True, False):
        torch.manual_seed(0)
        objective = LoupeObjective(TINY, dict(FAST, tsa=True, fsa=True, unsil=True, token_source="hybrid",
                                      semantic_source="hybrid"))
        out = objective(make_batch(), StepContext(index=5, total_steps=10, diagnostics=diagnostics))
        assert ("unsil_probe_error_token" in out.logs) == diagnostics
        assert ("unsil_probe_error_semantic" in out.logs) == diagnostics
        losses[diagnostics] = {k: v.item() for k, v in out.terms.items()}
        losses[diagnostics]["next_draw"] = torch.rand(()).item()  # the global RNG is left alone too
    assert losses[True] == losses[False]


def test_float64_forward():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, fsa=True)).double()
    out = objective(make_batch(dtype=torch.float64))
    assert out.total.dtype == torch.float64 and torch.isfinite(out.total)
    out.total.backward()


def test_bf16_autocast_forward_feeds_the_engines_float32():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, fsa=True, unsil=True, token_source="hybrid"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(make_batch(), StepContext(index=5, total_steps=10))
    out.total.backward()
    assert all(torch.isfinite(t.float()) for t in out.terms.values())


def test_hybrid_decisions_follow_sigma_and_warmup():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, unsil=True, token_source="hybrid", probe_size=0,
                                  unsil_gate=0.0))  # the published hybrid: no gate
    batch = make_batch()
    head = objective.unsil["token"].net.sigma_head[-1]
    share = lambda step: objective(batch, StepContext(index=step, total_steps=10)).logs[  # noqa: E731
        "unsil_share_token"]
    assert share(0) == 0.0  # warm-up: every target sampled
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-50.0)  # sigma -> 0: always UNSIL
    assert share(5) == 1.0
    with torch.no_grad():
        head.bias.fill_(50.0)  # sigma -> 1: always sampled
    assert share(5) == 0.0


def test_bad_inputs_name_the_problem():
    objective = LoupeObjective(TINY, dict(fsa=True))
    batch = make_batch()
    with pytest.raises(ValueError, match="phrase_mask"):
        objective({k: v for k, v in batch.items() if k != "phrase_mask"})
    with pytest.raises(ValueError, match="images"):
        objective(dict(batch, images=torch.zeros(4, 3, 16, 16)))
    with pytest.raises(ValueError, match="text_mask"):
        objective(dict(batch, text_mask=batch["text_mask"].long()))
    with pytest.raises(ValueError, match="top_k"):
        objective.model.propose_regions(objective.model.encode_images(batch["images"]), 0)




def test_the_step_context_travels_beside_the_batch_and_is_checked():
    """Rows, size and ranks come from the StepContext, never from the batch dict; rows that do not
    fit the batch are refused naming ``step.rows``."""
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, fsa=True, semantic_source="sampling"))
    batch = make_batch()
    own = objective(batch, StepContext(index=3, total_steps=10)).total
    same = objective(batch, StepContext(index=3, total_steps=10, rows=torch.arange(4), global_size=4)).total
    moved = objective(batch, StepContext(index=3, total_steps=10, rows=torch.arange(4, 8), global_size=8)).total
    assert own.item() == same.item() and moved.item() != own.item()  # other rows: other draws and budget
    with pytest.raises(ValueError, match=r"step.rows must be long\[4\]"):
        objective(batch, StepContext(rows=torch.arange(3)))
    with pytest.raises(ValueError, match=r"step.rows must lie in \[0, step.global_size=4\)"):
        objective(batch, StepContext(rows=torch.arange(2, 6), global_size=4))
    with pytest.raises(ValueError, match="step must be a loupe_core.objective.StepContext"):
        objective(batch, 3)
