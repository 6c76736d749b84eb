"""Packing the kept tokens of many coalitions into dense, nearly padding-free buckets.

Under the "drop" baseline a coalition row computes only its present tokens. Rows are sorted
by their number of kept tokens and split into a few contiguous groups; each group is gathered
into a dense [c, n_max] block (n_max: the group's largest kept count) with a small validity
mask for the shorter rows. Linear layers and attention then cost about the tokens kept (the
padding left is at most the count spread inside one group), and the original token order and
positions are kept (``index`` holds each packed token's original sequence position).
"""
from typing import List, NamedTuple, Optional

import torch


class Bucket(NamedTuple):
    """One dense block of packed coalition rows.

    rows:  LongTensor[c]     the coalition rows (of the [C, N] keep mask) this block holds.
    index: LongTensor[c, n]  original sequence position of each packed token (0 in padding).
    valid: BoolTensor[c, n] or None: False marks padding; None when no row of the block is padded.
    """

    rows: torch.Tensor
    index: torch.Tensor
    valid: Optional[torch.Tensor]


def plan_buckets(keep: torch.Tensor, num_buckets: int = 8, min_rows: int = 16) -> List[Bucket]:
    """Split the rows of ``keep`` (bool[C, N]) into at most ``num_buckets`` packed blocks.

    Rows are sorted by kept count and cut into contiguous groups of about equal size (at least
    ``min_rows`` rows each where C allows), so that each group pads only to its own maximum.
    Every row appears in exactly one bucket; a row with no kept token gives a block with n = 0.
    """
    C, N = keep.shape
    counts = keep.sum(dim=1)
    order = torch.argsort(counts, stable=True)
    # kept positions first, in their original order (stable sort on "dropped")
    positions = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    groups = max(1, min(num_buckets, C // max(1, min_rows)))
    sorted_counts = counts[order].tolist()
    bounds = [0]
    for g in range(1, groups + 1):
        hi = round(g * C / groups)
        # merge into the previous group when that pads its rows by at most 10%
        if hi <= bounds[-1]:
            continue
        if len(bounds) > 1 and (sorted_counts[hi - 1] + 1) <= 1.1 * (sorted_counts[bounds[-1] - 1] + 1):
            bounds[-1] = hi
        else:
            bounds.append(hi)
    buckets = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = order[lo:hi]
        n_max = int(sorted_counts[hi - 1])
        index = positions[rows, :n_max]
        if int(sorted_counts[lo]) == n_max:
            valid = None
        else:
            valid = torch.arange(n_max, device=keep.device) < counts[rows, None]
            index = torch.where(valid, index, torch.zeros_like(index))
        buckets.append(Bucket(rows, index, valid))
    return buckets


def gather_tokens(x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """Packed tokens of one bucket: x float[C, N, D] -> float[c, n, D] (padding slots hold token 0)."""
    rows = bucket.rows[:, None].expand_as(bucket.index)
    return x[rows, bucket.index]


def scatter_tokens(packed: torch.Tensor, bucket: Bucket, out: torch.Tensor) -> None:
    """Write a bucket's packed outputs float[c, n, D] back into ``out`` float[C, N, D] in place.

    Padding slots are skipped, so dropped positions keep whatever ``out`` held (zeros).
    """
    rows = bucket.rows[:, None].expand_as(bucket.index)
    if bucket.valid is None:
        out[rows, bucket.index] = packed
    else:
        out[rows[bucket.valid], bucket.index[bucket.valid]] = packed[bucket.valid]


def pack_bits(mask: torch.Tensor, rows_per_step: int = 1 << 14) -> torch.Tensor:
    """Pack bool[C, N] into int64 words LongTensor[C, ceil(N / 64)]: bit j of word w is column
    64 w + j (bit 63 is the sign bit). Used to deduplicate coalitions and by the Triton kernel.
    Works through ``rows_per_step`` rows at a time to bound the int64 temporary."""
    C, N = mask.shape
    W = max(1, -(-N // 64))
    shifts = torch.arange(64, device=mask.device, dtype=torch.int64)
    words = torch.empty(C, W, dtype=torch.int64, device=mask.device)
    for lo in range(0, C, rows_per_step):
        part = mask[lo:lo + rows_per_step]
        padded = part.new_zeros(part.shape[0], W * 64)
        padded[:, :N] = part
        words[lo:lo + rows_per_step] = (padded.view(-1, W, 64).to(torch.int64) << shifts).sum(dim=-1)
    return words
