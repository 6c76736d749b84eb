"""Label sources: semantic labels against brute-force SII of game v2, token labels per target,
and the hybrid strategy's decisions, label mixing and UNSIL training signal."""
import itertools
import math

import pytest
import torch

from loupe_core import global_batch as gb
from loupe_core.objective import labels as lab
from loupe_core.objective.losses import unsil_loss
from loupe_core.model import LoupeModel
from loupe_core.objective.unsil import Unsil, UnsilInputs


def v2_reference(A, regions, phrases):
    """Game v2 (spec section 4) of the present regions / phrases, float64, straight from the equations."""
    if not regions or not phrases:
        return 0.0
    e = lambda i, j: math.exp(float(A[i, j]))  # noqa: E731
    s1 = sum(max(e(i, j) for j in phrases) / sum(e(i, j) for j in phrases) for i in regions) / len(regions)
    s2 = sum(max(e(i, j) for i in regions) / sum(e(i, j) for i in regions) for j in phrases) / len(phrases)
    return (s1 + s2) / 2


def sii_reference(A, region_ids, phrase_ids, i, j):
    """Pairwise Shapley interaction (Eq. 10) of region i and phrase j by enumeration over the players."""
    players = [("r", r) for r in region_ids] + [("p", p) for p in phrase_ids]
    others = [x for x in players if x not in (("r", i), ("p", j))]
    n, total = len(players), 0.0

    def v(coalition):
        return v2_reference(A, [x for t, x in coalition if t == "r"], [x for t, x in coalition if t == "p"])

    for size in range(len(others) + 1):
        weight = math.factorial(size) * math.factorial(n - size - 2) / math.factorial(n - 1)
        for S in itertools.combinations(others, size):
            S = list(S)
            total += weight * (v(S + [("r", i), ("p", j)]) - v(S + [("r", i)]) - v(S + [("p", j)]) + v(S))
    return total


def _padded_alignment():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, 3, generator=g, dtype=torch.float64) * 2
    region_mask = torch.tensor([[True, False, True], [True, True, True]])
    phrase_mask = torch.tensor([[True, True, False], [False, False, False]])
    return A, region_mask, phrase_mask


def test_semantic_exact_labels_match_brute_force_with_padding():
    A, region_mask, phrase_mask = _padded_alignment()
    got = lab.semantic_interactions(A, region_mask, phrase_mask, method="exact", num_samples=10, seed=0)
    for i, j in itertools.product(range(3), range(3)):
        want = sii_reference(A[0], [0, 2], [0, 1], i, j) if region_mask[0, i] and phrase_mask[0, j] else 0.0
        assert got[0, i, j].item() == pytest.approx(want, abs=1e-9)
    assert torch.equal(got[1], torch.zeros(3, 3, dtype=torch.float64))  # a caption without phrases


def test_semantic_sampling_by_pair_uses_only_present_players():
    A, region_mask, phrase_mask = _padded_alignment()
    values = lab.semantic_scores_by_pair(A, region_mask, phrase_mask, torch.tensor([4, 9]),
                                        3, num_samples=4000, pairs=torch.tensor([0]))
    assert torch.equal(values[1], torch.zeros_like(values[1]))  # a pair not asked for
    got = [values[0, 2, 1].item(), values[0, 0, 0].item()]
    want = [sii_reference(A[0], [0, 2], [0, 1], 2, 1), sii_reference(A[0], [0, 2], [0, 1], 0, 0)]
    # with the padded players counted, the size weights (and the values) would differ markedly
    assert got == pytest.approx(want, abs=0.03)


def _tiny_towers():
    torch.manual_seed(0)
    model = LoupeModel(dict(image_size=16, patch_size=8, image_dim=8, image_depth=1, image_heads=1,
                            text_vocab_size=16, text_dim=8, text_depth=1, text_heads=1, text_max_tokens=4,
                            embed_dim=8, top_k=2))
    images = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = ids > 0
    return model, model.image_tower.embed_tokens(images), model.text_tower.embed_tokens(ids), mask


def test_token_target_labels_equal_the_batched_labels():
    model, img, txt, mask = _tiny_towers()
    regions = torch.tensor([[[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]],
                            [[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0]]], dtype=torch.bool)
    common = dict(baseline="zero", num_samples=8, seed=0)
    batched = lab.token_interactions(model.image_tower, model.text_tower, img, txt, mask, regions,
                                     method="exact", **common)
    targets = torch.tensor([[1, 2], [0, 1], [1, 0], [0, 2]])
    picked = lab.token_target_interactions(model.image_tower, model.text_tower, img, txt, mask, regions,
                                           targets, method="exact", **common)
    torch.testing.assert_close(picked, batched[targets[:, 0], targets[:, 1]])
    assert batched[0, 2].item() == 0.0  # one patch: exactly 0
    assert batched.abs().sum() > 0


def test_inference_mode_restores_flags_and_disables_grad():
    model, *_ = _tiny_towers()
    model.train()
    model.text_tower.eval()
    with lab.inference_mode(model.image_tower, model.text_tower):
        assert not model.image_tower.training and not torch.is_grad_enabled()
    assert model.image_tower.training and not model.text_tower.training and torch.is_grad_enabled()


def test_hybrid_decision_frequency():
    g = torch.Generator().manual_seed(0)
    sigma = torch.full((20000,), 0.3)
    assert lab.hybrid_decision(sigma, g).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert not lab.hybrid_decision(torch.zeros(100), g).any()
    assert lab.hybrid_decision(torch.ones(100), g).all()


def _unsil_case(bias):
    torch.manual_seed(0)
    net = Unsil("mlp_attention", 4, 4, 8)
    with torch.no_grad():
        net.net.sigma_head[-1].weight.zero_()
        net.net.sigma_head[-1].bias.fill_(bias)
    T = 6
    inputs = UnsilInputs(torch.randn(T, 4), torch.randn(T, 3, 4), torch.ones(T, 3, dtype=torch.bool),
                         torch.zeros(T, 3, dtype=torch.bool), torch.randn(T, 2, 4),
                         torch.ones(T, 2, dtype=torch.bool), torch.zeros(T, 2, dtype=torch.bool))
    truth = torch.linspace(-2.0, 3.0, T)
    calls = []

    def sample(index, seed):
        calls.append(index.clone())
        return truth[index]

    return net, inputs, truth, sample, calls


@pytest.mark.parametrize("warmup,bias,want_sampled", [(True, -50.0, 6), (False, -50.0, 0), (False, 50.0, 6)])
def test_hybrid_labels_mix_and_train(warmup, bias, want_sampled):
    net, inputs, truth, sample, calls = _unsil_case(bias)
    out = lab.hybrid_labels("token", net, inputs, sample, warmup=warmup, lam=1.0, probe_size=3, step=4)
    assert int(out.sampled.sum()) == want_sampled
    assert out.logs["unsil_share_token"] == pytest.approx(1 - want_sampled / 6)
    # one call for the sampled targets (none when nothing is sampled), then the probe
    assert [c.numel() for c in calls] == ([want_sampled] if want_sampled else []) + [3]
    estimate, sigma = net(inputs)
    scale = net.scale()
    want_values = torch.where(out.sampled, truth, estimate.detach() * scale)
    torch.testing.assert_close(out.values, want_values)
    idx = out.sampled
    want_loss = unsil_loss(estimate[idx], sigma[idx], truth[idx] / scale)
    assert out.unsil_loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-7)
    assert net.count.item() == want_sampled
    probe_index = calls[-1]
    assert out.logs["unsil_probe_error_token"] == pytest.approx(
        (estimate.detach()[probe_index] - truth[probe_index] / scale).abs().mean().item(), rel=1e-5)


def test_step_seeds_differ_per_stream_and_step():
    from loupe_core import global_batch as gb

    seeds = {gb.stream_seed(s, k) for s in range(3) for k in gb.STREAMS}
    assert len(seeds) == 3 * len(gb.STREAMS)


def test_hybrid_gate_samples_everything_while_unsil_does_not_track():
    """sigma ~ 0 (UNSIL would answer every target); its estimates are anti-correlated with the
    truth, so with gate 0.8 every target is sampled after warm-up; with gate 0 UNSIL answers."""
    net, inputs, truth, sample, calls = _unsil_case(-50.0)
    estimate, _ = net(inputs)
    with torch.no_grad():   # make the tracked history anti-correlated: targets = -estimate
        net.track(estimate, -estimate * net.scale())
    assert net.correlation() == pytest.approx(-1.0, abs=1e-9)
    gated = lab.hybrid_labels("token", net, inputs, sample, warmup=False, lam=1.0, probe_size=0, step=4, gate=0.8)
    assert bool(gated.sampled.all()) and gated.logs["unsil_gated_token"] == 1.0
    torch.testing.assert_close(gated.values, truth)
    net_open, inputs_open = _unsil_case(-50.0)[:2]
    with torch.no_grad():   # gate 0 never gates, even on a negative correlation
        net_open.track(estimate, -estimate)
    open_ = lab.hybrid_labels("token", net_open, inputs_open, sample, warmup=False, lam=1.0, probe_size=0,
                              step=4, gate=0.0)
    assert not bool(open_.sampled.any()) and open_.logs["unsil_gated_token"] == 0.0
