"""The compiled backends' entry points of the late-interaction op as ``torch.library`` ops:
``torch.ops.shapley_kernels.late_interaction_forward`` / ``late_interaction_best`` /
``late_interaction_backward``, one schema and one fake (meta) kernel each, so a caller traces under
``torch.compile`` and the ops pass ``torch.library.opcheck``. Each compiled backend registers its
device's kernels with ``register`` (the C++ extension for "cpu", ``_cpp_backend``). The ops carry
no autograd formula: ``shapley_kernels.late_interaction``'s autograd function calls ``forward``
and ``backward`` below itself.

Shapes and meaning: the backend contract of ``_torch_backend`` (queries float[Bt, Q, d],
query_mask bool[Bt, Q], patches float[Bi, P, d], argmax int32[Bt, Bi, Q], float32 / float64).
"""
from typing import Callable, NamedTuple, Tuple

import torch

from .._backends import missing_kernel


class LateInteractionKernels(NamedTuple):
    """One device's implementations of the three ops (signatures of the ops below)."""

    forward: Callable
    best: Callable
    backward: Callable


@torch.library.custom_op("shapley_kernels::late_interaction_forward", mutates_args=())
def _forward_op(queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    raise missing_kernel("late_interaction_forward", queries.device)


@_forward_op.register_fake
def _forward_fake(queries, query_mask, patches):
    Bt, Q, _ = queries.shape
    Bi = patches.shape[0]
    return queries.new_empty(Bt, Bi), queries.new_empty(Bt, Bi, Q, dtype=torch.int32)


@torch.library.custom_op("shapley_kernels::late_interaction_best", mutates_args=())
def _best_op(queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    raise missing_kernel("late_interaction_best", queries.device)


@_best_op.register_fake
def _best_fake(queries, query_mask, patches):
    Bt, Q, _ = queries.shape
    Bi = patches.shape[0]
    return queries.new_empty(Bt, Bi, Q), queries.new_empty(Bt, Bi, Q, dtype=torch.int32)


@torch.library.custom_op("shapley_kernels::late_interaction_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor,
                 argmax: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    raise missing_kernel("late_interaction_backward", queries.device)


@_backward_op.register_fake
def _backward_fake(grad, queries, query_mask, patches, argmax):
    return torch.empty_like(queries), torch.empty_like(patches)


def register(kernels: LateInteractionKernels, device_type: str) -> None:
    """Make ``kernels`` the implementations of the three ops on ``device_type`` ("cpu", "cuda")."""
    _forward_op.register_kernel(device_type, kernels.forward)
    _best_op.register_kernel(device_type, kernels.best)
    _backward_op.register_kernel(device_type, kernels.backward)


def forward(queries, query_mask, patches):
    """(similarity float[Bt, Bi], argmax int32[Bt, Bi, Q]) of detached inputs."""
    return torch.ops.shapley_kernels.late_interaction_forward(queries.detach(), query_mask, patches.detach())


def best(queries, query_mask, patches):
    """(best float[Bt, Bi, Q], argmax int32[Bt, Bi, Q]) of detached inputs."""
    return torch.ops.shapley_kernels.late_interaction_best(queries.detach(), query_mask, patches.detach())


def backward(grad, queries, query_mask, patches, argmax):
    """(grad_queries float[Bt, Q, d], grad_patches float[Bi, P, d])."""
    return torch.ops.shapley_kernels.late_interaction_backward(grad.contiguous(), queries.detach(), query_mask,
                                                               patches.detach(), argmax)
