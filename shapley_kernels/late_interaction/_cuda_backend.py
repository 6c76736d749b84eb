"""CUDA backend of the late-interaction op (contract and shapes: ``_torch_backend``'s module
docstring). Kernels: csrc/late_interaction_cuda.cu, bound in ``shapley_kernels._cuda`` by
csrc/late_interaction_cuda_binding.cpp (built only with a CUDA toolkit and a CUDA build of torch).
Simple kernels without shared memory (forward one thread per (caption, image); backward one
thread per output entry, no atomics): "auto" prefers the tiled Triton kernels on a GPU; this
backend runs with ``backend="cuda"``. ``kernels`` are the "cuda" implementations of the
``torch.library`` ops of ``_ops``.
"""
from .._backends import load_extension
from . import _ops
from ._ops import LateInteractionKernels
from ._torch_backend import query_weights


def _ext():
    ext = load_extension("_cuda")
    if ext is None:
        raise RuntimeError("the CUDA extension shapley_kernels._cuda is not built; see backend_status()")
    return ext


def _forward_kernel(queries, query_mask, patches):
    similarity, _, argmax = _ext().late_interaction_forward(queries, query_mask, patches, False)
    return similarity, argmax


def _best_kernel(queries, query_mask, patches):
    _, values, argmax = _ext().late_interaction_forward(queries, query_mask, patches, True)
    return values, argmax


def _backward_kernel(grad, queries, query_mask, patches, argmax):
    weights = query_weights(query_mask, queries.dtype).contiguous()
    grad_queries, grad_patches = _ext().late_interaction_backward(grad, weights, queries, patches, argmax)
    return grad_queries, grad_patches


kernels = LateInteractionKernels(forward=_forward_kernel, best=_best_kernel, backward=_backward_kernel)
_ops.register(kernels, "cuda")
forward, best, backward = _ops.forward, _ops.best, _ops.backward  # the backend contract, through the ops
