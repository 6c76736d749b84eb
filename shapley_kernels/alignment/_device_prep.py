"""Host-side preparation shared by the device backends (triton, cuda) of the alignment game.

The device kernels see every matrix with its present players first (compaction), so they only
need the present counts; results come back to the original player order with ``scatter_back``.
Shapes: ``A`` float[B, K, M], ``region_mask`` bool[B, K], ``phrase_mask`` bool[B, M].
"""
from typing import NamedTuple, Tuple

import torch

from ._torch_backend import factor_weights


class Compacted(NamedTuple):
    """A with each matrix's present regions / phrases moved to the front (stable order).

    A:       float[B, K, M] contiguous (entries past the present counts are 0).
    rows:    int32[B] present regions K'_b;  cols: int32[B] present phrases M'_b.
    r_order: long[B, K] original region index of each compact row; p_order: long[B, M] likewise.
    """

    A: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    r_order: torch.Tensor
    p_order: torch.Tensor


def compact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> Compacted:
    """Move present players first; padded entries of the result are 0."""
    B, K, M = A.shape
    r_order = torch.argsort((~region_mask).to(torch.int8), dim=1, stable=True)
    p_order = torch.argsort((~phrase_mask).to(torch.int8), dim=1, stable=True)
    Ac = A.gather(1, r_order[:, :, None].expand(B, K, M)).gather(2, p_order[:, None, :].expand(B, K, M))
    c = Compacted(Ac, region_mask.sum(1, dtype=torch.int32), phrase_mask.sum(1, dtype=torch.int32),
                  r_order, p_order)
    return c._replace(A=Ac.masked_fill(~present_pairs(c), 0.0).contiguous())


def scatter_back(values: torch.Tensor, c: Compacted) -> torch.Tensor:
    """Inverse of the compaction for a per-pair result: float[B, K, M] in compact order -> original order."""
    B, K, M = values.shape
    r_inv = torch.argsort(c.r_order, dim=1)
    p_inv = torch.argsort(c.p_order, dim=1)
    return values.gather(1, r_inv[:, :, None].expand(B, K, M)).gather(2, p_inv[:, None, :].expand(B, K, M))


def direction_coefficients(owners: torch.Tensor, elements: torch.Tensor, width: int,
                           dtype: torch.dtype) -> torch.Tensor:
    """Factorised-exact weights of one direction, ``dtype``[B, 2, width + 1] (contiguous).

    owners / elements: int32[B] present counts of the side whose softmax is taken and of the side
    enumerated. ``[b, 0, u]`` is c(u) and ``[b, 1, u]`` is b(u) of docs/alignment_exact.md for a
    subset size u (0 for u >= elements). The exact kernels add, for every element subset U, every
    owner i and element j: sign * (r_i(U) c(u) - Tot(U) b(u)), with u = |U| - 1, sign = +1 if
    j is in U, else u = |U|, sign = -1 (Tot(U) = sum over owners of r_i(U)).
    """
    n_max = int(max(int(owners.max()), int(elements.max()), width)) if owners.numel() else width
    table = factor_weights(n_max).to(owners.device)                # [2, n+1, n+1, n+1]
    coef = table[:, owners.long(), elements.long(), : width + 1]    # [2, B, width+1]
    return coef.transpose(0, 1).to(dtype).contiguous()


def split_seed(seed: int) -> Tuple[int, int]:
    """The two 32-bit Philox key words (low, high) of a seed (any Python int, taken mod 2^64)."""
    seed &= (1 << 64) - 1
    return seed & 0xFFFFFFFF, seed >> 32


def mean_and_stderr(total: torch.Tensor, total_sq: torch.Tensor, num_samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and its standard error from per-target sums of delta and delta^2 (float64).

    stderr = sample standard deviation (ddof 1) / sqrt(num_samples); 0 for a single sample.
    """
    mean = total / num_samples
    if num_samples == 1:
        return mean, torch.zeros_like(mean)
    var = ((total_sq - num_samples * mean * mean) / (num_samples - 1)).clamp_min(0.0)
    return mean, (var / num_samples).sqrt()


def present_pairs(c: Compacted) -> torch.Tensor:
    """bool[B, K, M] in compact order: True where both the region and the phrase exist."""
    B, K, M = c.A.shape
    rows = torch.arange(K, device=c.A.device) < c.rows[:, None].long()
    cols = torch.arange(M, device=c.A.device) < c.cols[:, None].long()
    return rows[:, :, None] & cols[:, None, :]
