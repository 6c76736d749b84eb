"""The C++ backend's entry points as torch.library custom ops: schema, fake (meta) kernels and
dispatch pass ``torch.library.opcheck``; the ops trace under torch.compile with fullgraph=True (no
graph break) and give the eager results, which are the backend's own (checked against the spec
references in tests/test_alignment_*.py)."""
import pytest
import torch

from shapley_kernels._backends import load_extension

pytestmark = pytest.mark.skipif(load_extension("_C") is None, reason="the C++ extension is not built")


def _inputs(seed=0, B=2, K=4, M=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, K, M, generator=g, dtype=dtype)
    region_mask = torch.ones(B, K, dtype=torch.bool)
    region_mask[1, -1] = False
    phrase_mask = torch.ones(B, M, dtype=torch.bool)
    phrase_mask[0, 0] = False
    coalitions = torch.rand(B, 5, K + M, generator=g) < 0.5
    return A, region_mask, phrase_mask, coalitions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ops_pass_opcheck(dtype):
    from shapley_kernels.alignment import _cpp_backend as cpp

    A, rm, pm, coalitions = _inputs(dtype=dtype)
    ops = torch.ops.shapley_kernels
    torch.library.opcheck(ops.alignment_game, (A, coalitions, rm, pm))
    torch.library.opcheck(ops.alignment_exact, (A, rm, pm))
    torch.library.opcheck(ops.alignment_sampling, (A, rm, pm, 16, 7))
    assert cpp.exact(A, rm, pm).dtype == dtype


def test_the_backend_traces_whole_under_compile_and_matches_eager():
    from shapley_kernels.alignment import _cpp_backend as cpp

    A, rm, pm, coalitions = _inputs()

    def step(A):
        value, stderr = cpp.sampling(A, rm, pm, 32, 3)
        return cpp.exact(A, rm, pm) + value, stderr, cpp.game(A, coalitions, rm, pm)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(A), step(A)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
