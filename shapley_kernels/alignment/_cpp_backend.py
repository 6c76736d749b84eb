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
"""
from typing import Tuple

import torch

from .._backends import load_extension
from . import EXACT_LIMIT
from ._torch_backend import factor_weights


def _ext():
    ext = load_extension("_C")
    if ext is None:  # the dispatcher only routes here when the extension loaded
        raise RuntimeError("shapley_kernels._C is not built; see shapley_kernels.backend_status()")
    return ext


def game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from coalitions bool[B, C, K+M]."""
    return _ext().alignment_game(A, coalitions, region_mask, phrase_mask)


def exact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Exact pairwise SII of every (region, phrase): float[B, K, M] (0 at padding)."""
    # the dispatcher sends at most EXACT_LIMIT present players a side: this table covers them
    # without reducing the masks (the kernel checks the bound)
    return _ext().alignment_exact(A, region_mask, phrase_mask, factor_weights(min(max(A.shape[1:]), EXACT_LIMIT)))


def sampling(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
             num_samples: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo SII: (value, stderr), each float[B, K, M]; stderr = sample std / sqrt(num_samples)."""
    seed64 = (seed + 2**63) % 2**64 - 2**63  # any Python int -> the int64 the kernel hashes
    value, stderr = _ext().alignment_sampling(A, region_mask, phrase_mask, num_samples, seed64)
    return value, stderr
