"""Host-side driving shared by the device backends (triton, cuda) of the alignment game.

The device kernels see every matrix with its present players first and trimmed to the largest
present counts (``compact``), so they only need the present counts K'_b, M'_b; results go back
to the original player order and shape with ``scatter_back``. ``DeviceDriver`` holds the host
logic both backends share; a backend supplies the kernel launches.
Shapes: ``A`` float[B, K, M], ``region_mask`` bool[B, K], ``phrase_mask`` bool[B, M].
"""
from typing import Callable, NamedTuple, Tuple

import torch

from ._torch_backend import factor_weights


class Compacted(NamedTuple):
    """A with each matrix's present regions / phrases moved to the front (stable order), trimmed.

    A:       float[B, k, m] contiguous, k / m the largest present counts (entries past a matrix's
             own counts are 0).
    rows:    int32[B] present regions K'_b;  cols: int32[B] present phrases M'_b.
    r_order: long[B, K] original region index of each compact row; p_order: long[B, M] likewise.
    """

    A: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    r_order: torch.Tensor
    p_order: torch.Tensor


def present_pairs(rows: torch.Tensor, cols: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """bool[B, k, m] in compact order: True where both the region and the phrase exist."""
    r = torch.arange(k, device=rows.device) < rows[:, None].long()
    c = torch.arange(m, device=cols.device) < cols[:, None].long()
    return r[:, :, None] & c[:, None, :]


def compact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> Compacted:
    """Move present players first and trim to the largest present counts; padded entries are 0."""
    B, K, M = A.shape
    r_order = torch.argsort((~region_mask).to(torch.int8), dim=1, stable=True)
    p_order = torch.argsort((~phrase_mask).to(torch.int8), dim=1, stable=True)
    rows = region_mask.sum(1, dtype=torch.int32)
    cols = phrase_mask.sum(1, dtype=torch.int32)
    k = int(rows.max()) if B else 0
    m = int(cols.max()) if B else 0
    Ac = A.gather(1, r_order[:, :k, None].expand(B, k, M)).gather(2, p_order[:, None, :m].expand(B, k, m))
    Ac = Ac.masked_fill(~present_pairs(rows, cols, k, m), 0.0).contiguous()
    return Compacted(Ac, rows, cols, r_order, p_order)


def scatter_back(values: torch.Tensor, c: Compacted) -> torch.Tensor:
    """Per-pair result float[B, k, m] in compact order -> float[B, K, M] in original order (0 at padding)."""
    B, k, m = values.shape
    K, M = c.r_order.shape[1], c.p_order.shape[1]
    full = values.new_zeros(B, K, M)
    full[:, :k, :m] = values.masked_fill(~present_pairs(c.rows, c.cols, k, m), 0.0)
    r_inv = torch.argsort(c.r_order, dim=1)
    p_inv = torch.argsort(c.p_order, dim=1)
    return full.gather(1, r_inv[:, :, None].expand(B, K, M)).gather(2, p_inv[:, None, :].expand(B, K, M))


def chunk_size(batch: int, work: int, step: int, device: torch.device) -> int:
    """Items per program (a multiple of ``step``) when each of ``batch`` matrices has ``work`` items.

    Aims at 4 programs per streaming multiprocessor on a GPU, with at least 64 steps per program;
    elsewhere (Triton's interpreter, ~60 ms per program) one program per matrix.
    """
    programs = 1
    if device.type == "cuda":
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    chunks = max(1, min(-(-programs // max(1, batch)), -(-work // (64 * step))))
    return max(step, -(-work // (chunks * step)) * step)


def direction_coefficients(owners: torch.Tensor, elements: torch.Tensor, width: int,
                           dtype: torch.dtype) -> torch.Tensor:
    """Factorised-exact weights of one direction, ``dtype``[B, 2, width + 1] (contiguous).

    owners / elements: int32[B] present counts of the side whose softmax is taken and of the side
    enumerated. ``[b, 0, u]`` is c(u) and ``[b, 1, u]`` is b(u) of docs/alignment_exact.md for a
    subset size u (0 for u >= elements). The exact kernels add, for every element subset U, every
    owner i and element j: sign * (r_i(U) c(u) - Tot(U) b(u)), with u = |U| - 1, sign = +1 if
    j is in U, else u = |U|, sign = -1 (Tot(U) = sum over owners of r_i(U)).
    """
    n_max = max(int(owners.max()), int(elements.max()), width)
    table = factor_weights(n_max).to(owners.device)                # [2, n+1, n+1, n+1]
    coef = table[:, owners.long(), elements.long(), : width + 1]    # [2, B, width+1]
    return coef.transpose(0, 1).to(dtype).contiguous()


# direction(A float[B, R, C], rows int32[B], cols int32[B], coef float[B, 2, C + 1]) -> float[B, R, C]
DirectionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# sums(A float[B, R, C], rows int32[B], cols int32[B], num_samples, key0, key1)
#   -> (sum of deltas, sum of squared deltas), each float64[B, R, C]
SumsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int], Tuple[torch.Tensor, torch.Tensor]]


class DeviceDriver:
    """``exact`` and ``sampling`` of docs/CONTRACTS.md section 1 around a backend's kernel launches.

    direction: one direction of the factorised exact SII on a compacted matrix (rows are the
    owners, whose softmax over the columns is taken; column subsets are enumerated).
    sums: per-pair Monte Carlo sums of delta and delta^2 on a compacted matrix.
    """

    def __init__(self, direction: DirectionFn, sums: SumsFn):
        self._direction = direction
        self._sums = sums

    def exact(self, A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
        """Exact pairwise SII of every (region, phrase) in v2: float[B, K, M] (0 at padding),
        = (rows direction + columns direction) / 2 (docs/alignment_exact.md)."""
        c = compact(A, region_mask, phrase_mask)
        _, k, m = c.A.shape
        by_rows = self._direction(c.A, c.rows, c.cols, direction_coefficients(c.rows, c.cols, m, A.dtype))
        by_cols = self._direction(c.A.transpose(1, 2).contiguous(), c.cols, c.rows,
                                  direction_coefficients(c.cols, c.rows, k, A.dtype)).transpose(1, 2)
        return scatter_back((by_rows + by_cols) * 0.5, c)

    def sampling(self, A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
                 num_samples: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Monte Carlo SII of every (region, phrase): (value, stderr), each float[B, K, M] in A's dtype.

        num_samples samples per pair. The seed (any Python int, taken mod 2^64) becomes the Philox
        key (low word, high word). stderr = sample std (ddof 1) / sqrt(num_samples); 0 for one sample.
        """
        c = compact(A, region_mask, phrase_mask)
        seed &= (1 << 64) - 1
        total, total_sq = self._sums(c.A, c.rows, c.cols, num_samples, seed & 0xFFFFFFFF, seed >> 32)
        mean = total / num_samples
        if num_samples == 1:
            stderr = torch.zeros_like(mean)
        else:
            var = ((total_sq - num_samples * mean * mean) / (num_samples - 1)).clamp_min(0.0)
            stderr = (var / num_samples).sqrt()
        return scatter_back(mean.to(A.dtype), c), scatter_back(stderr.to(A.dtype), c)
