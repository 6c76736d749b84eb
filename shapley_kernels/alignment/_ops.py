"""The compiled backends' entry points as ``torch.library`` ops, one name per entry point for every
device: ``torch.ops.shapley_kernels.alignment_game`` / ``alignment_exact`` / ``alignment_sampling``.

Each op has one schema and one fake (meta) kernel here, so it traces under ``torch.compile``
without a graph break and passes ``torch.library.opcheck`` (tests/test_torch_library.py); each
compiled backend registers its device's kernel with ``register``: the C++ extension for "cpu"
(``_cpp_backend``), the CUDA kernels and their host driver for "cuda" (``_cuda_backend``). A
device without a registered kernel raises RuntimeError. Like the kernels, the ops have no
autograd formula: ``game`` / ``exact`` / ``sampling`` below pass A detached, and the results are
constants.

Shapes (docs/CONTRACTS.md section 1): A float[B, K, M] (float32 / float64) contiguous,
coalitions bool[B, C, K + M], region_mask bool[B, K], phrase_mask bool[B, M].
"""
from typing import Callable, NamedTuple, Tuple

import torch

from .._backends import missing_kernel


class AlignmentKernels(NamedTuple):
    """One device's implementations of the three ops (signatures of the ops below; ``sampling``
    takes the seed as a signed 64-bit int)."""

    game: Callable
    exact: Callable
    sampling: Callable


@torch.library.custom_op("shapley_kernels::alignment_game", mutates_args=())
def _game_op(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor,
             phrase_mask: torch.Tensor) -> torch.Tensor:
    raise missing_kernel("alignment_game", A.device)


@_game_op.register_fake
def _game_fake(A, coalitions, region_mask, phrase_mask):
    return A.new_empty(A.shape[0], coalitions.shape[1])


@torch.library.custom_op("shapley_kernels::alignment_exact", mutates_args=())
def _exact_op(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    raise missing_kernel("alignment_exact", A.device)


@_exact_op.register_fake
def _exact_fake(A, region_mask, phrase_mask):
    return torch.empty_like(A)


@torch.library.custom_op("shapley_kernels::alignment_sampling", mutates_args=())
def _sampling_op(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor, num_samples: int,
                 seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    raise missing_kernel("alignment_sampling", A.device)


@_sampling_op.register_fake
def _sampling_fake(A, region_mask, phrase_mask, num_samples, seed):
    return torch.empty_like(A), torch.empty_like(A)


def register(kernels: AlignmentKernels, device_type: str) -> None:
    """Make ``kernels`` the implementations of the three ops on ``device_type`` ("cpu", "cuda")."""
    _game_op.register_kernel(device_type, kernels.game)
    _exact_op.register_kernel(device_type, kernels.exact)
    _sampling_op.register_kernel(device_type, kernels.sampling)


def game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from coalitions bool[B, C, K+M]."""
    return torch.ops.shapley_kernels.alignment_game(A.detach(), coalitions, region_mask, phrase_mask)


def exact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Exact pairwise SII of every (region, phrase): float[B, K, M] (0 at padding)."""
    return torch.ops.shapley_kernels.alignment_exact(A.detach(), region_mask, phrase_mask)


def sampling(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
             num_samples: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo SII: (value, stderr), each float[B, K, M]; stderr = sample std / sqrt(num_samples)."""
    seed64 = (seed + 2**63) % 2**64 - 2**63  # any Python int -> the int64 an op takes (same bits mod 2^64)
    return torch.ops.shapley_kernels.alignment_sampling(A.detach(), region_mask, phrase_mask, num_samples, seed64)
