"""Triton backend of the alignment game against spec references (tests/_alignment_checks.py).

Without a CUDA device the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported); grids are kept tiny because each interpreted program costs ~60 ms.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

import shapley_kernels as sk  # noqa: E402
from _alignment_checks import (EXACT_CASES, PHILOX_KAT, PublicAPI, check_exact, check_game,  # noqa: E402
                               check_sampling, check_sampling_replays_draws, philox4x32)
from shapley_kernels.alignment._triton_kernels import philox4x32 as triton_philox4x32  # noqa: E402

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif("triton" not in sk.available_backends(),
                       reason=f"triton backend unavailable: {sk.backend_status()['triton']}"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = PublicAPI("triton", DEVICE)


@triton.jit
def _philox_probe(k0, k1, c0, c1, c2, out, N: tl.constexpr):
    offs = tl.arange(0, N)
    x0 = tl.load(c0 + offs).to(tl.uint32, bitcast=True)
    x1 = tl.load(c1 + offs).to(tl.uint32, bitcast=True)
    x2 = tl.load(c2 + offs).to(tl.uint32, bitcast=True)
    key0 = (x0 * 0 + k0).to(tl.uint32)
    key1 = (x0 * 0 + k1).to(tl.uint32)
    w0, w1, w2, w3 = triton_philox4x32(key0, key1, x0, x1, x2)
    tl.store(out + offs * 4, w0.to(tl.int32, bitcast=True))
    tl.store(out + offs * 4 + 1, w1.to(tl.int32, bitcast=True))
    tl.store(out + offs * 4 + 2, w2.to(tl.int32, bitcast=True))
    tl.store(out + offs * 4 + 3, w3.to(tl.int32, bitcast=True))


def test_reference_philox_matches_random123_vectors():
    for key, counter, words in PHILOX_KAT:
        assert philox4x32(key, counter) == words


def test_triton_philox_matches_reference(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    n = 8
    counters = torch.randint(0, 2**32, (3, n), generator=gen, dtype=torch.int64)
    counters[:, 0] = 0
    k0, k1 = (int(k) for k in torch.randint(0, 2**32, (2,), generator=gen))
    as_int32 = [c.to(torch.int32).to(DEVICE) for c in counters]   # wraps to the same 32 bits
    out = torch.empty(n * 4, dtype=torch.int32, device=DEVICE)
    _philox_probe[(1,)](k0, k1, *as_int32, out, N=n)
    got = [tuple(w & 0xFFFFFFFF for w in out.view(n, 4)[t].tolist()) for t in range(n)]
    want = [philox4x32((k0, k1), (*counters[:, t].tolist(), 0)) for t in range(n)]
    assert got == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_game_matches_spec(dtype, rng_seed):
    check_game(TRITON, dtype, torch.Generator().manual_seed(rng_seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", EXACT_CASES)
def test_exact_matches_enumeration(case, dtype, rng_seed):
    check_exact(TRITON, case, dtype, torch.Generator().manual_seed(rng_seed))


def test_sampling_unbiased_and_reproducible(rng_seed):
    check_sampling(TRITON, rng_seed, torch.Generator().manual_seed(rng_seed))


def test_sampling_replays_documented_draws(rng_seed):
    check_sampling_replays_draws(TRITON, rng_seed * 2**32 + 7, torch.Generator().manual_seed(rng_seed))


def test_sampling_one_pair_one_sample():
    """n = 2 players: every sample's delta is v({i,j}) = 1; equal samples give stderr 0 (not NaN)."""
    A = torch.tensor([[[1e4]]], dtype=torch.float64, device=DEVICE)
    est = sk.region_phrase_interaction(A, method="sampling", num_samples=2, seed=3, backend="triton",
                                       return_stderr=True)
    assert est.value.dtype == torch.float64
    assert est.value.item() == 1.0 and est.stderr.item() == 0.0
