"""C++ CPU backend of the late-interaction op: thin wrappers over ``shapley_kernels._C``
(csrc/late_interaction_cpu.cpp), registered as the CPU kernels of the ``torch.library`` ops of
``_ops``. Forward: parallel over captions; per (caption, image) the present queries' dot products
with a block of patches accumulate in a small tile (patches transposed to [Bi, d, P] once, so the
inner loop runs along patches), the running max keeping the lowest patch index on ties. Backward:
grad_queries parallel over captions, grad_patches parallel over images (no atomics: the result does
not depend on threading). Contract and shapes: ``_torch_backend``'s module docstring.
"""
from .._backends import load_extension
from . import _ops
from ._ops import LateInteractionKernels


def _ext():
    ext = load_extension("_C")
    if ext is None:  # the dispatcher only routes here when the extension loaded
        raise RuntimeError("shapley_kernels._C is not built; see shapley_kernels.backend_status()")
    return ext


def _forward_kernel(queries, query_mask, patches):
    similarity, argmax = _ext().late_interaction_forward(queries, query_mask, patches)
    return similarity, argmax


def _best_kernel(queries, query_mask, patches):
    values, argmax = _ext().late_interaction_best(queries, query_mask, patches)
    return values, argmax


def _backward_kernel(grad, queries, query_mask, patches, argmax):
    grad_queries, grad_patches = _ext().late_interaction_backward(grad, queries, query_mask, patches, argmax)
    return grad_queries, grad_patches


kernels = LateInteractionKernels(forward=_forward_kernel, best=_best_kernel, backward=_backward_kernel)
_ops.register(kernels, "cpu")
forward, best, backward = _ops.forward, _ops.best, _ops.backward  # the backend contract, through the ops
