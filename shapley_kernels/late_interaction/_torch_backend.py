"""PyTorch backend of the late-interaction (max-sim) op: readable, and never holding the patch axis
of more than a bounded chunk of captions in memory.

Contract of every backend (``shapley_kernels.late_interaction``; inputs already checked, cast to
one float dtype, contiguous, padded queries zeroed):

- ``forward(queries, query_mask, patches) -> (similarity float[Bt, Bi], argmax int32[Bt, Bi, Q])``
- ``best(queries, query_mask, patches) -> (best float[Bt, Bi, Q], argmax int32[Bt, Bi, Q])``
- ``backward(grad float[Bt, Bi], queries, query_mask, patches, argmax) -> (grad_queries float[Bt, Q, d],
  grad_patches float[Bi, P, d])``

with queries float[Bt, Q, d], query_mask bool[Bt, Q], patches float[Bi, P, d]. best[t, i, q] is the
largest cosine of query q of caption t with a patch of image i, argmax the LOWEST patch index that
attains it (0 and -1 for a padded query); similarity[t, i] the mean of best over t's present
queries (0 for a caption without one). The backward sends each (t, i, q)'s share of the gradient,
grad[t, i] / |present queries of t|, to its argmax patch only.
"""
from typing import Tuple

import torch

# Elements of the largest intermediate (one chunk of captions x every image x Q x max(P, d)).
_CHUNK_ELEMENTS = 1 << 22


def _caption_chunks(Bt: int, Q: int, Bi: int, width: int):
    """Slices of captions whose [rows, Q, Bi, width] intermediate holds at most _CHUNK_ELEMENTS."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, Q * Bi * width))
    return (slice(start, min(start + rows, Bt)) for start in range(0, Bt, rows))


def query_weights(query_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float[Bt, Q]: 1 / |present queries of t| at t's present queries, 0 elsewhere."""
    weight = query_mask.to(dtype)
    return weight / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


def best(queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(best float[Bt, Bi, Q], argmax int32[Bt, Bi, Q]); see the module docstring."""
    (Bt, Q, d), (Bi, P, _) = queries.shape, patches.shape
    values = queries.new_zeros(Bt, Bi, Q)
    argmax = torch.full((Bt, Bi, Q), -1, dtype=torch.int32, device=queries.device)
    flat_patches = patches.reshape(Bi * P, d)
    for rows in _caption_chunks(Bt, Q, Bi, P):
        cosines = (queries[rows].reshape(-1, d) @ flat_patches.t()).view(-1, Q, Bi, P)
        top, index = cosines.max(dim=3)           # first maximal index on ties: the lowest patch
        present = query_mask[rows][:, None, :]
        values[rows] = top.transpose(1, 2).masked_fill(~present, 0.0)
        argmax[rows] = index.transpose(1, 2).to(torch.int32).masked_fill(~present, -1)
    return values, argmax


def forward(queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(similarity float[Bt, Bi], argmax int32[Bt, Bi, Q]); see the module docstring."""
    values, argmax = best(queries, query_mask, patches)
    weights = query_weights(query_mask, values.dtype)
    return torch.einsum("tiq,tq->ti", values, weights), argmax


def backward(grad: torch.Tensor, queries: torch.Tensor, query_mask: torch.Tensor, patches: torch.Tensor,
             argmax: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_queries float[Bt, Q, d], grad_patches float[Bi, P, d]); see the module docstring.

    Per chunk of captions the shares are scattered into a [rows x Q, Bi x P] matrix, nonzero only
    at each (t, q, i)'s argmax patch; two GEMMs with it give both gradients."""
    (Bt, Q, d), (Bi, P, _) = queries.shape, patches.shape
    weights = query_weights(query_mask, queries.dtype)
    flat_patches = patches.reshape(Bi * P, d)
    grad_queries = torch.empty_like(queries)
    grad_patches = torch.zeros_like(flat_patches)
    image_start = (torch.arange(Bi, device=patches.device) * P)[None, None, :]
    for rows in _caption_chunks(Bt, Q, Bi, P):
        share = grad[rows][:, None, :] * weights[rows][:, :, None]            # [t, Q, Bi], 0 at padding
        column = argmax[rows].transpose(1, 2).long().clamp(min=0) + image_start  # [t, Q, Bi] rows of flat_patches
        scatter = share.new_zeros(share.shape[0] * Q, Bi * P)
        scatter.scatter_(1, column.reshape(-1, Bi), share.reshape(-1, Bi))
        grad_queries[rows] = (scatter @ flat_patches).view(-1, Q, d)
        grad_patches += scatter.t() @ queries[rows].reshape(-1, d)
    return grad_queries, grad_patches.view(Bi, P, d)
