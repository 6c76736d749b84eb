"""Antithetic permutation sampling of Shapley values (Castro et al. 2009; reversed orders:
Mitchell et al. 2022).

A uniform random order pi gives every player's marginal contribution v(P_i + i) - v(P_i) (P_i:
the players before i), an unbiased term of phi_i; the n - 1 proper prefixes of pi are its only
new coalitions (v(empty) and v(N) are evaluated once for all orders), so one order costs n - 1
evaluations for n marginals. Orders come in antithetic pairs (pi, reversed pi): a player late
in one is early in the other, which cancels much of the size variance. The estimate is the mean
over the pairs (independent and identically distributed units), the standard error their
std / sqrt(pairs): unbiased, with a standard error. Cost: 2 + 2 (n - 1) per pair.
"""
import torch

from .coalitions import permutations


def pairs_within(n: int, budget: int) -> int:
    """Antithetic pairs a budget buys: floor((budget - 2) / (2 (n - 1)))."""
    return (budget - 2) // (2 * (n - 1))


def minimum_budget(n: int) -> int:
    """Two antithetic pairs (a standard error needs two units) plus v(empty), v(N)."""
    return 2 + 4 * (n - 1)


def permutation_shapley(evaluate, n: int, budget: int, generator: torch.Generator, device):
    """(value float64[n], stderr float64[n]) from ``pairs_within(n, budget)`` antithetic pairs
    (n >= 2). ``evaluate(bool[C, n]) -> float64[C]``."""
    pairs = pairs_within(n, budget)
    order = permutations(pairs, n, generator, device)
    order = torch.stack([order, order.flip(1)], 1).view(2 * pairs, n)  # [2 pairs, n]
    position = order.argsort(1)  # position[r, i]: where player i stands in order r
    steps = torch.arange(1, n, device=device)
    prefixes = position[:, None, :] < steps[None, :, None]  # [2 pairs, n - 1, n]
    ends = torch.zeros(2, n, dtype=torch.bool, device=device)
    ends[1] = True
    values = evaluate(torch.cat([ends, prefixes.reshape(-1, n)]))
    chain = torch.cat([values[0].expand(2 * pairs, 1), values[2:].view(2 * pairs, n - 1),
                       values[1].expand(2 * pairs, 1)], 1)  # v of the prefixes of length 0..n
    marginal = (chain[:, 1:] - chain[:, :-1]).gather(1, position)  # [2 pairs, n], player order
    units = marginal.view(pairs, 2, n).mean(1)
    return units.mean(0), units.std(0, correction=1) / pairs ** 0.5
