"""Generic estimators (shapley_kernels.estimators) against brute-force enumeration of the spec
equations (tests/reference.py), the Shapley axioms, and the sampling estimator's statistics."""
import itertools

import pytest
import torch

import shapley_kernels as sk
from shapley_kernels import _enumeration, _sampling
from reference import (brute_coalition_interaction, brute_shapley, brute_sii, random_table,
                       table_game, table_index, table_value_fn)


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_coalitions(n, count, generator):
    """count random bool[count, n] rows with 2..min(4, n) members each."""
    rows = torch.zeros(count, n, dtype=torch.bool)
    for r in range(count):
        size = int(torch.randint(2, min(4, n) + 1, (1,), generator=generator))
        rows[r, torch.randperm(n, generator=generator)[:size]] = True
    return rows


def _quadratic_table(w, b):
    """v(S) = sum_{i in S} w_i + sum_{i<j in S} b_ij as a table float64[2^n] (b symmetric)."""
    n = len(w)
    coal = _enumeration.all_coalitions(0, 2 ** n, n, "cpu").double()
    return coal @ w + 0.5 * ((coal @ b) * coal).sum(1)


def _all_pairs(n):
    return torch.tensor(list(itertools.combinations(range(n), 2)), dtype=torch.long).view(-1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", range(1, 10))
def test_exact_matches_brute_force(n, dtype, rng_seed):
    g = _gen(rng_seed)
    table = random_table(n, g, dtype)
    game, value_fn = table_game(table), table_value_fn(table)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)

    phi = sk.shapley_values(game, n, method="exact")
    assert phi.dtype == dtype and phi.shape == (n,)
    torch.testing.assert_close(phi.double(), _f64(brute_shapley(value_fn, n)), **tol)
    if n < 2:
        return
    pairs = _all_pairs(n)
    sii = sk.interaction_index(game, n, pairs, method="exact")
    want = _f64([brute_sii(value_fn, n, int(i), int(j)) for i, j in pairs])
    assert sii.dtype == dtype
    torch.testing.assert_close(sii.double(), want, **tol)
    coalitions = _random_coalitions(n, 6, g)
    inter = sk.coalition_interaction(game, n, coalitions, method="exact")
    want = _f64([brute_coalition_interaction(value_fn, n, row.nonzero().flatten().tolist())
                         for row in coalitions])
    assert inter.dtype == dtype
    torch.testing.assert_close(inter.double(), want, **tol)


def test_exact_huge_values_float32(rng_seed):
    """Values near float32's range stay finite and exact up to float32 rounding of the output."""
    n = 5
    table = (random_table(n, _gen(rng_seed)) * 1e36).float()
    value_fn = table_value_fn(table)
    phi = sk.shapley_values(table_game(table), n, method="exact")
    assert bool(torch.isfinite(phi).all())
    torch.testing.assert_close(phi.double(), _f64(brute_shapley(value_fn, n)), rtol=1e-5, atol=1e31)


def test_exact_twelve_players_matches_brute_force(rng_seed):
    """A larger game: many strided dimensions per slice, targets of every kind."""
    n = 12
    table = random_table(n, _gen(rng_seed))
    game, value_fn = table_game(table), table_value_fn(table)
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sk.shapley_values(game, n, method="exact"), _f64(brute_shapley(value_fn, n)), **tol)
    pairs = torch.tensor([[0, 11], [5, 3], [10, 9]])
    want = _f64([brute_sii(value_fn, n, int(i), int(j)) for i, j in pairs])
    torch.testing.assert_close(sk.interaction_index(game, n, pairs, method="exact"), want, **tol)
    members = [1, 4, 7, 11]
    coalitions = torch.zeros(1, n, dtype=torch.bool)
    coalitions[0, members] = True
    want = _f64([brute_coalition_interaction(value_fn, n, members)])
    torch.testing.assert_close(sk.coalition_interaction(game, n, coalitions, method="exact"), want, **tol)


def test_efficiency_and_symmetry(rng_seed):
    n = 6
    table = random_table(n, _gen(rng_seed))
    # make players 1 and 3 interchangeable: average the table with its 1 <-> 3 swap
    coal = _enumeration.all_coalitions(0, 2 ** n, n, "cpu")
    table = 0.5 * (table + table[table_index(coal[:, [0, 3, 2, 1, 4, 5]])])
    game = table_game(table)
    phi = sk.shapley_values(game, n, method="exact")
    torch.testing.assert_close(phi.sum(), table[-1] - table[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phi[1], phi[3], rtol=1e-12, atol=1e-12)
    sii = sk.interaction_index(game, n, torch.tensor([[0, 1], [0, 3], [2, 4], [4, 2]]), method="exact")
    torch.testing.assert_close(sii[0], sii[1], rtol=1e-12, atol=1e-12)
    assert float(sii[2]) == pytest.approx(float(sii[3]), rel=1e-12, abs=1e-12)  # I_ij == I_ji


def test_dummy_player_is_zero_and_leaves_others_unchanged(rng_seed):
    """A null player (padding) gets 0 everywhere, and the other players' indices are those of
    the game without it."""
    n = 5
    base = random_table(n, _gen(rng_seed))
    coal = _enumeration.all_coalitions(0, 2 ** (n + 1), n + 1, "cpu")
    padded = base[table_index(coal[:, :n])]  # player n never matters
    small, big = table_game(base), table_game(padded)
    phi_small = sk.shapley_values(small, n, method="exact")
    phi_big = sk.shapley_values(big, n + 1, method="exact")
    torch.testing.assert_close(phi_big[:n], phi_small, rtol=1e-10, atol=1e-12)
    assert abs(float(phi_big[n])) < 1e-12
    pairs = _all_pairs(n)
    torch.testing.assert_close(sk.interaction_index(big, n + 1, pairs, method="exact"),
                               sk.interaction_index(small, n, pairs, method="exact"), rtol=1e-10, atol=1e-12)
    with_dummy = sk.interaction_index(big, n + 1, torch.tensor([[0, n], [n, 3]]), method="exact")
    assert with_dummy.abs().max() < 1e-12
    coalitions = _random_coalitions(n, 4, _gen(rng_seed))
    torch.testing.assert_close(
        sk.coalition_interaction(big, n + 1, torch.cat([coalitions, coalitions[:, :1] & False], 1),
                                 method="exact"),
        sk.coalition_interaction(small, n, coalitions, method="exact"), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "sampling"])
def test_additive_and_quadratic_games(method, rng_seed):
    """v(S) = sum w_i + sum_{i<j in S} b_ij: every sample of an interaction term equals
    sum_{i<j in R} b_ij, so sampling is exact too (this also checks how sampled rows are
    assembled); an additive game (b = 0) has phi_i = w_i and zero interactions."""
    n = 6
    g = _gen(rng_seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, generator=g, dtype=torch.float64).triu(1)
    b = b + b.T
    game = table_game(_quadratic_table(w, b))
    additive = table_game(_quadratic_table(w, torch.zeros(n, n, dtype=torch.float64)))
    pairs = _all_pairs(n)
    coalitions = _random_coalitions(n, 5, g)
    kw = dict(method=method, num_samples=7, seed=rng_seed)
    torch.testing.assert_close(sk.interaction_index(game, n, pairs, **kw), b[pairs[:, 0], pairs[:, 1]])
    want = torch.stack([0.5 * b[row][:, row].sum() for row in coalitions])
    torch.testing.assert_close(sk.coalition_interaction(game, n, coalitions, **kw), want)
    torch.testing.assert_close(sk.shapley_values(additive, n, **kw), w)
    assert sk.interaction_index(additive, n, pairs, **kw).abs().max() < 1e-12
    assert sk.coalition_interaction(additive, n, coalitions, **kw).abs().max() < 1e-12
    if method == "exact":
        torch.testing.assert_close(sk.shapley_values(game, n, **kw), w + 0.5 * b.sum(1))


def test_sampling_chunked_over_targets(rng_seed, monkeypatch):
    """Forcing one target per sampling chunk still puts every estimate in its own slot."""
    n = 5
    g = _gen(rng_seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, generator=g, dtype=torch.float64).triu(1)
    game = table_game(_quadratic_table(w, b + b.T))
    monkeypatch.setattr(_sampling, "_CHUNK_ELEMENTS", 1)
    pairs = _all_pairs(n)
    got = sk.interaction_index(game, n, pairs, method="sampling", num_samples=3, seed=rng_seed)
    torch.testing.assert_close(got, (b + b.T)[pairs[:, 0], pairs[:, 1]])


def test_one_player(rng_seed):
    table = random_table(1, _gen(rng_seed))
    game = table_game(table)
    for method in ("exact", "sampling", "auto"):
        est = sk.shapley_values(game, 1, method=method, num_samples=5, seed=rng_seed, return_stderr=True)
        torch.testing.assert_close(est.value, (table[1] - table[0]).view(1))
        assert float(est.stderr.abs().max()) < 1e-12  # S is always empty: no spread


def test_sampling_is_unbiased(rng_seed):
    """The mean of 40 seeded runs lies within 5 combined standard errors of the exact value,
    for all three estimators."""
    n, runs, samples = 5, 40, 60
    table = random_table(n, _gen(rng_seed))
    game = table_game(table)
    pairs = _all_pairs(n)
    coalitions = _random_coalitions(n, 4, _gen(rng_seed + 1))
    for estimator, extra in ((sk.shapley_values, ()), (sk.interaction_index, (pairs,)),
                             (sk.coalition_interaction, (coalitions,))):
        exact = estimator(game, n, *extra, method="exact")
        ests = [estimator(game, n, *extra, method="sampling", num_samples=samples,
                          seed=rng_seed + r, return_stderr=True) for r in range(runs)]
        mean = torch.stack([e.value for e in ests]).mean(0)
        combined = torch.stack([e.stderr ** 2 for e in ests]).sum(0).sqrt() / runs
        assert bool((combined > 0).any())
        assert bool(((mean - exact).abs() <= 5 * combined + 1e-12).all()), (estimator.__name__, mean, exact)


def test_stderr_matches_spread_of_runs(rng_seed):
    """The reported stderr agrees with the spread of independent runs (within a factor 2)."""
    n = 6
    game = table_game(random_table(n, _gen(rng_seed)))
    ests = [sk.shapley_values(game, n, method="sampling", num_samples=100, seed=rng_seed + r,
                              return_stderr=True) for r in range(30)]
    spread = torch.stack([e.value for e in ests]).std(0)
    reported = torch.stack([e.stderr for e in ests]).mean(0)
    ratio = spread / reported
    assert bool(((ratio > 0.5) & (ratio < 2.0)).all()), ratio


def test_instability_falls_with_more_samples(rng_seed):
    n = 5
    game = table_game(random_table(n, _gen(rng_seed)))
    pairs = _all_pairs(n)

    def runs(samples):
        return torch.stack([sk.interaction_index(game, n, pairs, method="sampling", num_samples=samples,
                                                 seed=rng_seed + 1000 * samples + r) for r in range(5)])

    coarse, fine = sk.instability(runs(25)), sk.instability(runs(400))  # expected ratio ~4
    assert fine < coarse / 2, (coarse, fine)


def test_seed_reproducibility(rng_seed):
    n = 7
    game = table_game(random_table(n, _gen(rng_seed)))
    pairs = _all_pairs(n)
    kw = dict(method="sampling", num_samples=20)
    a = sk.interaction_index(game, n, pairs, seed=rng_seed, **kw)
    assert torch.equal(a, sk.interaction_index(game, n, pairs, seed=rng_seed, **kw))
    assert not torch.equal(a, sk.interaction_index(game, n, pairs, seed=rng_seed + 1, **kw))
    unseeded = sk.interaction_index(game, n, pairs, **kw)  # draws its seed from torch's RNG
    torch.manual_seed(rng_seed)
    b = sk.shapley_values(game, n, **kw)
    torch.manual_seed(rng_seed)
    assert torch.equal(b, sk.shapley_values(game, n, **kw))
    assert bool(torch.isfinite(unseeded).all())


def test_max_batch_bounds_calls_and_keeps_results(rng_seed):
    n = 6
    table = random_table(n, _gen(rng_seed))
    sizes = []

    def game(coalitions):
        sizes.append(coalitions.shape[0])
        return table[table_index(coalitions)]

    coalitions = _random_coalitions(n, 3, _gen(rng_seed))
    for method in ("exact", "sampling"):
        kw = dict(method=method, num_samples=9, seed=rng_seed)
        one = sk.coalition_interaction(game, n, coalitions, **kw)
        sizes.clear()
        chunked = sk.coalition_interaction(game, n, coalitions, max_batch=5, **kw)
        assert max(sizes) <= 5
        assert torch.equal(one, chunked)


def test_evaluations_count(rng_seed):
    n = 5
    table = random_table(n, _gen(rng_seed))
    pairs = _all_pairs(n)
    coalitions = _random_coalitions(n, 3, _gen(rng_seed))
    cases = ((sk.shapley_values, (), 2 * n), (sk.interaction_index, (pairs,), 4 * len(pairs)),
             (sk.coalition_interaction, (coalitions,), int((coalitions.sum(1) + 2).sum())))
    for estimator, extra, per_sample in cases:
        game = table_game(table)
        est = estimator(game, n, *extra, method="sampling", num_samples=11, seed=1, return_stderr=True)
        assert est.evaluations == game.calls == 11 * per_sample
        game = table_game(table)
        est = estimator(game, n, *extra, method="exact", return_stderr=True)
        assert est.evaluations == game.calls == 2 ** n
        assert float(est.stderr.abs().max()) == 0.0


def test_auto_chooses_as_documented(rng_seed):
    assert sk.choose_method(10, 1024) == "exact"
    assert sk.choose_method(10, 1023) == "sampling"
    assert sk.choose_method(sk.EXACT_MAX_PLAYERS, 2 ** 40) == "exact"
    assert sk.choose_method(sk.EXACT_MAX_PLAYERS + 1, 2 ** 40) == "sampling"
    n = 8
    table = random_table(n, _gen(rng_seed))
    # sampling would spend 2 * 8 * 15 = 240 < 2^8 evaluations: auto samples
    est = sk.shapley_values(table_game(table), n, num_samples=15, seed=0, return_stderr=True)
    assert est.evaluations == 240 and bool((est.stderr > 0).any())
    # 2 * 8 * 16 = 256 = 2^8: a tie goes to exact
    est = sk.shapley_values(table_game(table), n, num_samples=16, seed=0, return_stderr=True)
    assert est.evaluations == 256 and float(est.stderr.abs().max()) == 0.0
    # at the default 500 samples sampling would spend 8000 > 256: auto enumerates
    est = sk.shapley_values(table_game(table), n, return_stderr=True)
    assert est.evaluations == 2 ** n
    torch.testing.assert_close(est.value, sk.shapley_values(table_game(table), n, method="exact"))


def test_device_and_empty_targets(rng_seed):
    n = 4
    game = table_game(random_table(n, _gen(rng_seed)))
    assert sk.shapley_values(game, n, method="exact", device="cpu").device.type == "cpu"
    game.calls = 0
    for method in ("exact", "sampling"):
        out = sk.interaction_index(game, n, torch.zeros(0, 2, dtype=torch.long), method=method,
                                   return_stderr=True)
        assert out.value.shape == out.stderr.shape == (0,) and out.evaluations == 0
        out = sk.coalition_interaction(game, n, torch.zeros(0, n, dtype=torch.bool), method=method)
        assert out.shape == (0,)
    assert game.calls == 0


def test_q_trick_gives_uniform_sizes(rng_seed):
    """draw_subsets: sizes uniform over 0..n-k, never a target member, all subsets of a size
    equally likely (checked through each player's inclusion frequency)."""
    n, samples = 6, 60000
    targets = torch.zeros(1, n, dtype=torch.bool)
    targets[0, [1, 4]] = True
    drawn = _sampling.draw_subsets(targets, samples, _gen(rng_seed))[0]
    assert not bool(drawn[:, [1, 4]].any())
    freq = torch.bincount(drawn.sum(1), minlength=n - 1).double() / samples
    torch.testing.assert_close(freq, torch.full((n - 1,), 0.2, dtype=torch.float64), atol=0.015, rtol=0)
    incl = drawn[:, [0, 2, 3, 5]].double().mean(0)  # E|S| / 4 = 2 / 4
    torch.testing.assert_close(incl, torch.full((4,), 0.5, dtype=torch.float64), atol=0.015, rtol=0)


def test_instability_definition():
    runs = _f64([[1.0, -2.0], [3.0, -2.0], [2.0, 0.0]])
    pair_means = [(runs[u] - runs[v]).abs().mean() for u in range(3) for v in range(3) if u != v]
    want = torch.stack(pair_means).mean() / runs.abs().mean()
    assert sk.instability(runs) == pytest.approx(float(want), rel=1e-12)
    assert sk.instability(torch.ones(3, 4)) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng_seed):
    """On a GPU: coalitions and results live on the device; exact agrees with the CPU, and
    sampling is reproducible there."""
    n = 6
    table = random_table(n, _gen(rng_seed))
    game = table_game(table)  # moves its table to the coalitions' device
    pairs = _all_pairs(n)
    cpu = sk.interaction_index(game, n, pairs, method="exact")
    gpu = sk.interaction_index(game, n, pairs.cuda(), method="exact")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)
    phi = sk.shapley_values(game, n, method="exact", device="cuda")
    torch.testing.assert_close(phi.cpu(), sk.shapley_values(game, n, method="exact"), rtol=1e-10, atol=1e-12)
    a = sk.interaction_index(game, n, pairs.cuda(), method="sampling", num_samples=50, seed=rng_seed)
    assert torch.equal(a, sk.interaction_index(game, n, pairs.cuda(), method="sampling", num_samples=50,
                                               seed=rng_seed))
