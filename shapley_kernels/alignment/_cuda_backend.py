"""CUDA backend of the alignment game (docs/CONTRACTS.md section 1): game, exact, sampling.

Kernels: csrc/alignment_cuda.cu, bound as ``shapley_kernels._cuda`` by
csrc/alignment_cuda_binding.cpp (built by setup.py only with a CUDA toolkit and a CUDA build of
torch). Inputs are validated by the dispatcher, which routes here only for CUDA tensors when the
extension loaded; ``A`` float32 or float64 [B, K, M] contiguous, masks bool[B, K] / bool[B, M].

- ``exact``: factorised SII, one block per (matrix, chunk of subsets), present counts per side
  at most 20 (the dispatcher's EXACT_LIMIT); chunk partials summed in a fixed order.
- ``sampling``: one block per (matrix, region, phrase), Philox4x32-10 on chip with the same
  counters as the Triton kernels (same seed: the same coalitions on both backends); present
  counts per side at most SAMPLING_LIMIT (64), beyond it a ValueError names triton / torch.
- ``game``: one thread per (matrix, coalition).

``kernels`` are the "cuda" implementations of the ``torch.library`` ops of ``_ops`` (the names
the C++ backend implements for "cpu"); ``game`` / ``exact`` / ``sampling`` call the ops. The
module ``_cuda`` itself binds the kernel launches the shared host driver calls
(``alignment_game``, ``alignment_exact_direction``, ``alignment_sampling_sums``): compaction,
coefficients and scatter are ``_device_driver``'s, shared with the Triton backend.
"""
from typing import Tuple

import torch

from .._backends import SAMPLING_LIMIT, load_extension
from . import _ops
from ._device_driver import DeviceDriver, chunk_size
from ._ops import AlignmentKernels

_EXACT_STEP = 128     # kExactSubsets in csrc/alignment_cuda.cu: subsets per step of a block


def _ext():
    ext = load_extension("_cuda")
    if ext is None:
        raise RuntimeError("the CUDA extension shapley_kernels._cuda is not built; see backend_status()")
    return ext


def _game_kernel(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor,
                 phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from A float[B, K, M], coalitions bool[B, C, K + M]."""
    return _ext().alignment_game(A, coalitions.contiguous(), region_mask.contiguous(), phrase_mask.contiguous())


def _exact_direction(A: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """One direction of the factorised exact SII of a compacted A float[B, R, C]: float[B, R, C]."""
    per_chunk = chunk_size(A.shape[0], 1 << A.shape[2], _EXACT_STEP, A.device)
    return _ext().alignment_exact_direction(A, rows, cols, coef, per_chunk).sum(1)


def _sampling_sums(A: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, num_samples: int,
                   k0: int, k1: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sums of delta and delta^2, float64[B, R, C], of a compacted A float[B, R, C]."""
    if max(A.shape[1], A.shape[2]) > SAMPLING_LIMIT:
        raise ValueError(f"backend 'cuda' samples at most {SAMPLING_LIMIT} present regions and {SAMPLING_LIMIT} "
                         f"present phrases per matrix, got {A.shape[1]} and {A.shape[2]}; use backend='triton' "
                         f"or 'torch'")
    return _ext().alignment_sampling_sums(A, rows, cols, num_samples, k0, k1)


_driver = DeviceDriver(_exact_direction, _sampling_sums)
# exact: (A, region_mask, phrase_mask) -> float[B, K, M];
# sampling: (A, region_mask, phrase_mask, num_samples, seed) -> (value, stderr)
kernels = AlignmentKernels(game=_game_kernel, exact=_driver.exact, sampling=_driver.sampling)
_ops.register(kernels, "cuda")
game, exact, sampling = _ops.game, _ops.exact, _ops.sampling  # the backend contract, through the ops
