"""Exact Shapley values and interactions from a table of all 2^n coalition values.

Every index this library computes is a linear functional of the game. For a *target* T (a set
of k players: one player for a Shapley value, a pair for SII, a coalition R for Eq. 7) the spec
draws c uniformly from {0..n-k}, then S uniformly among the size-c subsets of N\\T, so the
weight of one S is

    w_k(|S|) = 1 / ((n - k + 1) * C(n - k, |S|))

(k = 1: |S|!(n-|S|-1)!/n!, Eq. 3; k = 2: |S|!(n-|S|-2)!/(n-1)!, Eq. 9-10), and the index is
sum_S w_k(|S|) * delta_T(S) with

    Shapley     (k = 1):  delta(S) = v(S + i) - v(S)
                (k >= 1): delta(S) = v(S + T) - v(S), phi([T]) of T as one player
    interaction (Eq. 7):  delta(S) = v(S + T) - sum_{x in T} v(S + x) + (k - 1) v(S)

(for k = 2 the interaction is exactly Eq. 10's v(S+ij) - v(S+i) - v(S+j) + v(S)).

The table float64[2^n] (row U: bit p set <=> player p present) is viewed, per target, as
[2^(n-1-p1), 2, 2^(p1-1-p2), 2, ..., 2, 2^pk] for the members p1 > ... > pk: each size-2
dimension is one member's bit, the blocks between them are the other players' bits in order.
Fixing the k member dimensions to one presence pattern leaves a strided view over all
S subset N\\T whose flattened index has |S| set bits: each pattern is one slice, weighted by
w_k at the popcount of the flat index.
No Python loop runs over coalitions; one runs over targets, each costing (k+2) 2^(n-k) reads.
"""
from math import comb

import torch


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


def subset_weights(n: int, k: int, device) -> torch.Tensor:
    """w_k(|S|) for every S subset of the n - k non-target players, in flat-index order
    (|S| = popcount of the index): float64[2^(n-k)]."""
    by_size = torch.tensor([1.0 / ((n - k + 1) * comb(n - k, s)) for s in range(n - k + 1)],
                           dtype=torch.float64, device=device)
    return by_size[popcounts(n - k, device)]


def _patterns(k: int, shapley: bool):
    """(presence of each of the k members, coefficient) pairs of delta_T, module docstring."""
    if shapley:  # the target as one player [T]: v(S + T) - v(S)
        return [((1,) * k, 1.0), ((0,) * k, -1.0)]
    singles = [(tuple(int(a == b) for b in range(k)), -1.0) for a in range(k)]
    return [((1,) * k, 1.0), ((0,) * k, k - 1.0)] + singles


def exact_indices(table: torch.Tensor, n: int, targets: torch.Tensor, shapley: bool) -> torch.Tensor:
    """Exact index of every target from the value table.

    table float64[2^n] (``value_table``), targets bool[T, n] (the players of each target).
    shapley=True: the result is phi (Eq. 3) of each target taken as one player [T] in the game
    over N\\T plus [T] (a single player's Shapley value when |T| = 1); otherwise the
    result is the Eq. 7 interaction of each target (Eq. 10 for pairs). Returns float64[T].
    """
    out = torch.zeros(targets.shape[0], dtype=torch.float64, device=table.device)
    weights = {}  # k -> subset_weights(n, k)
    for t, row in enumerate(targets.cpu().tolist()):
        members = [p for p in range(n - 1, -1, -1) if row[p]]  # descending
        k = len(members)
        if k not in weights:
            weights[k] = subset_weights(n, k, table.device)
        blocks = [2 ** (hi - 1 - lo) for hi, lo in zip([n] + members, members + [-1])]
        shape = [blocks[0]] + [size for block in blocks[1:] for size in (2, block)]
        cube = table.view(shape)  # member j's bit is dimension 2j + 1
        delta = torch.zeros(blocks, dtype=torch.float64, device=table.device)  # over S
        for presence, coef in _patterns(k, shapley):
            index = [slice(None)] * len(shape)
            index[1::2] = presence
            delta.add_(cube[tuple(index)], alpha=coef)  # reads the strided slice in place
        out[t] = torch.dot(delta.view(-1), weights[k])
    return out
