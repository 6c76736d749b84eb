"""Triton backend of the alignment game (docs/CONTRACTS.md section 1): game, exact, sampling.

Kernels: ``_triton_kernels.py``. Inputs are validated by the dispatcher; ``A`` float32 or float64
[B, K, M] contiguous, masks bool[B, K] / bool[B, M]. Outputs have A's dtype and device.

- ``exact``: the factorised SII (docs/alignment_exact.md): for each direction one program per
  (matrix, chunk of subsets), the matrix tile in registers, subsets enumerated on chip as
  bitmasks; chunk partials are summed in a fixed order (deterministic). float64 A accumulates in
  float64, float32 A in float32.
- ``sampling``: one program per (matrix, region, phrase), counter-based Philox4x32-10 on chip
  (same seed, same result however the grid is laid out), q ~ U(0,1) keep-probability form.
- ``game``: v2 of given coalitions, one program per (matrix, block of coalitions).

Launch sizes are chosen here (no autotuning: it fails under TRITON_INTERPRET=1); on a GPU the
number of programs aims at a few per streaming multiprocessor.
"""
import contextlib
from typing import Tuple

import torch
import triton

from . import _triton_kernels as kernels
from ._device_driver import DeviceDriver, chunk_size

# Elements of the largest per-step register tensor ([block, rows, cols]) of each kernel, and the
# warps sharing it: 16 elements per thread (compiled for sm_90: no spills at 32 x 32 float64 exact
# or 64 x 64 sampling tiles; 4 warps needed up to 248 registers).
_TILE_ELEMENTS = 4096
NUM_WARPS = 8


def _pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(max(1, n)))


def _block(rows_p2: int, cols_p2: int) -> int:
    """Items per step so that a [block, rows, cols] tensor holds about _TILE_ELEMENTS elements."""
    return max(1, _TILE_ELEMENTS // (rows_p2 * cols_p2))


def _on_device_of(A: torch.Tensor):
    """Launch context: Triton launches on the current CUDA device, so make it A's."""
    return torch.cuda.device(A.device) if A.is_cuda else contextlib.nullcontext()


def game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor,
         phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from A float[B, K, M], coalitions bool[B, C, K + M]."""
    B, K, M = A.shape
    C = coalitions.shape[1]
    out = torch.empty(B, C, dtype=A.dtype, device=A.device)
    KP, MP = _pow2(K), _pow2(M)
    BC = _block(KP, MP)
    per_prog = chunk_size(B, C, BC, A.device)
    with _on_device_of(A):
        kernels.game_kernel[(B, -(-C // per_prog))](
            A, region_mask.view(torch.uint8), phrase_mask.view(torch.uint8),
            coalitions.contiguous().view(torch.uint8), out, C, K, M, per_prog, KP=KP, MP=MP, BC=BC,
            num_warps=NUM_WARPS)
    return out


def _exact_direction(A: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """One direction of the factorised exact SII of a compacted A float[B, R, C]: float[B, R, C].

    Rows are the owners (their softmax over columns is taken); the column subsets are enumerated.
    """
    B, R, C = A.shape
    RP, CP = _pow2(R), _pow2(C)
    BS = _block(RP, CP)
    per_prog = chunk_size(B, 1 << C, BS, A.device)
    n_chunks = -(-(1 << C) // per_prog)
    partial = torch.empty(B, n_chunks, R, C, dtype=A.dtype, device=A.device)
    with _on_device_of(A):
        kernels.exact_direction_kernel[(B, n_chunks)](A, rows, cols, coef, partial, R, C, per_prog,
                                                      RP=RP, CP=CP, BS=BS, num_warps=NUM_WARPS)
    return partial.sum(1)


def _sampling_sums(A: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, num_samples: int,
                   k0: int, k1: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sums of delta and delta^2, float64[B, R, C], of a compacted A float[B, R, C]."""
    B, R, C = A.shape
    total = torch.empty(B, R, C, dtype=torch.float64, device=A.device)
    total_sq = torch.empty_like(total)
    RP, CP = _pow2(R), _pow2(C)
    with _on_device_of(A):
        kernels.sampling_kernel[(B * R * C,)](A, rows, cols, total, total_sq, R, C, num_samples, k0, k1,
                                              RP=RP, CP=CP, BN=_block(RP, CP), num_warps=NUM_WARPS)
    return total, total_sq


_driver = DeviceDriver(_exact_direction, _sampling_sums)
exact = _driver.exact        # (A, region_mask, phrase_mask) -> float[B, K, M]
sampling = _driver.sampling  # (A, region_mask, phrase_mask, num_samples, seed) -> (value, stderr)
