"""C++ CPU backend of the alignment game (docs/CONTRACTS.md section 1): thin wrappers over
``shapley_kernels._C`` (csrc/alignment_cpu.cpp).

- ``game``: v2 per coalition, running (max, sum-exp) per row and column, parallel over (b, c).
- ``exact``: the factorised algorithm (docs/alignment_exact.md) as a depth-first walk over the
  subsets of one side in descending-logit order: one add and one division per subset and owner,
  all owners of a direction vectorised together, no [B, subsets, K, M] intermediate; parallel
  over (matrix, direction).
- ``sampling``: spec Eq. 10, q ~ U(0,1) keep-probability form, 4 values per sample sharing the
  row / column sums; counter-based SplitMix64 randomness keyed by (seed, b, i, j, sample, player),
  so a result depends only on the seed and never on threading; appending padded players leaves
  every other pair's draws unchanged.

Shapes: A float[B, K, M] (float32 / float64), region_mask bool[B, K], phrase_mask bool[B, M].

The three entry points are the CPU kernels of the ``torch.library`` ops of ``_ops``
(``torch.ops.shapley_kernels.alignment_game`` / ``alignment_exact`` / ``alignment_sampling``, the
same ops the CUDA backend implements for "cuda"); ``game`` / ``exact`` / ``sampling`` call the ops.
"""
from typing import Tuple

import torch

from .._backends import load_extension
from . import EXACT_LIMIT, _ops
from ._ops import AlignmentKernels
from ._torch_backend import factor_weights


def _ext():
    ext = load_extension("_C")
    if ext is None:  # the dispatcher only routes here when the extension loaded
        raise RuntimeError("shapley_kernels._C is not built; see shapley_kernels.backend_status()")
    return ext


def _game_kernel(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor,
                 phrase_mask: torch.Tensor) -> torch.Tensor:
    return _ext().alignment_game(A, coalitions, region_mask, phrase_mask)


def _exact_kernel(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    # the dispatcher sends at most EXACT_LIMIT present players a side: this table covers them
    # without reducing the masks (the kernel checks the bound); built here, inside the op, so a
    # compiled caller does not trace its construction
    weights = factor_weights(min(max(A.shape[1:]), EXACT_LIMIT))
    return _ext().alignment_exact(A, region_mask, phrase_mask, weights)


def _sampling_kernel(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor, num_samples: int,
                     seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    value, stderr = _ext().alignment_sampling(A, region_mask, phrase_mask, num_samples, seed)
    return value, stderr


kernels = AlignmentKernels(game=_game_kernel, exact=_exact_kernel, sampling=_sampling_kernel)
_ops.register(kernels, "cpu")
game, exact, sampling = _ops.game, _ops.exact, _ops.sampling  # the backend contract, through the ops
