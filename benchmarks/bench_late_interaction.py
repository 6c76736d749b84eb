"""The late-interaction (max-sim) op, forward + backward: every CPU backend beside the einsum path.

Run: python -m pytest benchmarks/bench_late_interaction.py --benchmark-only -q --bench-threads 1
     (add --benchmark-json=out.json to keep the numbers). Results: benchmarks/RESULTS.md.

Rows: B captions x B images in {64, 256}, Q = 8 queries (1..8 present), P = 64 patches, d = 64,
float32 (the ``default`` recipe's fine term) x {``einsum`` (the [B, B, Q, P] path the op replaces,
``late_interaction_scaling.einsum_similarity``), the op on each available CPU backend}. Triton
and CUDA rows run on a GPU machine (benchmarks/gpu_suite.sh). Peak memory and larger B:
benchmarks/late_interaction_scaling.py.
"""
import pytest
import torch
import torch.nn.functional as F

import shapley_kernels as sk
from late_interaction_scaling import einsum_similarity

PATHS = ["einsum", "torch", "cpp"]


def _inputs(B: int, Q: int = 8, P: int = 64, d: int = 64):
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(B, Q, d, generator=g), dim=-1).requires_grad_(True)
    patches = F.normalize(torch.randn(B, P, d, generator=g), dim=-1).requires_grad_(True)
    query_mask = torch.arange(Q)[None, :] < torch.randint(1, Q + 1, (B, 1), generator=g)
    return queries, query_mask, patches


@pytest.mark.parametrize("B", [64, 256])
@pytest.mark.parametrize("path", PATHS)
def test_forward_backward(benchmark, bench_threads, path, B):
    if path not in ("einsum", *sk.available_backends()):
        pytest.skip(f"backend {path} is not available here")
    queries, query_mask, patches = _inputs(B)

    def call():
        queries.grad = patches.grad = None
        s = (einsum_similarity(queries, query_mask, patches) if path == "einsum"
             else sk.late_interaction(queries, query_mask, patches, backend=path))
        s.sum().backward()
        return s

    s = benchmark.pedantic(call, rounds=5 if B <= 64 else 2, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(B=B, threads=bench_threads, similarity_sum=float(s.detach().sum()))
