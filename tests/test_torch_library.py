"""The compiled backends' entry points as torch.library custom ops (shapley_kernels/alignment/_ops.py):
one op per entry point with a CPU kernel (C++) and a CUDA kernel; schema, fake (meta) kernels and
dispatch pass ``torch.library.opcheck``; the ops trace under torch.compile with fullgraph=True (no
graph break) and give the eager results, which are the backends' own (checked against the spec
references in tests/test_alignment_*.py)."""
import pytest
import torch

from shapley_kernels._backends import load_extension

needs_cpp = pytest.mark.skipif(load_extension("_C") is None, reason="the C++ extension is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or load_extension("_cuda") is None,
                                reason="needs a CUDA device and the built extension shapley_kernels._cuda")
OPS = ("alignment_game", "alignment_exact", "alignment_sampling")


def _inputs(seed=0, B=2, K=4, M=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, K, M, generator=g, dtype=dtype)
    region_mask = torch.ones(B, K, dtype=torch.bool)
    region_mask[1, -1] = False
    phrase_mask = torch.ones(B, M, dtype=torch.bool)
    phrase_mask[0, 0] = False
    coalitions = torch.rand(B, 5, K + M, generator=g) < 0.5
    return A, region_mask, phrase_mask, coalitions


def test_the_cpu_and_cuda_backends_implement_the_same_three_ops():
    from shapley_kernels.alignment import _cpp_backend, _cuda_backend

    for name in OPS:
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"shapley_kernels::{name}", key), (name, key)
    for backend in (_cpp_backend, _cuda_backend):
        assert backend.kernels._fields == ("game", "exact", "sampling")
        assert (backend.game, backend.exact, backend.sampling) == (_cpp_backend.game, _cpp_backend.exact,
                                                                   _cpp_backend.sampling)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ops_pass_opcheck(dtype):
    from shapley_kernels.alignment import _cpp_backend as cpp

    A, rm, pm, coalitions = _inputs(dtype=dtype)
    ops = torch.ops.shapley_kernels
    torch.library.opcheck(ops.alignment_game, (A, coalitions, rm, pm))
    torch.library.opcheck(ops.alignment_exact, (A, rm, pm))
    torch.library.opcheck(ops.alignment_sampling, (A, rm, pm, 16, 7))
    assert cpp.exact(A, rm, pm).dtype == dtype


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ops_pass_opcheck_on_cuda(dtype):
    from shapley_kernels.alignment import _cuda_backend as cuda

    A, rm, pm, coalitions = (t.cuda() for t in _inputs(dtype=dtype))
    ops = torch.ops.shapley_kernels
    torch.library.opcheck(ops.alignment_game, (A, coalitions, rm, pm))
    torch.library.opcheck(ops.alignment_exact, (A, rm, pm))
    torch.library.opcheck(ops.alignment_sampling, (A, rm, pm, 16, 7))
    assert cuda.exact(A, rm, pm).device == A.device


@needs_cpp
def test_the_backend_traces_whole_under_compile_and_matches_eager():
    from shapley_kernels.alignment import _cpp_backend as cpp

    A, rm, pm, coalitions = _inputs()

    def step(A):
        value, stderr = cpp.sampling(A, rm, pm, 32, 3)
        return cpp.exact(A, rm, pm) + value, stderr, cpp.game(A, coalitions, rm, pm)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(A), step(A)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
