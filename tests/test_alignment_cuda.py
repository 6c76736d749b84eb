"""CUDA backend of the alignment game against spec references (tests/_alignment_checks.py).

Two parts:
- on a CUDA device with the built extension shapley_kernels._cuda: the checks of
  tests/test_alignment_triton.py through the public API with backend="cuda" (skipped otherwise);
- everywhere with g++: the same checks on the kernel source csrc/alignment_cuda.cu compiled for
  the host (tests/_cuda_host_emulation.py) and driven through shapley_kernels.alignment._cuda_backend,
  plus: the CUDA and Triton samplers draw the same coalitions from one seed (one Philox4x32-10
  counter layout), and chunked exact partials sum to the single-chunk result.
"""
import os
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shapley_kernels as sk  # noqa: E402
from _alignment_checks import (EXACT_CASES, PublicAPI, brute_interactions, check_exact,  # noqa: E402
                               check_game, check_sampling, check_sampling_replays_draws)
from _cuda_host_emulation import build, compiler_missing  # noqa: E402
from shapley_kernels.alignment import _cuda_backend, _device_driver  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in sk.available_backends(),
    reason=f"needs a CUDA device and the built extension ({sk.backend_status()['cuda']})")
needs_compiler = pytest.mark.skipif(compiler_missing() is not None,
                                    reason=f"host emulation needs a C++20 compiler: {compiler_missing()}")
CUDA = PublicAPI("cuda", "cuda")
DTYPES = [torch.float32, torch.float64]


# ------------------------------------------------------------------------------- on a CUDA device

@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_game_matches_spec(dtype, rng_seed):
    check_game(CUDA, dtype, torch.Generator().manual_seed(rng_seed))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EXACT_CASES)
def test_exact_matches_enumeration(case, dtype, rng_seed):
    check_exact(CUDA, case, dtype, torch.Generator().manual_seed(rng_seed))


@needs_cuda
@pytest.mark.gpu
def test_sampling_unbiased_and_reproducible(rng_seed):
    check_sampling(CUDA, rng_seed, torch.Generator().manual_seed(rng_seed))


@needs_cuda
@pytest.mark.gpu
def test_sampling_replays_documented_draws(rng_seed):
    check_sampling_replays_draws(CUDA, rng_seed * 2**32 + 7, torch.Generator().manual_seed(rng_seed))


@needs_cuda
@pytest.mark.gpu
def test_exact_at_twenty_players_matches_torch_backend(rng_seed):
    """Largest exact size (20 x 20 present) against the torch backend's factorised path (itself
    tested against enumeration): float64 to rounding; float32 to 1e-5 (the extension is built with
    --use_fast_math; the host emulation with exact expf measured 1e-7)."""
    A = 3 * torch.randn(1, 20, 20, generator=torch.Generator().manual_seed(rng_seed), dtype=torch.float64).cuda()
    want = sk.region_phrase_interaction(A, method="exact", backend="torch")
    got = sk.region_phrase_interaction(A, method="exact", backend="cuda")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    got32 = sk.region_phrase_interaction(A.float(), method="exact", backend="cuda")
    torch.testing.assert_close(got32.double(), want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- the kernel source on the host

@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The "cuda" kernels of the alignment ops (``_cuda_backend.kernels``: the shared host driver
    and the extension's launches) wired to the host-compiled kernels, called directly (the ops
    would send CPU tensors to the C++ backend); ``ext`` the host-compiled module."""
    ext = build(tmp_path_factory.mktemp("cuda_emulation"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_cuda_backend, "_ext", lambda: ext)
        yield SimpleNamespace(**_cuda_backend.kernels._asdict(), ext=ext)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_game_matches_spec(emulated, dtype, rng_seed):
    check_game(emulated, dtype, torch.Generator().manual_seed(rng_seed))


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EXACT_CASES)
def test_emulated_exact_matches_enumeration(emulated, case, dtype, rng_seed):
    check_exact(emulated, case, dtype, torch.Generator().manual_seed(rng_seed))


@needs_compiler
def test_emulated_sampling_unbiased_and_reproducible(emulated, rng_seed):
    check_sampling(emulated, rng_seed, torch.Generator().manual_seed(rng_seed))


@needs_compiler
def test_emulated_sampling_replays_documented_draws(emulated, rng_seed):
    check_sampling_replays_draws(emulated, rng_seed * 2**32 + 7, torch.Generator().manual_seed(rng_seed))


@needs_compiler
def test_emulated_exact_chunks_sum_to_one_chunk(emulated, rng_seed):
    """Several (matrix, chunk) blocks, partial steps included, give the single-block result."""
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)
    rm = torch.tensor([[True, True, False, True], [True] * 4])
    pm = torch.ones(2, 9, dtype=torch.bool)
    pm[0, 3] = False
    c = _device_driver.compact(A, rm, pm)
    coef = _device_driver.direction_coefficients(c.rows, c.cols, 9, A.dtype)
    ext = emulated.ext
    whole = ext.alignment_exact_direction(c.A, c.rows, c.cols, coef, 1 << 9)
    parts = ext.alignment_exact_direction(c.A, c.rows, c.cols, coef, 200)   # 3 chunks, 2 of them partial steps
    assert parts.shape[1] == 3
    torch.testing.assert_close(parts.sum(1), whole.sum(1), rtol=0, atol=1e-12)


@needs_compiler
@pytest.mark.skipif("triton" not in sk.available_backends(), reason="triton backend unavailable")
def test_emulated_sampling_draws_match_triton(emulated, rng_seed):
    """Same seed, same Philox counters: CUDA and Triton samplers see the same coalitions."""
    from shapley_kernels.alignment import _triton_backend
    gen = torch.Generator().manual_seed(rng_seed)
    A = torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
    rm = torch.tensor([[True, True, False, True]])
    pm = torch.ones(1, 3, dtype=torch.bool)
    seed = rng_seed * 2**32 + 12345                       # both key words non-zero
    cuda_value, cuda_err = emulated.sampling(A, rm, pm, 64, seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on the CPU only
    triton_value, triton_err = (t.cpu() for t in _triton_backend.sampling(A.to(device), rm.to(device),
                                                                          pm.to(device), 64, seed))
    torch.testing.assert_close(cuda_value, triton_value, rtol=0, atol=1e-12)
    torch.testing.assert_close(cuda_err, triton_err, rtol=0, atol=1e-12)
    exact = brute_interactions(A, rm, pm)
    assert bool(((cuda_value - exact).abs() <= 5 * cuda_err + 1e-12).all())


@needs_compiler
def test_the_kernels_limits_are_the_ones_python_states(emulated):
    from shapley_kernels._backends import EXTENSION_LIMITS

    ext = emulated.ext
    assert {"EXACT_LIMIT": ext.EXACT_LIMIT, "SAMPLING_LIMIT": ext.SAMPLING_LIMIT} == EXTENSION_LIMITS["_cuda"]


def test_emulated_sampling_beyond_64_players_is_a_clear_error(emulated):
    A = torch.zeros(1, 65, 2)
    with pytest.raises(ValueError, match="at most 64 present regions"):
        emulated.sampling(A, torch.ones(1, 65, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool), 4, 0)
