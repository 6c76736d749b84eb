"""LoupeModel: configs, region head geometry, every loss combination trains, edge cases."""
import itertools
import sys

import pytest
import torch

from loupe_core.losses import cmc_loss
from loupe_core.model import ContrastiveBank, LossConfig, LoupeModel, ModelConfig
from loupe_core.model.region_head import anchor_boxes, box_iou, cells_in_boxes, greedy_nms

TINY = dict(image_size=32, patch_size=8, image_dim=32, image_depth=1, image_heads=2, text_vocab_size=64,
            text_dim=32, text_depth=1, text_heads=2, text_max_tokens=12, text_dropout=0.0, embed_dim=32,
            anchors=[[1, 1], [2, 2], [3, 2]], top_k=2, num_random=1)
FAST = dict(token_num_samples=3, semantic_num_samples=20, pairs_per_step=2, probe_size=2)


def make_batch(B=4, L=8, M=3, seed=0, dtype=torch.float32):
    """A fixed random batch in the CONTRACTS section 3 format (vocab 64)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L - 3, L - 1, 4, L, 5][:B])
    text_mask = torch.arange(L)[None, :] < lengths[:, None]
    input_ids = torch.randint(1, 64, (B, L), generator=g) * text_mask
    phrase_tokens = torch.zeros(B, M, L, dtype=torch.bool)
    phrase_mask = torch.zeros(B, M, dtype=torch.bool)
    for b in range(B):
        for m in range(min(M, 1 + b % M)):
            phrase_tokens[b, m, 2 * m:2 * m + 2] = True
            phrase_mask[b, m] = True
    return dict(images=torch.randn(B, 3, 32, 32, generator=g, dtype=dtype), input_ids=input_ids,
                text_mask=text_mask, phrase_tokens=phrase_tokens, phrase_mask=phrase_mask,
                captions=["c"] * B, keys=[str(b) for b in range(B)])


# ------------------------------------------------------------------------------ configs
def test_configs_round_trip_and_reject_unknown_keys():
    cfg = ModelConfig.from_dict(TINY)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    lcfg = LossConfig.from_dict(dict(tsa=True, fsa=True, unsil=True, token_source="hybrid"))
    assert LossConfig.from_dict(lcfg.to_dict()) == lcfg and lcfg.hybrid_levels() == ["token"]
    with pytest.raises(ValueError, match="'image_szie'"):
        ModelConfig.from_dict({"image_szie": 32})
    with pytest.raises(ValueError, match="unsil"):
        LossConfig(tsa=True, token_source="hybrid")
    with pytest.raises(ValueError, match="hybrid"):
        LossConfig(unsil=True)
    with pytest.raises(ValueError, match="patch_size"):
        ModelConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="token_source"):
        LossConfig(token_source="magic")
    with pytest.raises(ValueError, match="anchors"):
        ModelConfig(anchors=[[1, 0]])


def test_swin_without_timm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="timm"):
        LoupeModel(dict(TINY, image_tower="swin"))


# ------------------------------------------------------------------------------ region head
def test_candidate_geometry_matches_the_box_definition():
    """Cells: centres inside the centred anchor box (always the centre cell); box: the cells' rectangle."""
    model = LoupeModel(TINY)
    geo = model.region_head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    anchors = TINY["anchors"]
    assert geo.boxes.shape == (16 * 3, 4) and geo.masks.shape == (16 * 3, 16)
    for cell, a in itertools.product(range(16), range(3)):
        r, c = divmod(cell, 4)
        cx, cy = (c + 0.5) * 8, (r + 0.5) * 8
        w, h = anchors[a][0] * 8, anchors[a][1] * 8
        x0, y0, x1, y1 = max(cx - w / 2, 0), max(cy - h / 2, 0), min(cx + w / 2, 32), min(cy + h / 2, 32)
        want = [x0 <= (cc + 0.5) * 8 < x1 and y0 <= (rr + 0.5) * 8 < y1 for rr in range(4) for cc in range(4)]
        want[cell] = True  # always the centre cell
        assert geo.masks[cell * 3 + a].tolist() == want
        rows = [rr for rr in range(4) if any(want[rr * 4 + cc] for cc in range(4))]
        cols = [cc for cc in range(4) if any(want[rr * 4 + cc] for rr in range(4))]
        assert geo.boxes[cell * 3 + a].tolist() == [cols[0] * 8, rows[0] * 8, (cols[-1] + 1) * 8, (rows[-1] + 1) * 8]
    assert geo.masks[0::3].sum(1).eq(1).all()  # a 1x1 anchor is exactly its cell
    torch.testing.assert_close(geo.iou, box_iou(geo.boxes, geo.boxes))
    assert torch.equal(cells_in_boxes(geo.boxes, (4, 4), 8.0), geo.masks)  # box and cells agree


def test_even_anchor_box_is_its_cells_rectangle():
    """Hand-computed: a 2x2 anchor at cell (row 1, col 2) of a 4x4 grid of 8-px cells takes rows
    0-1 and columns 1-2 (the centre cell and its upper/left side), so its box is [8, 0, 24, 16]."""
    head = LoupeModel(dict(TINY, anchors=[[2, 2], [2, 1]])).region_head
    geo = head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    cell = 1 * 4 + 2
    assert geo.boxes[cell * 2].tolist() == [8.0, 0.0, 24.0, 16.0]
    assert geo.masks[cell * 2].nonzero().flatten().tolist() == [1, 2, 5, 6]
    assert geo.boxes[cell * 2 + 1].tolist() == [8.0, 8.0, 24.0, 16.0]  # 2 wide, 1 high
    corner = 0  # clipped at the image border: only the cell itself
    assert geo.boxes[corner * 2].tolist() == [0.0, 0.0, 8.0, 8.0]


def test_greedy_nms_against_brute_force():
    g = torch.Generator().manual_seed(0)
    boxes = anchor_boxes((4, 4), 8.0, [[1, 1], [2, 2], [3, 3]])
    iou = box_iou(boxes, boxes)
    for _ in range(5):
        scores = torch.randn(boxes.shape[0], generator=g)
        kept = greedy_nms(scores, iou, 4, 0.35).tolist()
        want = []
        for i in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
            if all(float(iou[i, j]) <= 0.35 for j in want):
                want.append(i)
        assert kept == want[:4]
    # fewer survivors than top_k: the best suppressed fill the list
    scores = torch.arange(boxes.shape[0], dtype=torch.float32)
    assert len(greedy_nms(scores, iou, boxes.shape[0], 0.0)) == boxes.shape[0]


def test_select_top_k_plus_uniform_contrast_candidates():
    torch.manual_seed(0)
    model = LoupeModel(TINY)
    geo = model.region_head.geometry((4, 4), 8.0, torch.device("cpu"), torch.float32)
    logits = torch.randn(3, 48)
    seen = torch.zeros(3, 48)
    for _ in range(300):
        index = model.region_head.select(logits, geo, 2, 2, 0.5)
        assert index.shape == (3, 4)
        for b in range(3):
            assert index[b, :2].tolist() == greedy_nms(logits[b], geo.iou, 2, 0.5).tolist()
            assert len(set(index[b].tolist())) == 4  # contrast candidates are never top ones
        seen.scatter_add_(1, index[:, 2:], torch.ones(3, 2))
    top = index[:, :2]
    assert (seen.gather(1, top) == 0).all()
    assert (seen.scatter(1, top, 1.0) > 0).all()  # every other candidate gets drawn


def test_propose_regions_consistent_with_contract():
    torch.manual_seed(0)
    model = LoupeModel(TINY).eval()
    batch = make_batch()
    feats = model.encode_images(batch["images"])
    regions = model.propose_regions(feats, top_k=3)
    assert regions.boxes.shape == (4, 3, 4) and regions.patch_masks.shape == (4, 3, 16)
    assert regions.emb.shape == (4, 3, 32)
    torch.testing.assert_close(regions.emb.norm(dim=-1), torch.ones(4, 3))
    assert torch.equal(regions.patch_masks, cells_in_boxes(regions.boxes, feats.grid, feats.patch_size)
                       | regions.patch_masks)
    assert (regions.scores[:, :-1] >= regions.scores[:, 1:]).all()  # best first
    txt = model.encode_texts(batch["input_ids"], batch["text_mask"])
    phrases = model.phrase_embeddings(txt, batch["phrase_tokens"])
    want = torch.nn.functional.normalize(
        (batch["phrase_tokens"][1, 0].float() @ txt.token_emb[1]) / batch["phrase_tokens"][1, 0].sum(), dim=0)
    torch.testing.assert_close(phrases[1, 0], want)
    img, tx = model(batch, embed_only=True)
    torch.testing.assert_close(img, feats.global_emb)
    torch.testing.assert_close(tx, txt.global_emb)


# ------------------------------------------------------------------------------ training
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
    model = LoupeModel(TINY, dict(FAST, **COMBOS[name]))
    batch = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, steps = [], 20
    for step in range(steps):
        out = model(batch, step=step, total_steps=steps)
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
    model = LoupeModel(TINY)
    batch = make_batch()
    with torch.no_grad():
        img, txt = model(batch, embed_only=True)
    plain = model(batch).total
    banked = model(batch, bank=ContrastiveBank(img, txt, 0)).total
    assert banked.item() == pytest.approx(plain.item(), rel=1e-6)
    half = {k: v[:2] for k, v in batch.items()}
    part = model(half, bank=ContrastiveBank(img, txt, 0)).total
    assert part.item() == pytest.approx(cmc_loss(img, txt, model.logit_scale.exp()).item(), rel=1e-5)


def test_bad_batch_without_phrases_and_flat_images_is_finite():
    torch.manual_seed(0)
    model = LoupeModel(TINY, dict(FAST, tsa=True, fsa=True))
    batch = make_batch()
    batch["phrase_mask"][:] = False
    batch["phrase_tokens"][:] = False
    batch["images"] = torch.full_like(batch["images"], 0.7)
    out = model(batch)
    out.total.backward()
    assert torch.isfinite(out.total) and out.terms["fsa"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_single_candidate_gives_zero_tsa_not_nan():
    torch.manual_seed(0)
    model = LoupeModel(dict(TINY, top_k=1, num_random=0), dict(FAST, tsa=True, fsa=True))
    out = model(make_batch())
    out.total.backward()
    assert out.terms["tsa"].item() == 0.0 and torch.isfinite(out.total)


@pytest.mark.parametrize("source", ["sampling", "hybrid"])
def test_one_patch_candidates_carry_no_tsa_label(monkeypatch, source):
    """Eq. 7 gives a one-patch region I = 0 whatever the model does: no label, left out of L_TSA."""
    import loupe_core.model.loupe as loupe_module

    torch.manual_seed(0)
    model = LoupeModel(TINY, dict(FAST, tsa=True, token_source=source, unsil=source == "hybrid"))
    B, A = 4, len(TINY["anchors"])  # grid 4 x 4; candidate = cell * A + anchor; anchors 1x1, 2x2, 3x2
    chosen = torch.tensor([0 * A + 0, 5 * A + 1, 5 * A + 0, 6 * A + 2, 0 * A + 1])
    monkeypatch.setattr(model.region_head, "select", lambda logits, *a, **k: chosen.expand(logits.shape[0], -1))
    seen = {}
    real_tsa = loupe_module.tsa_loss
    monkeypatch.setattr(loupe_module, "tsa_loss", lambda c, i, v: seen.update(values=i, valid=v) or real_tsa(c, i, v))
    out = model(make_batch(B), step=0, total_steps=10)
    cells = model.region_head.geometry((4, 4), 8.0, "cpu", torch.float32).masks[chosen].sum(dim=1)
    assert cells.tolist() == [1, 4, 1, 6, 1]  # the 2x2 box of the corner cell 0 is clipped to one cell
    want = (cells >= 2).expand(B, -1)
    P = FAST["pairs_per_step"]
    assert torch.equal(seen["valid"], want[:P]) and (seen["values"][~seen["valid"]] == 0).all()
    assert torch.isfinite(out.terms["tsa"])


def test_diagnostics_off_skips_the_probe_and_changes_nothing_else():
    losses = {}
    for diagnostics in (True, False):
        torch.manual_seed(0)
        model = LoupeModel(TINY, dict(FAST, tsa=True, fsa=True, unsil=True, token_source="hybrid",
                                      semantic_source="hybrid"))
        out = model(make_batch(), step=5, total_steps=10, diagnostics=diagnostics)
        assert ("unsil_probe_error_token" in out.logs) == diagnostics
        assert ("unsil_probe_error_semantic" in out.logs) == diagnostics
        losses[diagnostics] = {k: v.item() for k, v in out.terms.items()}
        losses[diagnostics]["next_draw"] = torch.rand(()).item()  # the global RNG is left alone too
    assert losses[True] == losses[False]


def test_float64_forward():
    torch.manual_seed(0)
    model = LoupeModel(TINY, dict(FAST, tsa=True, fsa=True)).double()
    out = model(make_batch(dtype=torch.float64))
    assert out.total.dtype == torch.float64 and torch.isfinite(out.total)
    out.total.backward()


def test_bf16_autocast_forward_feeds_the_engines_float32():
    torch.manual_seed(0)
    model = LoupeModel(TINY, dict(FAST, tsa=True, fsa=True, unsil=True, token_source="hybrid"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(), step=5, total_steps=10)
    out.total.backward()
    assert all(torch.isfinite(t.float()) for t in out.terms.values())


def test_hybrid_decisions_follow_sigma_and_warmup():
    torch.manual_seed(0)
    model = LoupeModel(TINY, dict(FAST, tsa=True, unsil=True, token_source="hybrid", probe_size=0,
                                  unsil_gate=0.0))  # the published hybrid: no gate
    batch = make_batch()
    head = model.unsil["token"].net.sigma_head[-1]
    share = lambda step: model(batch, step=step, total_steps=10).logs["unsil_share_token"]  # noqa: E731
    assert share(0) == 0.0  # warm-up: every target sampled
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-50.0)  # sigma -> 0: always UNSIL
    assert share(5) == 1.0
    with torch.no_grad():
        head.bias.fill_(50.0)  # sigma -> 1: always sampled
    assert share(5) == 0.0


def test_bad_inputs_name_the_problem():
    model = LoupeModel(TINY, dict(fsa=True))
    batch = make_batch()
    with pytest.raises(ValueError, match="phrase_mask"):
        model({k: v for k, v in batch.items() if k != "phrase_mask"})
    with pytest.raises(ValueError, match="images"):
        model(dict(batch, images=torch.zeros(4, 3, 16, 16)))
    with pytest.raises(ValueError, match="text_mask"):
        model(dict(batch, text_mask=batch["text_mask"].long()))
    with pytest.raises(ValueError, match="top_k"):
        model.propose_regions(model.encode_images(batch["images"]), 0)


# ------------------------------------------------------------------------------ Swin wrapper
class _TinySwinLike(torch.nn.Module):
    """A two-stage stand-in with timm Swin's interface (timm itself is optional and absent here):
    NHWC ``patch_embed`` (4-pixel patches), ``pos_drop``, ``layers`` (a 2x2 patch merge), ``norm``,
    ``num_features``, ``absolute_pos_embed``."""

    def __init__(self, dim=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 4, stride=4)
        self.patch_embed = lambda x: self.conv(x).permute(0, 2, 3, 1)
        self.pos_drop = torch.nn.Identity()
        self.absolute_pos_embed = None
        self.merge = torch.nn.Linear(4 * dim, 2 * dim)
        self.layers = torch.nn.Sequential(_PatchMerge(self.merge))
        self.norm = torch.nn.LayerNorm(2 * dim)
        self.num_features = 2 * dim


class _PatchMerge(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):  # [B, H, W, C] -> [B, H/2, W/2, 2C]
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.linear(x)


def test_swin_wrapper_grids_zero_baseline_and_no_drop(monkeypatch):
    fake = type(sys)("timm")
    fake.create_model = lambda name, **kw: _TinySwinLike()
    monkeypatch.setitem(sys.modules, "timm", fake)
    torch.manual_seed(0)
    model = LoupeModel(dict(TINY, image_tower="swin"), dict(FAST, tsa=True, fsa=True))
    tower = model.image_tower
    assert (tower.token_grid, tower.token_cell, tower.final_grid, tower.final_cell) == ((8, 8), 4.0, (4, 4), 8.0)
    assert tower.supports_drop is False
    out = model(make_batch())
    out.total.backward()
    assert torch.isfinite(out.total) and set(out.terms) == {"cmc", "tsa", "fsa"}
    tokens = tower.embed_tokens(torch.randn(2, 3, 32, 32))
    keep = torch.ones(2, 64, dtype=torch.bool)
    keep[0, 3] = False
    with pytest.raises(ValueError, match="drop"):
        tower(tokens, keep)
    with pytest.raises(ValueError, match="drop"):
        LoupeModel(dict(TINY, image_tower="swin"), dict(tsa=True, token_baseline="drop"))
