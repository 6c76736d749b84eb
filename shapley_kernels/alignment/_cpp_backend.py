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

The three entry points are registered with ``torch.library`` (``torch.ops.shapley_kernels.
alignment_game`` / ``alignment_exact`` / ``alignment_sampling``, CPU), each with a fake (meta)
kernel giving its output's shape and dtype, so they trace under ``torch.compile`` without a graph
break and pass ``torch.library.opcheck`` (tests/test_torch_library.py). Like the compiled
kernels, they have no autograd formula: the wrappers below pass A detached, and the results are
constants.
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


@torch.library.custom_op("shapley_kernels::alignment_game", mutates_args=(), device_types="cpu")
def _game_op(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor,
             phrase_mask: torch.Tensor) -> torch.Tensor:
    return _ext().alignment_game(A, coalitions, region_mask, phrase_mask)


@_game_op.register_fake
def _game_fake(A, coalitions, region_mask, phrase_mask):
    return A.new_empty(A.shape[0], coalitions.shape[1])


@torch.library.custom_op("shapley_kernels::alignment_exact", mutates_args=(), device_types="cpu")
def _exact_op(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    # the dispatcher sends at most EXACT_LIMIT present players a side: this table covers them
    # without reducing the masks (the kernel checks the bound); built here, inside the op, so a
    # compiled caller does not trace its construction
    weights = factor_weights(min(max(A.shape[1:]), EXACT_LIMIT))
    return _ext().alignment_exact(A, region_mask, phrase_mask, weights)


@_exact_op.register_fake
def _exact_fake(A, region_mask, phrase_mask):
    return torch.empty_like(A)


@torch.library.custom_op("shapley_kernels::alignment_sampling", mutates_args=(), device_types="cpu")
def _sampling_op(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor, num_samples: int,
                 seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    value, stderr = _ext().alignment_sampling(A, region_mask, phrase_mask, num_samples, seed)
    return value, stderr


@_sampling_op.register_fake
def _sampling_fake(A, region_mask, phrase_mask, num_samples, seed):
    return torch.empty_like(A), torch.empty_like(A)


def game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from coalitions bool[B, C, K+M]."""
    return torch.ops.shapley_kernels.alignment_game(A.detach(), coalitions, region_mask, phrase_mask)


def exact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Exact pairwise SII of every (region, phrase): float[B, K, M] (0 at padding)."""
    return torch.ops.shapley_kernels.alignment_exact(A.detach(), region_mask, phrase_mask)


def sampling(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
             num_samples: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo SII: (value, stderr), each float[B, K, M]; stderr = sample std / sqrt(num_samples)."""
    seed64 = (seed + 2**63) % 2**64 - 2**63  # any Python int -> the int64 the kernel hashes
    return torch.ops.shapley_kernels.alignment_sampling(A.detach(), region_mask, phrase_mask, num_samples, seed64)
