"""Late interaction (FILIP's token-wise max-sim) as one fused op: for every caption t and image i,
each query's best cosine with a patch of i and the mean of those over t's present queries, without
a [Bt, Bi, Q, P] tensor in memory (the largest intermediate is a bounded chunk of captions) and with
a backward that sends each query's gradient to its best patch only.

Public: ``late_interaction`` (differentiable similarity float[Bt, Bi]), ``late_interaction_max``
(best cosines and their argmax, constants), ``LATE_INTERACTION_BACKENDS``.

Ties: the argmax is the LOWEST patch index attaining the max, on every backend, and the gradient
of a tied max goes to that patch alone (plain ``amax`` would split it among the tied patches).

This module validates inputs and dispatches to ``shapley_kernels.late_interaction._<name>_backend``
(contract: ``_torch_backend``'s docstring), imported lazily like the alignment game's backends.
"""
import importlib
from typing import Tuple

import torch

from .._backends import available_backends, resolve_backend
from ..checks import check_finite, check_shape, check_tensor

# Backends that implement this op (every one of _backends.BACKENDS). "auto": cpp on the CPU; on a
# CUDA device the tiled Triton kernels, then the simple CUDA ones; torch as the fallback.
LATE_INTERACTION_BACKENDS = ("torch", "cpp", "triton", "cuda")
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "cuda", "torch")}

__all__ = ["late_interaction", "late_interaction_max", "LATE_INTERACTION_BACKENDS"]


def _backend_module(queries: torch.Tensor, backend):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        available = available_backends()
        order = _AUTO_ORDER.get(queries.device.type, ("torch",))
        name = next(b for b in order if b in available)
    else:
        name = resolve_backend(backend, queries.device)   # unknown, unavailable, wrong device: ValueError
    return importlib.import_module(f"shapley_kernels.late_interaction._{name}_backend")


def _prepare(queries, query_mask, patches) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate queries float[Bt, Q, d], query_mask bool[Bt, Q] (None: all present) and patches
    float[Bi, P, d]; return them as backends take them: one dtype (float64 if either is float64,
    else float32), contiguous, padded queries set to 0 (they may hold anything, even NaN).
    Casting and zeroing keep the autograd graph."""
    check_tensor("queries", queries, dims=3, dtype_kind="float")
    check_tensor("patches", patches, dims=3, dtype_kind="float")
    (Bt, Q, d), (Bi, P, d_patches) = queries.shape, patches.shape
    if d_patches != d:
        raise ValueError(f"patches must have the queries' embedding size {d}, got shape {list(patches.shape)}")
    if Q == 0 or d == 0:
        raise ValueError(f"queries must be float[Bt, Q, d] with Q >= 1 and d >= 1, got shape {list(queries.shape)}")
    if P == 0:
        raise ValueError(f"patches must be float[Bi, P, d] with P >= 1, got shape {list(patches.shape)}")
    if patches.device != queries.device:
        raise ValueError(f"patches must be on queries' device {queries.device}, got {patches.device}")
    if query_mask is None:
        query_mask = torch.ones(Bt, Q, dtype=torch.bool, device=queries.device)
    check_tensor("query_mask", query_mask, dtype_kind="bool")
    check_shape("query_mask", query_mask, (Bt, Q))
    if query_mask.device != queries.device:
        raise ValueError(f"query_mask must be on queries' device {queries.device}, got {query_mask.device}")
    check_finite("patches", patches.detach())
    check_finite("queries", queries.detach()[query_mask])          # present queries only
    dtype = torch.float64 if torch.float64 in (queries.dtype, patches.dtype) else torch.float32
    queries, patches = queries.to(dtype), patches.to(dtype)
    if not bool(query_mask.all()):
        queries = queries.masked_fill(~query_mask[:, :, None], 0.0)
    return queries.contiguous(), query_mask.contiguous(), patches.contiguous()


class _LateInteraction(torch.autograd.Function):
    """similarity float[Bt, Bi] with the argmax backward of the backend module ``module``."""

    @staticmethod
    def forward(ctx, queries, query_mask, patches, module):
        similarity, argmax = module.forward(queries, query_mask, patches)
        ctx.save_for_backward(queries, query_mask, patches, argmax)
        ctx.module = module
        return similarity

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        queries, query_mask, patches, argmax = ctx.saved_tensors
        grad_queries, grad_patches = ctx.module.backward(grad.contiguous(), queries, query_mask, patches, argmax)
        return grad_queries, None, grad_patches, None


def late_interaction(queries: torch.Tensor, query_mask, patches: torch.Tensor, *,
                     backend: str = "auto") -> torch.Tensor:
    """Late-interaction similarity s float[Bt, Bi], differentiable in queries and patches.

    queries float[Bt, Q, d] (caption tokens or phrase embeddings, L2-normalised by the caller),
    query_mask bool[Bt, Q] (True = present; None: all), patches float[Bi, P, d]. s[t, i] is the
    mean over t's present queries q of max_p <queries[t, q], patches[i, p]>, 0 for a caption
    without a present query. Memory: O(Bt Bi Q) (an int32 argmax saved for the backward) plus a
    bounded chunk, never O(Bt Bi Q P). The gradient of each max goes to its lowest-index argmax
    patch (module docstring). float64 in (either input), float64 out; float32 otherwise.
    backend: "auto" (cpp on the CPU; triton, then cuda, on a CUDA device; torch as the fallback) or one of
    ``LATE_INTERACTION_BACKENDS``. float16 / bfloat16 inputs are upcast to float32 (float32
    accumulation on every backend).
    NaN / inf in patches or a present query, a mismatched d, or an empty Q, P or d: ValueError.
    """
    queries, query_mask, patches = _prepare(queries, query_mask, patches)
    module = _backend_module(queries, backend)
    if queries.shape[0] == 0 or patches.shape[0] == 0:
        return (queries.sum() + patches.sum()) * queries.new_zeros(queries.shape[0], patches.shape[0])
    return _LateInteraction.apply(queries, query_mask, patches, module)


def late_interaction_max(queries: torch.Tensor, query_mask, patches: torch.Tensor, *,
                         backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Each query's best patch: (best float[Bt, Bi, Q], argmax long[Bt, Bi, Q]), constants (no grad).

    best[t, i, q] = max_p <queries[t, q], patches[i, p]>, argmax its lowest patch index; 0 and -1
    at a padded query. Inputs, dtypes, backends and errors as in ``late_interaction``.
    """
    queries, query_mask, patches = _prepare(queries, query_mask, patches)
    module = _backend_module(queries, backend)
    Bt, Q, _ = queries.shape
    if Bt == 0 or patches.shape[0] == 0:
        shape = (Bt, patches.shape[0], Q)
        return queries.new_zeros(shape), torch.full(shape, -1, dtype=torch.long, device=queries.device)
    values, argmax = module.best(queries.detach(), query_mask, patches.detach())
    return values, argmax.long()
