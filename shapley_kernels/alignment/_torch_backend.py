"""PyTorch reference backend of the alignment game (docs/CONTRACTS.md section 1).

Readable, vectorised and exact; the compiled backends follow the same algorithms:

- ``game``: v2(S) of spec section 4 from masked row / column softmaxes.
- ``exact``: the factorised pairwise interaction of docs/alignment_exact.md, O((2^M K + 2^K M) +
  (2^M + 2^K) K M) per matrix, enumerating subsets of ONE side at a time in bounded chunks.
- ``sampling``: spec Eq. 10 by Monte Carlo (q ~ U(0,1) keep-probability form), 4 game values per
  sample, drawn from a ``torch.Generator`` seeded with ``seed``.

All shapes: ``A`` float[B, K, M], ``region_mask`` bool[B, K], ``phrase_mask`` bool[B, M].
"""
import math
from functools import lru_cache
from typing import Tuple

import torch

# Elements per intermediate tensor (a chunk): bounds memory for K, M up to 20 and any B.
_CHUNK_ELEMENTS = 1 << 21


# ----------------------------------------------------------------------------------------- game

def _mean_max_softmax(logits: torch.Tensor, present: torch.Tensor, owners: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over present owners of the max softmax over the present entries along ``dim``.

    logits float[..., K, M]; present bool[..., K, M] (entry present = owner and partner present);
    owners bool[..., K] (dim=-1: rows) or bool[..., M] (dim=-2: columns). Returns float[...].
    Max of a softmax = 1 / sum_j exp(a_j - max_j a_j): stable for any finite logits.
    """
    masked = logits.masked_fill(~present, -math.inf)
    top = masked.amax(dim, keepdim=True)
    shifted = torch.where(present, masked - top.masked_fill(top == -math.inf, 0.0), -math.inf)
    total = shifted.exp().sum(dim)  # >= 1 where the owner has a present entry, else 0
    r = torch.where(total > 0, total.clamp_min(1.0).reciprocal(), torch.zeros_like(total))
    r = r * owners
    return r.sum(-1) / owners.sum(-1).clamp_min(1)


def game(A: torch.Tensor, coalitions: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """v2(S) for every coalition: float[B, C] from A float[B, K, M], coalitions bool[B, C, K+M]."""
    B, K, M = A.shape
    C = coalitions.shape[1]
    out = A.new_zeros(B, C)
    step = max(1, _CHUNK_ELEMENTS // max(1, B * K * M))
    for c0 in range(0, C, step):
        coal = coalitions[:, c0:c0 + step]
        regions = coal[..., :K] & region_mask[:, None]        # [B, c, K]
        phrases = coal[..., K:] & phrase_mask[:, None]         # [B, c, M]
        present = regions[..., :, None] & phrases[..., None, :]  # [B, c, K, M]
        logits = A[:, None].expand(present.shape)
        s1 = _mean_max_softmax(logits, present, regions, dim=-1)
        s2 = _mean_max_softmax(logits, present, phrases, dim=-2)
        both = regions.any(-1) & phrases.any(-1)
        out[:, c0:c0 + step] = torch.where(both, (s1 + s2) / 2, torch.zeros_like(s1))
    return out


# ------------------------------------------------------------------------------ exact, factorised

@lru_cache(maxsize=None)
def _direction_weights_list(owners: int, elements: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(c, b) as tuples of length elements + 1, for one direction of the game (see factor_weights)."""
    k, m = owners, elements
    n = k + m
    c = [0.0] * (m + 1)
    b = [0.0] * (m + 1)
    if k == 0 or m == 0:
        return tuple(c), tuple(b)
    for u in range(m):  # u = |U| of the element subset without the pair's element
        a_u = b_u = 0.0
        for t in range(k):  # t = |T_R| of the owner subset without the pair's owner
            w = 1.0 / ((n - 1) * math.comb(n - 2, t + u))
            a_u += w * math.comb(k - 1, t) / (t + 1)
            if t >= 1:
                b_u += w * math.comb(k - 2, t - 1) / (t * (t + 1))
        c[u] = a_u + b_u
        b[u] = b_u
    return tuple(c), tuple(b)


@lru_cache(maxsize=None)
def factor_weights(n_max: int) -> torch.Tensor:
    """Weights of the factorised exact interaction, float64[2, n_max+1, n_max+1, n_max+1].

    ``[0, k, m, u]`` is c(u) and ``[1, k, m, u]`` is b(u) for a direction with k present owners
    (rows whose softmax is taken) and m present elements, u the size of an element subset
    (docs/alignment_exact.md, Eq. (F)); entries with u >= m are 0. Cached: treat the returned tensor as read-only.
    """
    table = torch.zeros(2, n_max + 1, n_max + 1, n_max + 1, dtype=torch.float64)
    for k in range(n_max + 1):
        for m in range(n_max + 1):
            c, b = _direction_weights_list(k, m)
            table[0, k, m, : m + 1] = torch.tensor(c, dtype=torch.float64)
            table[1, k, m, : m + 1] = torch.tensor(b, dtype=torch.float64)
    return table


def _subset_stats(a: torch.Tensor, present: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running (max, sum of exp(a - max)) of every owner row over every subset of L elements.

    a float[B, K, L], present bool[B, L]. Returns (top, total), each float[B, 2^L, K]; subset index
    bit l = element l. Absent elements contribute nothing; an empty subset has (-inf, 0).
    """
    B, K, L = a.shape
    top = a.new_full((B, 1, K), -math.inf)
    total = a.new_zeros(B, 1, K)
    for l in range(L):
        add = a[:, None, :, l].masked_fill(~present[:, l, None, None], -math.inf)
        new_top, new_total = _combine(top, total, add, torch.ones_like(add))
        top = torch.cat([top, new_top], 1)
        total = torch.cat([total, new_total], 1)
    return top, total


def _combine(top1, total1, top2, total2):
    """Merge two (max, sum exp(x - max)) summaries; (-inf, 0) is the empty summary."""
    top = torch.maximum(top1, top2)
    ref = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return top, total1 * (top1 - ref).exp() + total2 * (top2 - ref).exp()


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each non-negative int64 (values < 2^32)."""
    count = torch.zeros_like(x)
    while bool((x > 0).any()):
        count += x & 1
        x = x >> 1
    return count


def _direction(A: torch.Tensor, owner_mask: torch.Tensor, element_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One direction of the factorised exact interaction: float[B, K, M].

    Owners are the rows of A (their softmax over elements is taken), elements the columns.
    Returns I_dir[b, i, j] = sum_U r_i(U) W_c(U, j) - sum_U Tot(U) W_b(U, j), Eq. (F) of
    docs/alignment_exact.md, as (H_c - G_c) - sum_i' (H_b - G_b). Subsets U of the elements are
    enumerated as a low half (table of 2^ceil(M/2)) times chunks of the high half.
    """
    B, K, M = A.shape
    k_count = owner_mask.sum(1)
    m_count = element_mask.sum(1)
    coef = weights[:, k_count, m_count, : M + 1].to(A.dtype)       # [2, B, M+1]: c(u), b(u)
    shifted = torch.cat([coef.new_zeros(2, B, 1), coef[..., :-1]], -1)
    d = shifted + coef                                              # d(u) = x(u-1) + x(u)
    low = (M + 1) // 2
    low_top, low_total = _subset_stats(A[..., :low], element_mask[:, :low])
    high_top, high_total = _subset_stats(A[..., low:], element_mask[:, low:])
    absent_bits = ((~element_mask).long() << torch.arange(M, device=A.device)).sum(1)  # [B]
    n_low = 1 << low
    gain = A.new_zeros(B, K, M)      # sum_U r_i(U) Wc(U, j)
    tot_gain = A.new_zeros(B, K, M)  # sum_U r_i(U) Wb(U, j), summed over i at the end
    per_high = max(1, _CHUNK_ELEMENTS // max(1, B * n_low * K))
    bit = torch.arange(M, device=A.device)
    for h0 in range(0, 1 << (M - low), per_high):
        h1 = min(h0 + per_high, 1 << (M - low))
        top, total = _combine(high_top[:, h0:h1, None], high_total[:, h0:h1, None],
                              low_top[:, None], low_total[:, None])  # [B, h, 2^low, K]
        top = top.flatten(1, 2)
        total = total.flatten(1, 2)
        subsets = (torch.arange(h0, h1, device=A.device)[:, None] * n_low
                   + torch.arange(n_low, device=A.device)).flatten()  # [U]
        r = torch.where(total > 0, total.clamp_min(1.0).reciprocal(), torch.zeros_like(total))
        r = r * owner_mask[:, None, :]                                 # [B, U, K]
        valid = ((subsets[None, :] & absent_bits[:, None]) == 0).to(A.dtype)  # [B, U]
        size = _popcount(subsets)
        member = ((subsets[:, None] >> bit) & 1).to(A.dtype)           # [U, M]
        for x, acc in ((0, gain), (1, tot_gain)):
            g = (r * (valid * coef[x][:, size])[..., None]).sum(1)     # [B, K]: sum_U x(|U|) r_i(U)
            rd = r * (valid * d[x][:, size])[..., None]                # [B, U, K]
            h = torch.einsum("buk,um->bkm", rd, member)                # sum_{U ∋ j} d(|U|) r_i(U)
            acc += h - g[..., None]
    return gain - tot_gain.sum(1, keepdim=True)


def _compact(mask: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Order putting present players first (stable) and the largest present count: (long[B, N], int)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order, int(mask.sum(1).max()) if mask.numel() else 0


def exact(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Exact pairwise SII of every (region, phrase) in v2, float[B, K, M] (0 at padding)."""
    B, K, M = A.shape
    out = A.new_zeros(B, K, M)
    r_order, k = _compact(region_mask)
    p_order, m = _compact(phrase_mask)
    if k == 0 or m == 0:
        return out
    r_idx, p_idx = r_order[:, :k], p_order[:, :m]
    Ac = A.gather(1, r_idx[:, :, None].expand(B, k, M)).gather(2, p_idx[:, None, :].expand(B, k, m)).contiguous()
    rm = region_mask.gather(1, r_idx)
    pm = phrase_mask.gather(1, p_idx)
    weights = factor_weights(max(k, m))
    per_batch = max(1, _CHUNK_ELEMENTS // (k * m * (1 << (max(k, m) // 2))))
    for b0 in range(0, B, per_batch):
        sl = slice(b0, b0 + per_batch)
        rows = _direction(Ac[sl], rm[sl], pm[sl], weights)
        cols = _direction(Ac[sl].transpose(1, 2).contiguous(), pm[sl], rm[sl], weights).transpose(1, 2)
        value = (rows + cols) / 2 * (rm[sl, :, None] & pm[sl, None, :])
        bb = torch.arange(b0, b0 + value.shape[0], device=A.device)[:, None, None]
        out[bb, r_idx[sl][:, :, None], p_idx[sl][:, None, :]] = value
    return out


# ------------------------------------------------------------------------------------- sampling

def sampling(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
             num_samples: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo SII of every (region, phrase): (value, stderr), each float[B, K, M].

    Per pair and sample: q ~ U(0,1), every other present player kept with probability q (this is
    exactly spec Eq. 10's "size uniform over 0..n-2, then a uniform subset of that size"), then
    v2(T+ij) - v2(T+i) - v2(T+j) + v2(T). stderr = sample std / sqrt(num_samples) (0 for one sample).
    """
    B, K, M = A.shape
    n = K + M
    gen = torch.Generator(device=A.device).manual_seed(seed)
    players = torch.cat([region_mask, phrase_mask], 1)                      # [B, n]
    pair_i = torch.arange(K, device=A.device).repeat_interleave(M)           # [P]
    pair_j = K + torch.arange(M, device=A.device).repeat(K)
    P = K * M
    eye = torch.eye(n, dtype=torch.bool, device=A.device)
    both = eye[pair_i] | eye[pair_j]                                         # [P, n]
    # the 4 coalitions of a sample: T, T+i, T+j, T+ij, with signs +, -, -, +
    adds = torch.stack([torch.zeros_like(eye[pair_i]), eye[pair_i], eye[pair_j], both], 1)  # [P, 4, n]
    signs = A.new_tensor([1.0, -1.0, -1.0, 1.0])
    acc = A.new_zeros(B, P, dtype=torch.float64)
    acc_sq = A.new_zeros(B, P, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, B * P * 4 * K * M))
    for s0 in range(0, num_samples, step):
        s = min(step, num_samples - s0)
        q = torch.rand(B, P, s, 1, generator=gen, device=A.device, dtype=A.dtype)
        keep = torch.rand(B, P, s, n, generator=gen, device=A.device, dtype=A.dtype) < q
        keep = keep & players[:, None, None, :] & ~both[None, :, None, :]    # [B, P, s, n]
        coal = keep[:, :, :, None, :] | adds[None, :, None]                  # [B, P, s, 4, n]
        values = game(A, coal.reshape(B, -1, n), region_mask, phrase_mask).reshape(B, P, s, 4)
        delta = (values * signs).sum(-1).double()
        acc += delta.sum(-1)
        acc_sq += (delta * delta).sum(-1)
    mean = acc / num_samples
    var = ((acc_sq - num_samples * mean * mean) / max(num_samples - 1, 1)).clamp_min(0.0)
    stderr = (var / num_samples).sqrt() if num_samples > 1 else torch.zeros_like(var)
    pad = (region_mask[:, :, None] & phrase_mask[:, None, :]).reshape(B, P)
    value = (mean * pad).reshape(B, K, M).to(A.dtype)
    return value, (stderr * pad).reshape(B, K, M).to(A.dtype)
