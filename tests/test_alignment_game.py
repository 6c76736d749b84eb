"""alignment_game (spec section 4, api.md): every backend against v2 written straight from the spec.

The reference ``spec_v2`` is plain Python over float64 lists, one coalition at a time, using the
textbook softmax max exp(a_ij) / sum_j' exp(a_ij') shifted by the row's max (the shift leaves the
ratio unchanged and keeps +-1e4 logits finite).
"""
import math

import pytest
import torch

import shapley_kernels as sk
from shapley_kernels.alignment import alignment_game

BACKENDS = [b for b in sk.available_backends() if b in ("torch", "cpp")]


def _softmax_max(logits):
    top = max(logits)
    return max(math.exp(x - top) for x in logits) / sum(math.exp(x - top) for x in logits)


def spec_v2(A, regions, phrases):
    """v2(S) of spec section 4 for one matrix A (list of K lists of M floats), S = regions u phrases."""
    if not regions or not phrases:
        return 0.0
    s1 = sum(_softmax_max([A[i][j] for j in phrases]) for i in regions) / len(regions)
    s2 = sum(_softmax_max([A[i][j] for i in regions]) for j in phrases) / len(phrases)
    return (s1 + s2) / 2


def spec_game_values(A, coalitions, region_mask, phrase_mask):
    """spec_v2 of every coalition row, honouring padding: float64[B, C]."""
    B, C, _ = coalitions.shape
    K, M = A.shape[1:]
    out = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        Ab = A[b].double().tolist()
        for c in range(C):
            regions = [i for i in range(K) if coalitions[b, c, i] and region_mask[b, i]]
            phrases = [j for j in range(M) if coalitions[b, c, K + j] and phrase_mask[b, j]]
            out[b, c] = spec_v2(Ab, regions, phrases)
    return out


def _random_case(gen, B, K, M, C, dtype, scale=3.0):
    A = (torch.randn(B, K, M, generator=gen, dtype=torch.float64) * scale).to(dtype)
    coalitions = torch.rand(B, C, K + M, generator=gen) < 0.5
    region_mask = torch.rand(B, K, generator=gen) < 0.75
    phrase_mask = torch.rand(B, M, generator=gen) < 0.75
    region_mask[0] = True
    phrase_mask[0] = True
    return A, coalitions, region_mask, phrase_mask


def _tol(dtype):
    return dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_game_matches_spec(backend, dtype, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A, coalitions, region_mask, phrase_mask = _random_case(gen, 3, 4, 5, 40, dtype)
    coalitions[:, 0] = False          # empty coalition
    coalitions[:, 1] = True           # everything present
    coalitions[:, 2, :4] = False      # phrases only
    got = alignment_game(A, coalitions, region_mask, phrase_mask, backend=backend)
    assert got.dtype == dtype and got.shape == (3, 40)
    want = spec_game_values(A, coalitions, region_mask, phrase_mask)
    torch.testing.assert_close(got.double(), want, **_tol(dtype))
    assert bool((got[:, 0] == 0).all()) and bool((got[:, 2] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_game_one_region_one_phrase_is_one(backend):
    A = torch.tensor([[[5.0, -2.0], [0.3, 1e4]]], dtype=torch.float64)
    coalitions = torch.tensor([[[True, False, False, True], [False, True, True, False]]])
    got = alignment_game(A, coalitions, backend=backend)
    torch.testing.assert_close(got, torch.ones(1, 2, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_game_huge_logits(backend, scale, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).sign() * abs(scale)
    A[0, 0, 0] = scale
    coalitions = torch.rand(2, 30, 7, generator=gen) < 0.6
    for dtype in (torch.float32, torch.float64):
        got = alignment_game(A.to(dtype), coalitions, backend=backend)
        assert bool(torch.isfinite(got).all())
        ones = (torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
        torch.testing.assert_close(got.double(), spec_game_values(A, coalitions, *ones), **_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_game_ties(backend):
    K, M = 3, 4
    A = torch.full((1, K, M), 2.5, dtype=torch.float64)
    coalitions = torch.ones(1, 1, K + M, dtype=torch.bool)
    got = alignment_game(A, coalitions, backend=backend)
    # every row softmax is uniform over M phrases, every column one over K regions
    torch.testing.assert_close(got, torch.tensor([[(1 / M + 1 / K) / 2]], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_game_padding_never_present(backend, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A, coalitions, region_mask, phrase_mask = _random_case(gen, 2, 3, 3, 20, torch.float64)
    region_mask[1] = torch.tensor([True, False, True])
    phrase_mask[1] = torch.tensor([False, True, True])
    A_nan = A.clone()
    A_nan[1, 1, :] = float("nan")     # padded row: never read
    A_nan[1, :, 0] = -float("inf")    # padded column: never read
    got = alignment_game(A_nan, coalitions, region_mask, phrase_mask, backend=backend)
    # same as the game on the matrix with the padded players deleted
    keep_r, keep_p = [0, 2], [1, 2]
    small = A[1][keep_r][:, keep_p][None]
    small_coal = coalitions[1][:, [0, 2, 4, 5]][None]
    torch.testing.assert_close(got[1:], alignment_game(small, small_coal, backend=backend), rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_game_appending_padding_changes_nothing(backend, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A, coalitions, region_mask, phrase_mask = _random_case(gen, 2, 3, 4, 25, torch.float64)
    base = alignment_game(A, coalitions, region_mask, phrase_mask, backend=backend)
    A2 = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    A2[:, :3, :4] = A
    rm2 = torch.zeros(2, 5, dtype=torch.bool)
    rm2[:, :3] = region_mask
    pm2 = torch.zeros(2, 6, dtype=torch.bool)
    pm2[:, :4] = phrase_mask
    coal2 = torch.ones(2, 25, 11, dtype=torch.bool)   # the padded players claim to be present
    coal2[..., :3] = coalitions[..., :3]
    coal2[..., 5:9] = coalitions[..., 3:]
    torch.testing.assert_close(alignment_game(A2, coal2, rm2, pm2, backend=backend), base, rtol=0, atol=1e-15)


def test_game_backends_agree_and_auto_works(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    A, coalitions, region_mask, phrase_mask = _random_case(gen, 4, 5, 3, 50, torch.float64)
    want = spec_game_values(A, coalitions, region_mask, phrase_mask)
    torch.testing.assert_close(alignment_game(A, coalitions, region_mask, phrase_mask), want, rtol=0, atol=1e-12)


def test_game_half_input_gives_float32():
    A = torch.randn(1, 2, 2).half()
    out = alignment_game(A, torch.ones(1, 3, 4, dtype=torch.bool), backend="torch")
    assert out.dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_game_rejects_nonfinite(bad):
    A = torch.zeros(1, 2, 2)
    A[0, 1, 0] = bad
    with pytest.raises(ValueError, match="A contains"):
        alignment_game(A, torch.ones(1, 1, 4, dtype=torch.bool))


def test_game_rejects_bad_arguments():
    A = torch.zeros(2, 3, 4)
    coal = torch.ones(2, 5, 7, dtype=torch.bool)
    with pytest.raises(TypeError, match="A"):
        alignment_game(A.numpy(), coal)
    with pytest.raises(TypeError, match="A"):
        alignment_game(A.long(), coal)
    with pytest.raises(ValueError, match="A"):
        alignment_game(A[0], coal)
    with pytest.raises(ValueError, match="coalitions"):
        alignment_game(A, coal[..., :6])
    with pytest.raises(TypeError, match="coalitions"):
        alignment_game(A, coal.float())
    with pytest.raises(ValueError, match="region_mask"):
        alignment_game(A, coal, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="phrase_mask"):
        alignment_game(A, coal, None, torch.ones(2, 4))
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        alignment_game(A, coal, backend="fortran")
    with pytest.raises(TypeError, match="backend"):
        alignment_game(A, coal, backend=None)


def test_unavailable_backend_lists_available(monkeypatch):
    monkeypatch.setenv("SHAPLEY_KERNELS_DISABLE", "cpp")
    with pytest.raises(ValueError, match=r"backend 'cpp' is not available.*available: \[.*'torch'"):
        alignment_game(torch.zeros(1, 2, 2), torch.ones(1, 1, 4, dtype=torch.bool), backend="cpp")


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    """On a GPU machine (triton available, no interpreter) CPU tensors get a clear error, not
    Triton's pointer error from inside the launch."""
    from shapley_kernels import _backends
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_backends, "available_backends", lambda: ["torch", "triton"])
    with pytest.raises(ValueError, match="backend 'triton' needs tensors on a CUDA device"):
        _backends.resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backends.resolve_backend("triton", torch.device("cpu")) == "triton"
