"""Triton backend of the late-interaction op (contract and shapes: ``_torch_backend``'s module
docstring; kernels: ``_triton_kernels``). Forward: one program per (caption, image), patches in
blocks, the products of a [QP, BP, BD] tile per step. Backward: grad_queries one program per
(caption, block of dims), grad_patches one program per (image, block of dims) that alone writes
those entries (no atomics: deterministic). Launch sizes are fixed here (no autotuning).
"""
import contextlib
from typing import Tuple

import torch
import triton

from . import _triton_kernels as kernels
from ._torch_backend import query_weights

_TILE_ELEMENTS = 4096   # products per step of the forward's [QP, BP, BD] tile
NUM_WARPS = 4


def _pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(max(1, n)))


def launch_blocks(Q: int, P: int, D: int) -> Tuple[int, int, int]:
    """(QP, BP, BD) of the forward: queries padded to a power of 2, a patch block, a dim block."""
    QP = _pow2(Q)
    BP = min(32, _pow2(P))
    BD = max(2, min(_pow2(D), _TILE_ELEMENTS // (QP * BP)))
    return QP, BP, BD


def _on_device_of(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _forward(queries, query_mask, patches, write_best: bool):
    (Bt, Q, D), (Bi, P, _) = queries.shape, patches.shape
    similarity = queries.new_empty(Bt, Bi)
    argmax = torch.empty(Bt, Bi, Q, dtype=torch.int32, device=queries.device)
    best = queries.new_empty(Bt, Bi, Q) if write_best else similarity
    QP, BP, BD = launch_blocks(Q, P, D)
    with _on_device_of(queries):
        kernels.forward_kernel[(Bt, Bi)](queries, query_mask.view(torch.uint8), patches, similarity, best, argmax,
                                         Bi, Q, P, D, QP=QP, BP=BP, BD=BD, WRITE_BEST=write_best,
                                         num_warps=NUM_WARPS)
    return similarity, best, argmax


def forward(queries, query_mask, patches):
    similarity, _, argmax = _forward(queries, query_mask, patches, write_best=False)
    return similarity, argmax


def best(queries, query_mask, patches):
    _, values, argmax = _forward(queries, query_mask, patches, write_best=True)
    return values, argmax


def backward(grad, queries, query_mask, patches, argmax):
    (Bt, Q, D), (Bi, P, _) = queries.shape, patches.shape
    weights = query_weights(query_mask, queries.dtype).contiguous()
    grad_queries = torch.empty_like(queries)
    grad_patches = torch.zeros_like(patches)
    BD = min(64, _pow2(D))
    with _on_device_of(queries):
        kernels.grad_queries_kernel[(Bt, triton.cdiv(D, BD))](grad, weights, patches, argmax, grad_queries, Bi, Q, P,
                                                              D, QP=_pow2(Q), BD=BD, num_warps=NUM_WARPS)
        kernels.grad_patches_kernel[(Bi, triton.cdiv(D, BD))](grad, weights, queries, argmax, grad_patches, Bt, Bi, Q,
                                                              P, D, BD=BD, num_warps=NUM_WARPS)
    return grad_queries, grad_patches
