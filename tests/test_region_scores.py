"""region_interaction's scores ("interaction", "phi", "negative_interaction", "magnitude") and
estimators ("antithetic", "control_variate", "stratified", "paper") against brute-force enumeration of spec Eq. 3 / Eq. 4
(tests/reference.py), exact and sampled."""
import pytest
import torch

from reference import brute_coalition_interaction, brute_region_phi
from shapley_kernels import _strata
from shapley_kernels.token_level import region
from shapley_kernels.token_level import choose_region_method, dual_encoder_game, region_interaction
from test_region_interaction import setup_pairs, towers, value_fn_of

SCORES = ("interaction", "phi", "negative_interaction", "magnitude")
ESTIMATORS = ("antithetic", "control_variate", "stratified", "paper", "antithetic_mixed")
# "antithetic_mixed": "antithetic" with the text half enumerated only up to 3 real tokens, so
# pair 0 (3 words) has the text expectation and pair 1 (4 words) the pool of sampled text halves
# 3 standard errors per target is the bound; a test holds 8-18 targets, so the bound is
# 3.5 (a family-wise false alarm of about 0.5-1% per test with fixed seeds, instead of 3-5%)
Z = 3.5


def brute_scores(img, txt, x_img, x_txt, im, tm, regions, baseline="zero"):
    """{score: float64[B, K]} by brute force: Eq. 4 for I([R]) (0 for one patch), Eq. 3 with R
    as one player for phi([R])."""
    B, K, _ = regions.shape
    inter = torch.zeros(B, K, dtype=torch.float64)
    phi = torch.zeros(B, K, dtype=torch.float64)
    for b in range(B):
        game = dual_encoder_game(img, txt, x_img[b], x_txt[b], baseline=baseline,
                                 image_mask=im[b], text_mask=tm[b])
        n = game.n_players
        value_fn = value_fn_of(game, n)
        for k in range(K):
            members = regions[b, k][im[b]].nonzero().flatten().tolist()
            inter[b, k] = brute_coalition_interaction(value_fn, n, members) if len(members) > 1 else 0.0
            phi[b, k] = brute_region_phi(value_fn, n, members)
    return {"interaction": inter, "phi": phi, "negative_interaction": -inter, "magnitude": inter.abs()}


@pytest.fixture
def estimator(request, monkeypatch):
    """The estimator name region_interaction takes (``request.param`` from ESTIMATORS)."""
    if request.param == "antithetic_mixed":
        monkeypatch.setattr(region, "TEXT_EXACT_HALVES", 8)
        return "antithetic"
    return request.param


@pytest.fixture(scope="module")
def case():
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    return img, txt, x_img, x_txt, im, tm, regions, brute_scores(img, txt, x_img, x_txt, im, tm, regions)


@pytest.mark.parametrize("baseline", ["zero", "drop"])
def test_exact_scores_equal_brute_force(baseline):
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    want = brute_scores(img, txt, x_img, x_txt, im, tm, regions, baseline)
    got = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                             baseline=baseline, method="exact", score=SCORES)
    assert set(got) == set(SCORES)
    for name in SCORES:
        torch.testing.assert_close(got[name].value, want[name], rtol=1e-10, atol=1e-12)
        assert bool((got[name].stderr == 0).all())
        single = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                                    baseline=baseline, method="exact", score=name)
        torch.testing.assert_close(single.value, want[name], rtol=1e-10, atol=1e-12)
    assert float(want["phi"].abs().min()) > 0  # phi is not the (zero) one-patch interaction


@pytest.mark.parametrize("estimator", ESTIMATORS, indirect=True)
def test_sampled_scores_unbiased_over_200_seeds(case, estimator):
    """Mean over 200 fixed seeds within Z = 3.5 standard errors (of that mean, from the spread of the
    runs) of the brute-force value, for every region and every score except "magnitude",
    whose upward bias is bounded by the per-run stderr (module docstring of region.py)."""
    img, txt, x_img, x_txt, im, tm, regions, want = case
    runs = {name: [] for name in SCORES}
    stderr = []
    for seed in range(200):
        got = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                                 method="sampling", num_samples=6, seed=seed, score=SCORES,
                                 estimator=estimator)
        for name in SCORES:
            runs[name].append(got[name].value)
        stderr.append(got["interaction"].stderr)
        torch.testing.assert_close(got["negative_interaction"].value, -got["interaction"].value)
        torch.testing.assert_close(got["magnitude"].value, got["interaction"].value.abs())
    multi = regions.sum(-1) > 1
    for name in ("interaction", "phi", "negative_interaction"):
        stack = torch.stack(runs[name])
        mean, se = stack.mean(0), stack.std(0) / 200 ** 0.5
        mask = multi if name != "phi" else torch.ones_like(multi)
        assert bool((se[mask] > 0).all())
        assert bool(((mean - want[name]).abs() <= Z * se + 1e-15).all()), (name, mean, want[name], se)
    mag = torch.stack(runs["magnitude"])
    bias = mag.mean(0) - want["magnitude"]
    se = mag.std(0) / 200 ** 0.5
    per_run = torch.stack(stderr).mean(0)
    assert bool((bias >= -3 * se - 1e-15).all() & (bias <= per_run + 3 * se + 1e-15).all()), (bias, per_run)


@pytest.mark.parametrize("estimator", ESTIMATORS, indirect=True)
def test_stderr_coverage(case, estimator):
    """Nominal 95% intervals value +- 1.96 stderr cover the exact value 90-98% of the time
    (300 fixed seeds of 64 samples x the 5 regions with more than one patch, interaction and phi)."""
    img, txt, x_img, x_txt, im, tm, regions, want = case
    hits = total = 0
    multi = regions.sum(-1) > 1
    for seed in range(300):
        got = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                                 method="sampling", num_samples=64, seed=1000 + seed,
                                 score=("interaction", "phi"), estimator=estimator)
        for name in ("interaction", "phi"):
            inside = (got[name].value - want[name]).abs() <= 1.96 * got[name].stderr
            hits += int(inside[multi].sum())
            total += int(multi.sum())
    assert 0.90 <= hits / total <= 0.98, hits / total


def test_scores_share_draws_and_phi_costs_two(case):
    img, txt, x_img, x_txt, im, tm, regions, _ = case
    kw = dict(image_mask=im, text_mask=tm, method="sampling", num_samples=10, seed=5)
    both = region_interaction(img, txt, x_img, x_txt, regions, score=("phi", "interaction"), **kw)
    inter = region_interaction(img, txt, x_img, x_txt, regions, **kw)
    phi = region_interaction(img, txt, x_img, x_txt, regions, score="phi", **kw)
    torch.testing.assert_close(both["interaction"].value, inter.value)
    torch.testing.assert_close(both["phi"].value, phi.value)
    sizes = regions.sum(-1)
    assert both["phi"].evaluations.tolist() == (10 * (sizes + 2).sum(1)).tolist()
    assert phi.evaluations.tolist() == [10 * 2 * 3, 10 * 2 * 3]
    # auto: "phi" alone spends 2 per sample and region, so it enumerates later
    assert choose_region_method(9, [2, 3], 128, singles=False) == "exact"  # 512 <= 128 * 2 * 2
    assert choose_region_method(9, [2, 3], 127, singles=False) == "sampling"
    assert choose_region_method(9, [2, 3], 127) == "exact"  # 512 <= 127 * (4 + 5)


def test_paper_and_stratified_differ_and_reproduce(case):
    img, txt, x_img, x_txt, im, tm, regions, _ = case
    kw = dict(image_mask=im, text_mask=tm, method="sampling", num_samples=12, seed=2)
    a = region_interaction(img, txt, x_img, x_txt, regions, estimator="paper", **kw)
    b = region_interaction(img, txt, x_img, x_txt, regions, estimator="stratified", **kw)
    c = region_interaction(img, txt, x_img, x_txt, regions, estimator="stratified", max_batch=7, **kw)
    assert not torch.equal(a.value, b.value)
    torch.testing.assert_close(b.value, c.value)
    assert a.evaluations.tolist() == b.evaluations.tolist()


@pytest.mark.parametrize("J", [2, 3, 4, 7])
def test_strata_stderr_formula(J):
    """Collapsed strata: groups of 2 (the last of 3 when J is odd), group g adds
    n_g / (n_g - 1) * sum (y - mean_g)^2; stderr = sqrt(total) / J."""
    y = torch.randn(3, J, generator=torch.Generator().manual_seed(J), dtype=torch.float64)
    groups = [list(range(i, i + 2)) for i in range(0, J - 3 if J % 2 else J, 2)]
    if J % 2:
        groups.append(list(range(J - 3, J)))
    want = torch.zeros(3, dtype=torch.float64)
    for g in groups:
        part = y[:, g]
        want += len(g) / (len(g) - 1) * ((part - part.mean(1, keepdim=True)) ** 2).sum(1)
    torch.testing.assert_close(_strata.strata_stderr(y), want.sqrt() / J)
    q = _strata.stratified_uniform((5,), J, torch.Generator().manual_seed(0), "cpu")
    assert bool(((q * J).floor() == torch.arange(J)).all())


def test_score_and_estimator_errors(case):
    img, txt, x_img, x_txt, im, tm, regions, _ = case
    for bad in ("shapley", (), ("phi", "blur"), 3):
        with pytest.raises(ValueError, match="score"):
            region_interaction(img, txt, x_img, x_txt, regions, score=bad)
    with pytest.raises(ValueError, match="estimator"):
        region_interaction(img, txt, x_img, x_txt, regions, estimator="kernelshap")


def test_antithetic_strata_are_complements_and_odd_counts_are_unpaired(case, monkeypatch):
    """Paired draws: q_{J-1-j} = 1 - q_j (still in stratum J-1-j), the base image half and each
    text half of stratum J-1-j's pool are the complements of stratum j's within the real tokens;
    the pool's halves are distinct draws. With an odd count (no pairing), the text half sampled
    and a pool of one, "antithetic" draws exactly what "stratified" draws."""
    img, txt, x_img, x_txt, im, tm, regions, _ = case
    J, P = 8, 3
    q, s_img, s_txt = region._draw_stratified(regions, im, tm, J, torch.Generator().manual_seed(4),
                                              paired=True, text_pool=P)
    assert bool(((q[..., 0] * J).floor() == torch.arange(J)).all())
    torch.testing.assert_close(q[:, J // 2:], (1 - q[:, :J // 2]).flip(1))
    players = (im[:, None, :] & ~regions)[:, :, None, :]
    assert torch.equal(s_img[:, :, J // 2:], (players & ~s_img[:, :, :J // 2]).flip(2))
    assert s_txt.shape == (*tm.shape[:1], J, P, tm.shape[1])
    assert torch.equal(s_txt[:, J // 2:], (tm[:, None, None, :] & ~s_txt[:, :J // 2]).flip(1))
    assert not bool((s_txt & ~tm[:, None, None, :]).any())
    assert not torch.equal(s_txt[:, :, 0], s_txt[:, :, 1])
    monkeypatch.setattr(region, "TEXT_EXACT_HALVES", 1)
    monkeypatch.setattr(region, "TEXT_POOL_HALVES", 1)
    kw = dict(image_mask=im, text_mask=tm, method="sampling", num_samples=7, seed=3, score=("interaction", "phi"))
    a = region_interaction(img, txt, x_img, x_txt, regions, estimator="antithetic", **kw)
    b = region_interaction(img, txt, x_img, x_txt, regions, estimator="stratified", **kw)
    for name in a:
        torch.testing.assert_close(a[name].value, b[name].value, rtol=0, atol=0)
        torch.testing.assert_close(a[name].stderr, b[name].stderr, rtol=0, atol=0)


def test_text_pool_serves_only_the_texts_beyond_enumeration(case, monkeypatch):
    """With the text half enumerated up to 3 real tokens, pair 0 (3 words) has the exact text
    expectation whatever the pool size, and pair 1 (4 words) pairs its strata with the pool:
    its estimates change with the pool size, pair 0's do not (same image halves: the image
    draws come first in the stream)."""
    img, txt, x_img, x_txt, im, tm, regions, _ = case
    monkeypatch.setattr(region, "TEXT_EXACT_HALVES", 8)
    kw = dict(image_mask=im, text_mask=tm, method="sampling", num_samples=8, seed=9, score=("interaction", "phi"))
    got = {}
    for pool in (1, 4):
        monkeypatch.setattr(region, "TEXT_POOL_HALVES", pool)
        got[pool] = region_interaction(img, txt, x_img, x_txt, regions, **kw)
    assert tm.sum(1).tolist() == [3, 4]
    for name in ("interaction", "phi"):
        torch.testing.assert_close(got[1][name].value[0], got[4][name].value[0], rtol=0, atol=0)
        assert bool((got[1][name].value[1] != got[4][name].value[1]).any())
