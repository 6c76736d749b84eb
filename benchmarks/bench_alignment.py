"""Region-phrase interactions of the alignment game (spec section 4): exact vs 500-sample sampling.

Run: python -m pytest benchmarks/bench_alignment.py --benchmark-only -q --bench-threads 1
     (add --benchmark-json=out.json to keep the numbers). Results: benchmarks/RESULTS.md.

- ``test_interaction_grid``: B in {1, 64, 512} x (K, M) in {(5,5), (8,8), (16,12)} x
  {exact, sampling with 500 samples per pair} x every backend in ``available_backends()``
  (triton and cuda rows appear on a GPU machine; Triton's CPU interpreter is not timed).
  The issue-2 cell (torch, B=64, K=M=8) always runs; any other cell whose expected time on the
  reference CPU exceeds SKIP_SECONDS is skipped with its estimate as the reason.
  extra_info: ``evaluations`` as region_phrase_interaction reports them (exact: subset terms
  r_i(U); sampling: v2 values) and ``evaluations_per_s``.
- ``test_instability_500_samples``: instability (spec section 4.5) of 10 seeded 500-sample runs
  at K=M=8, next to the exact values' mean magnitude.
"""
import pytest
import torch

import shapley_kernels as sk
from shapley_kernels import region_phrase_interaction

NUM_SAMPLES = 500
SKIP_SECONDS = 60.0
ISSUE2_CELL = ("torch", 64, (8, 8))
# Seconds per unit of work on the reference CPU (one thread of a loaded 2-core machine,
# 2026-11-24), used only to fit rounds and skip hopeless cells. Units: exact, subset terms
# K*2^M + M*2^K per matrix; sampling, pair-samples times K*M (torch: times 4 coalitions).
SECONDS_PER_UNIT = {("torch", "exact"): 1.2e-7, ("cpp", "exact"): 5e-9,
                    ("torch", "sampling"): 2.4e-7, ("cpp", "sampling"): 4e-8}


def expected_seconds(backend: str, method: str, B: int, K: int, M: int) -> float:
    """Rough wall time of one call on the reference CPU (GPU backends: assumed fast)."""
    if method == "exact":
        units = B * (K * 2**M + M * 2**K)
    else:
        units = B * K * M * NUM_SAMPLES * K * M * (4 if backend == "torch" else 1)
    rate = SECONDS_PER_UNIT.get((backend, method))
    return 0.05 if rate is None else units * rate + 1e-3


def _device(backend: str) -> torch.device:
    if backend in ("cuda", "triton"):
        if not torch.cuda.is_available():
            pytest.skip(f"{backend} without a CUDA device runs in an interpreter: not timed")
        return torch.device("cuda")
    return torch.device("cpu")


def _logits(B: int, K: int, M: int, device: torch.device) -> torch.Tensor:
    """float32[B, K, M] alignment logits, N(0, 3^2), fixed seed."""
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(B, K, M, generator=gen) * 3).to(device)


def _call(A, method, backend, seed=0):
    est = region_phrase_interaction(A, method=method, num_samples=NUM_SAMPLES, seed=seed, backend=backend,
                                    return_stderr=True)
    if A.is_cuda:
        torch.cuda.synchronize()
    return est


@pytest.mark.parametrize("method", ["exact", "sampling"])
@pytest.mark.parametrize("KM", [(5, 5), (8, 8), (16, 12)], ids=lambda km: f"K{km[0]}M{km[1]}")
@pytest.mark.parametrize("B", [1, 64, 512], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("backend", sk.available_backends())
def test_interaction_grid(benchmark, measure, bench_threads, backend, B, KM, method):
    K, M = KM
    seconds = expected_seconds(backend, method, B, K, M)
    if seconds > SKIP_SECONDS and (backend, B, KM) != ISSUE2_CELL:
        pytest.skip(f"expected ~{seconds:.0f} s per call on the reference CPU (> {SKIP_SECONDS:.0f} s)")
    A = _logits(B, K, M, _device(backend))
    est = measure(lambda: _call(A, method, backend), seconds)
    assert bool(torch.isfinite(est.value).all())
    benchmark.extra_info.update(threads=bench_threads, evaluations=est.evaluations,
                                evaluations_per_s=est.evaluations / benchmark.stats.stats.mean)


def test_instability_500_samples(benchmark, bench_threads):
    backend = "cpp" if "cpp" in sk.available_backends() else "torch"
    B = 8 if backend == "cpp" else 1
    A = _logits(B, 8, 8, torch.device("cpu"))
    runs = benchmark.pedantic(lambda: torch.stack([_call(A, "sampling", backend, seed).value for seed in range(10)]),
                              rounds=1, iterations=1)
    exact = region_phrase_interaction(A, method="exact", backend=backend)
    value = sk.instability(runs)
    print(f"\ninstability of {NUM_SAMPLES}-sample estimates, K=M=8, B={B}, 10 runs ({backend}): {value:.3f}; "
          f"mean |exact I| = {float(exact.abs().mean()):.4f}, mean |run - exact| = "
          f"{float((runs - exact).abs().mean()):.4f}")
    benchmark.extra_info.update(backend=backend, threads=bench_threads, instability=value,
                                mean_abs_exact=float(exact.abs().mean()),
                                mean_abs_error=float((runs - exact).abs().mean()))
    assert 0 < value < 2
