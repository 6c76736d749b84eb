"""CUDA backend of the alignment game against spec references (tests/_alignment_checks.py).

Needs a CUDA device and the built extension shapley_kernels._cuda; skipped otherwise. The same
checks as tests/test_alignment_triton.py, plus: the CUDA and Triton samplers draw the same
coalitions from the same seed (one Philox4x32-10 counter layout), so their estimates agree.
"""
import pytest
import torch

import shapley_kernels as sk
from _alignment_checks import EXACT_CASES, check_exact, check_game, check_sampling

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif("cuda" not in sk.available_backends(),
                       reason=f"cuda backend unavailable: {sk.backend_status()['cuda']}"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_game_matches_spec(dtype, rng_seed):
    check_game("cuda", "cuda", dtype, torch.Generator().manual_seed(rng_seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", EXACT_CASES)
def test_exact_matches_enumeration(case, dtype, rng_seed):
    check_exact("cuda", "cuda", case, dtype, torch.Generator().manual_seed(rng_seed))


def test_sampling_unbiased_and_reproducible(rng_seed):
    check_sampling("cuda", "cuda", rng_seed, torch.Generator().manual_seed(rng_seed))


def test_sampling_one_pair_one_sample():
    """n = 2 players: every sample's delta is v({i,j}) = 1; one sample gives stderr 0 (not NaN)."""
    A = torch.tensor([[[1e4]]], dtype=torch.float64, device="cuda")
    est = sk.region_phrase_interaction(A, method="sampling", num_samples=1, seed=3, backend="cuda",
                                       return_stderr=True)
    assert est.value.item() == 1.0 and est.stderr.item() == 0.0


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="triton backend unavailable")
def test_sampling_matches_triton_draws(rng_seed):
    """Same seed, same Philox counters: the two samplers see the same coalitions (float64 sums)."""
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64).cuda()
    rm = torch.tensor([[True, True, False, True, True], [True] * 5], device="cuda")
    pm = torch.tensor([[True, False, True, True], [True] * 4], device="cuda")
    cuda = sk.region_phrase_interaction(A, rm, pm, method="sampling", num_samples=300, seed=rng_seed,
                                        backend="cuda")
    triton = sk.region_phrase_interaction(A, rm, pm, method="sampling", num_samples=300, seed=rng_seed,
                                          backend="triton")
    torch.testing.assert_close(cuda, triton, rtol=0, atol=1e-9)


def test_exact_at_twenty_players_matches_torch(rng_seed):
    """Largest exact size (20 x 20 present, float64): agrees with the torch backend's factorised path."""
    gen = torch.Generator().manual_seed(rng_seed)
    A = 3 * torch.randn(1, 20, 20, generator=gen, dtype=torch.float64)
    got = sk.region_phrase_interaction(A.cuda(), method="exact", backend="cuda").cpu()
    want = sk.region_phrase_interaction(A, method="exact", backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
