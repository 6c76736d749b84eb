"""region_phrase_interaction (api.md): every backend against plain enumeration.

THE reference (api.md): ``interaction_index(game, K + M, pairs, method="exact")`` over
``alignment_game`` restricted to one matrix's present players; on tiny sizes also ``brute_sii``
(tests/reference.py) over ``spec_v2`` (tests/test_alignment_game.py), which shares no code with
the library. The factorised exact paths are never checked only against each other.
"""
import pytest
import torch

import shapley_kernels as sk
from reference import brute_sii
from shapley_kernels.alignment import (EXACT_LIMIT, _torch_backend, alignment_game, choose_alignment_method,
                                       region_phrase_interaction)
from shapley_kernels.estimators import interaction_index
from test_alignment_game import spec_v2

BACKENDS = [b for b in sk.available_backends() if b in ("torch", "cpp")]


def enumeration_reference(A, region_mask=None, phrase_mask=None):
    """Exact SII of every present pair by enumerating all 2^(K'+M') coalitions: float64[B, K, M]."""
    B, K, M = A.shape
    region_mask = torch.ones(B, K, dtype=torch.bool) if region_mask is None else region_mask
    phrase_mask = torch.ones(B, M, dtype=torch.bool) if phrase_mask is None else phrase_mask
    out = torch.zeros(B, K, M, dtype=torch.float64)
    for b in range(B):
        rows = region_mask[b].nonzero().flatten()
        cols = phrase_mask[b].nonzero().flatten()
        k, m = len(rows), len(cols)
        if k == 0 or m == 0:
            continue
        small = A[b].double()[rows][:, cols][None]

        def game(coalitions, small=small):
            return alignment_game(small, coalitions[None], backend="torch")[0]

        pairs = torch.stack(torch.meshgrid(torch.arange(k), k + torch.arange(m), indexing="ij"), -1).reshape(-1, 2)
        values = interaction_index(game, k + m, pairs, method="exact").reshape(k, m)
        out[b, rows[:, None], cols[None, :]] = values
    return out


def _tol(dtype):
    return dict(rtol=0, atol=1e-11) if dtype == torch.float64 else dict(rtol=0, atol=3e-6)


def _padded_case(seed, B, K, M, dtype=torch.float64):
    """A float[B, K, M] (N(0, 3^2)) with random padding masks; matrix 0 has no padding."""
    gen = torch.Generator().manual_seed(seed)
    A = (torch.randn(B, K, M, generator=gen, dtype=torch.float64) * 3).to(dtype)
    region_mask = torch.rand(B, K, generator=gen) < 0.7
    phrase_mask = torch.rand(B, M, generator=gen) < 0.7
    region_mask[0] = True
    phrase_mask[0] = True
    return A, region_mask, phrase_mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_matches_enumeration_with_padding(backend, dtype, rng_seed):
    A, region_mask, phrase_mask = _padded_case(rng_seed, 4, 5, 4, dtype)
    got = region_phrase_interaction(A, region_mask, phrase_mask, method="exact", backend=backend)
    assert got.dtype == dtype and got.shape == (4, 5, 4)
    torch.testing.assert_close(got.double(), enumeration_reference(A, region_mask, phrase_mask), **_tol(dtype))
    padded = ~(region_mask[:, :, None] & phrase_mask[:, None, :])
    assert bool((got[padded] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_matches_brute_force_from_spec(backend, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    K, M = 3, 3
    A = torch.randn(1, K, M, generator=gen, dtype=torch.float64) * 2
    table = A[0].tolist()

    def value_fn(s):
        return spec_v2(table, [p for p in s if p < K], [p - K for p in s if p >= K])

    got = region_phrase_interaction(A, method="exact", backend=backend)[0]
    want = torch.tensor([[brute_sii(value_fn, K + M, i, K + j) for j in range(M)] for i in range(K)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (5, 1), (2, 2)])
def test_exact_small_sides(backend, shape, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    got = region_phrase_interaction(A, method="exact", backend=backend)
    torch.testing.assert_close(got, enumeration_reference(A), rtol=0, atol=1e-12)
    if shape == (1, 1):  # v(ij) = 1, every other coalition 0
        torch.testing.assert_close(got, torch.ones(2, 1, 1, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_single_present_player_and_nothing_present(backend):
    A = torch.randn(3, 3, 4, dtype=torch.float64)
    region_mask = torch.tensor([[False, True, False], [False, True, False], [False, False, False]])
    phrase_mask = torch.tensor([[False, False, False, False], [False, False, True, False], [True] * 4])
    got = region_phrase_interaction(A, region_mask, phrase_mask, method="exact", backend=backend,
                                    return_stderr=True)
    want = torch.zeros(3, 3, 4, dtype=torch.float64)
    want[1, 1, 2] = 1.0  # one region and one phrase: v(ij) = 1
    torch.testing.assert_close(got.value, want, rtol=0, atol=1e-15)
    assert got.evaluations == 1 * 2 + 1 * 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties_and_huge_logits(backend, dtype, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    ties = torch.full((1, 4, 3), 7.0, dtype=torch.float64)
    huge = torch.randint(-1, 2, (2, 4, 3), generator=gen).double() * 1e4
    A = torch.cat([ties, huge]).to(dtype)
    got = region_phrase_interaction(A, method="exact", backend=backend)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), enumeration_reference(A), **_tol(dtype))


def test_exact_medium_size_against_enumeration(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(1, 9, 7, generator=gen, dtype=torch.float64) * 4   # 16 players: 65,536 coalitions
    want = enumeration_reference(A)
    for backend in BACKENDS:
        got = region_phrase_interaction(A, method="exact", backend=backend)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=lambda m: f"{backend}: {m}")


def test_torch_exact_chunked_equals_enumeration(monkeypatch, rng_seed):
    monkeypatch.setattr(_torch_backend, "_CHUNK_ELEMENTS", 64)  # force many subset / batch chunks
    A, region_mask, phrase_mask = _padded_case(rng_seed, 3, 6, 5)
    got = region_phrase_interaction(A, region_mask, phrase_mask, method="exact", backend="torch")
    torch.testing.assert_close(got, enumeration_reference(A, region_mask, phrase_mask), rtol=0, atol=1e-12)


def test_exact_backends_agree_at_larger_sizes(rng_seed):
    if "cpp" not in BACKENDS:
        pytest.skip("the cpp extension is not built")
    A, region_mask, phrase_mask = _padded_case(rng_seed, 2, 14, 11)
    torch.testing.assert_close(region_phrase_interaction(A, region_mask, phrase_mask, method="exact", backend="cpp"),
                               region_phrase_interaction(A, region_mask, phrase_mask, method="exact",
                                                         backend="torch"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_padding_invariance(backend, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    base = region_phrase_interaction(A, method="exact", backend=backend)
    A2 = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    rows, cols = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4])
    A2[:, rows[:, None], cols] = A
    region_mask = torch.zeros(2, 6, dtype=torch.bool)
    region_mask[:, rows] = True
    phrase_mask = torch.zeros(2, 5, dtype=torch.bool)
    phrase_mask[:, cols] = True
    got = region_phrase_interaction(A2, region_mask, phrase_mask, method="exact", backend=backend)
    torch.testing.assert_close(got[:, rows[:, None], cols], base, rtol=0, atol=1e-13)
    assert int((got != 0).sum()) == int((base != 0).sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_agrees_with_exact(backend, dtype, rng_seed):
    A, region_mask, phrase_mask = _padded_case(rng_seed, 2, 4, 3, dtype)
    est = region_phrase_interaction(A, region_mask, phrase_mask, method="sampling", num_samples=1500,
                                    seed=rng_seed, backend=backend, return_stderr=True)
    exact = enumeration_reference(A, region_mask, phrase_mask)
    present = region_mask[:, :, None] & phrase_mask[:, None, :]
    assert est.value.dtype == dtype and est.stderr.dtype == dtype
    assert bool((est.stderr[~present] == 0).all())
    err = (est.value.double() - exact).abs()[present]
    se = est.stderr.double()[present]
    assert bool((err[se == 0] < 1e-6).all())  # a constant difference (1 region, 1 phrase: always 1)
    z = err[se > 0] / se[se > 0]              # matrix 0 is unpadded: never empty
    assert float(z.max()) < 5.0, f"max |z| = {float(z.max()):.2f}"
    assert est.evaluations == 4 * 1500 * int((region_mask.sum(1) * phrase_mask.sum(1)).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_seed_reproducible(backend):
    A = torch.randn(2, 3, 4)
    run = lambda seed: region_phrase_interaction(A, method="sampling", num_samples=50, seed=seed, backend=backend)
    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    assert not torch.equal(run(7), run(8))


def test_cpp_sampling_padding_invariant_and_wide():
    if "cpp" not in BACKENDS:
        pytest.skip("the cpp extension is not built")
    A = torch.randn(1, 3, 4, dtype=torch.float64)
    base = region_phrase_interaction(A, method="sampling", num_samples=40, seed=3, backend="cpp")
    A2 = torch.zeros(1, 5, 6, dtype=torch.float64)
    A2[:, :3, :4] = A
    masks = (torch.arange(5) < 3)[None], (torch.arange(6) < 4)[None]
    got = region_phrase_interaction(A2, *masks, method="sampling", num_samples=40, seed=3, backend="cpp")
    torch.testing.assert_close(got[:, :3, :4], base, rtol=0, atol=0)
    wide = region_phrase_interaction(torch.randn(1, 64, 64), num_samples=2, seed=0, backend="cpp")
    assert wide.shape == (1, 64, 64) and bool(torch.isfinite(wide).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_is_exact_within_limit_else_sampling(backend):
    assert choose_alignment_method(EXACT_LIMIT, EXACT_LIMIT) == "exact"
    assert choose_alignment_method(EXACT_LIMIT + 1, 2) == "sampling"
    assert choose_alignment_method(3, 3, "sampling") == "sampling"
    A = torch.randn(1, EXACT_LIMIT + 1, 2, dtype=torch.float64)
    est = region_phrase_interaction(A, num_samples=8, seed=1, backend=backend, return_stderr=True)
    assert bool((est.stderr > 0).any()) and est.evaluations == 4 * 8 * (EXACT_LIMIT + 1) * 2
    # padding does not count toward the limit: 21 slots, 2 present regions -> exact
    region_mask = torch.zeros(1, EXACT_LIMIT + 1, dtype=torch.bool)
    region_mask[0, :2] = True
    est = region_phrase_interaction(A, region_mask, backend=backend, return_stderr=True)
    assert bool((est.stderr == 0).all())
    torch.testing.assert_close(est.value[:, :2], enumeration_reference(A[:, :2]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="exact"):
        region_phrase_interaction(A, method="exact", backend=backend)


def test_interaction_rejects_bad_arguments():
    A = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="A contains NaN"):
        region_phrase_interaction(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="method"):
        region_phrase_interaction(A, method="magic")
    with pytest.raises(ValueError, match="num_samples"):
        region_phrase_interaction(A, method="sampling", num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        region_phrase_interaction(A, method="sampling", num_samples=2.5)
    with pytest.raises(TypeError, match="seed"):
        region_phrase_interaction(A, method="sampling", seed="x")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        region_phrase_interaction(A, backend="gpu")
    with pytest.raises(ValueError, match="region_mask"):
        region_phrase_interaction(A, torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_shapes_give_empty_or_zero_results(backend):
    assert region_phrase_interaction(torch.zeros(0, 3, 4), backend=backend).shape == (0, 3, 4)
    assert region_phrase_interaction(torch.zeros(2, 0, 4), backend=backend).shape == (2, 0, 4)
    est = region_phrase_interaction(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), backend=backend,
                                    method="sampling", return_stderr=True)
    assert not bool(est.value.any()) and est.evaluations == 0
