"""Exact Shapley values and interactions from a table of all 2^n coalition values.

Every index this library computes is a linear functional of the game. For a *target* T (a set
of k players: one player for a Shapley value, a pair for SII, a coalition R for Eq. 7) the spec
draws c uniformly from {0..n-k}, then S uniformly among the size-c subsets of N\\T, so the
weight of one S is

    w_k(|S|) = 1 / ((n - k + 1) * C(n - k, |S|))

(k = 1: |S|!(n-|S|-1)!/n!, Eq. 3; k = 2: |S|!(n-|S|-2)!/(n-1)!, Eq. 9-10). A table row U
(bit p set <=> player p present) then splits into S = U \\ T and m = |U n T| present target
members, and contributes w_k(|S|) * g_k(m) * v(U) with

    Shapley     (k = 1):  g(1) = +1, g(0) = -1                         [v(S+i) - v(S)]
    interaction (Eq. 7):  g(k) = +1, g(1) = -1, g(0) = k - 1, else 0   [v(S+T) - sum_x v(S+x) + (k-1) v(S)]

(for k = 2 the interaction row is exactly Eq. 10's v(S+ij) - v(S+i) - v(S+j) + v(S)). Rows
with some but not all of T present for 1 < m < k get weight 0. Everything is index arithmetic
over the table: no Python loop over coalitions, only over tiles that bound memory.
"""
from math import comb

import torch

# int64 elements per tile of (targets x table rows): bounds temporary memory to ~100 MB.
_TILE_ELEMENTS = 2 ** 21


def all_coalitions(start: int, stop: int, n: int, device) -> torch.Tensor:
    """Table rows start..stop-1 as coalitions: bool[stop - start, n], player p <=> bit p."""
    rows = torch.arange(start, stop, dtype=torch.long, device=device)
    return ((rows[:, None] >> torch.arange(n, device=device)) & 1).bool()


def value_table(evaluate, n: int, max_batch: int, device) -> torch.Tensor:
    """v(U) for all 2^n coalitions U: float64[2^n], row U = coalition of U's set bits.

    ``evaluate(coalitions bool[C, n]) -> float64[C]``; it is called on chunks of at most
    ``max_batch`` rows so that at most ``max_batch`` coalitions exist at once.
    """
    size = 2 ** n
    table = torch.empty(size, dtype=torch.float64, device=device)
    for start in range(0, size, max_batch):
        stop = min(start + max_batch, size)
        table[start:stop] = evaluate(all_coalitions(start, stop, n, device))
    return table


def popcounts(n: int, device) -> torch.Tensor:
    """Number of set bits of 0..2^n - 1: LongTensor[2^n]."""
    rows = torch.arange(2 ** n, dtype=torch.long, device=device)
    count = torch.zeros_like(rows)
    for bit in range(n):
        count += (rows >> bit) & 1
    return count


def size_weights(n: int, device) -> torch.Tensor:
    """w_k(s) = 1 / ((n-k+1) C(n-k, s)) for k, s in 0..n (0 where s > n - k): float64[n+1, n+1]."""
    w = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for k in range(1, n + 1):
        for s in range(n - k + 1):
            w[k, s] = 1.0 / ((n - k + 1) * comb(n - k, s))
    return w.to(device)


def member_coefficients(n: int, shapley: bool, device) -> torch.Tensor:
    """g_k(m) of the module docstring for k, m in 0..n: float64[n+1, n+1]."""
    g = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for k in range(1, n + 1):
        if shapley:
            g[k, k] += 1.0
            g[k, 0] -= 1.0
        else:
            g[k, k] += 1.0
            g[k, 1] -= 1.0
            g[k, 0] += k - 1.0
    return g.to(device)


def exact_indices(table: torch.Tensor, n: int, targets: torch.Tensor, shapley: bool) -> torch.Tensor:
    """Exact index of every target from the value table.

    table float64[2^n] (``value_table``), targets bool[T, n] (the players of each target).
    shapley=True: targets are single players and the result is phi (Eq. 3); otherwise the
    result is the Eq. 7 interaction of each target (Eq. 10 for pairs). Returns float64[T].
    """
    device = table.device
    size = 2 ** n
    bits = 2 ** torch.arange(n, dtype=torch.long, device=device)
    target_bits = (targets.long() * bits).sum(1)  # [T]
    k = targets.sum(1).long()  # [T]
    pop = popcounts(n, device)
    weights = size_weights(n, device)
    coefs = member_coefficients(n, shapley, device)
    out = torch.zeros(targets.shape[0], dtype=torch.float64, device=device)
    block = min(size, _TILE_ELEMENTS)
    per_tile = max(1, _TILE_ELEMENTS // block)
    for start in range(0, size, block):
        rows = torch.arange(start, min(start + block, size), dtype=torch.long, device=device)
        values, row_pop = table[rows], pop[rows]
        for t0 in range(0, targets.shape[0], per_tile):
            tb, tk = target_bits[t0:t0 + per_tile, None], k[t0:t0 + per_tile, None]
            m = pop[rows[None, :] & tb]  # present members of the target, [t, rows]
            s = row_pop[None, :] - m  # |S| = present non-members
            out[t0:t0 + per_tile] += (weights[tk, s] * coefs[tk, m] * values).sum(1)
    return out
