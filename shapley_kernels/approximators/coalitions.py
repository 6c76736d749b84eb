"""The one coalition sampler every budgeted Shapley estimator draws through.

All draws come from one ``torch.Generator`` on the device where the coalitions are built, so a
seed fixes the result. Coalitions are bool[m, n] (True = player present).

    permutations(m, n)           LongTensor[m, n]: m uniform random orders of the n players
    of_sizes(sizes[m], n)        bool[m, n]: row r uniform among the subsets of size sizes[r]
    shapley_kernel_mass(n)       float64[n + 1]: the Shapley kernel's mass per coalition size
    kernel_design(n, budget)     the border-trick design of KernelSHAP (``KernelDesign``)
"""
from itertools import combinations
from math import comb
from typing import NamedTuple

import torch


def permutations(m: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """m uniform random permutations of 0..n-1: LongTensor[m, n] (argsort of uniform keys)."""
    return torch.rand(m, n, generator=generator, device=device).argsort(1)


def of_sizes(sizes: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """bool[m, n]: row r a uniform random subset of size sizes[r] (LongTensor[m]) of the n
    players (the players of the sizes[r] smallest of n uniform keys)."""
    keys = torch.rand(sizes.shape[0], n, generator=generator, device=sizes.device)
    rank = keys.argsort(1).argsort(1)
    return rank < sizes[:, None]


def shapley_kernel_mass(n: int, device=None) -> torch.Tensor:
    """The Shapley kernel's probability of each coalition size: float64[n + 1], entry s =
    (1 / s + 1 / (n - s)) / (2 H_{n-1}) for 1 <= s <= n-1 (proportional to
    C(n, s) * (n - 1) / (C(n, s) s (n - s))), 0 for s = 0 and s = n (n >= 2)."""
    mass = torch.zeros(n + 1, dtype=torch.float64, device=device)
    sizes = torch.arange(1, n, dtype=torch.float64, device=device)
    mass[1:n] = (n - 1) / (sizes * (n - sizes))
    return mass / mass.sum()


class KernelDesign(NamedTuple):
    """Coalitions of sizes 1..n-1 for a Shapley-kernel regression, with their weights.

    coalitions: bool[m, n] (distinct rows; never the empty or the full coalition).
    weights:    float64[m], summing to 1: the kernel mass each row stands for.
    enumerated: sizes whose every coalition is in ``coalitions`` (the border trick).
    """

    coalitions: torch.Tensor
    weights: torch.Tensor
    enumerated: tuple


def _all_of_size(n: int, s: int, device) -> torch.Tensor:
    """Every coalition of size s: bool[C(n, s), n] (lexicographic)."""
    rows = torch.zeros(comb(n, s), n, dtype=torch.bool)
    if s > 0:
        rows.scatter_(1, torch.tensor(list(combinations(range(n), s))), True)
    return rows.to(device)


def _row_keys(rows: torch.Tensor) -> torch.Tensor:
    """One int64 per row of bool[m, n] (n <= 62): the row's bit pattern."""
    weights = 2 ** torch.arange(rows.shape[1], device=rows.device, dtype=torch.long)
    return (rows.long() * weights).sum(1)


def _sample_distinct(n: int, units: int, size_prob: torch.Tensor, generator, paired: bool) -> tuple:
    """``units`` distinct draws of S (|S| from size_prob float64[n + 1], S uniform within its
    size), each with its complement N \\ S when ``paired`` (size_prob then symmetric). Draws with
    replacement until ``units`` distinct units are seen (n <= 62; beyond, repeats are negligible
    and kept). Returns (coalitions bool[units or 2 units, n], draws float64[same]: how often
    each unit was drawn)."""
    device = size_prob.device
    found, counts, seen = [], [], {}
    for _ in range(64):  # each round draws the units still missing, twice over
        want = units - len(seen)
        if want <= 0:
            break
        sizes = torch.multinomial(size_prob, 2 * want, replacement=True, generator=generator)
        half = of_sizes(sizes, n, generator)
        if n > 62:
            found.append(half[:want])
            counts.extend([1.0] * want)
            seen.update({len(seen) + r: r for r in range(want)})
            continue
        canon = torch.minimum(_row_keys(half), _row_keys(~half)) if paired else _row_keys(half)
        for r, key in enumerate(canon.tolist()):
            if key in seen:
                counts[seen[key]] += 1.0
            elif len(seen) < units:
                seen[key] = len(counts)
                counts.append(1.0)
                found.append(half[r:r + 1])
    half = torch.cat(found) if found else torch.zeros(0, n, dtype=torch.bool, device=device)
    draws = torch.tensor(counts, dtype=torch.float64, device=device)
    return (torch.cat([half, ~half]), torch.cat([draws, draws])) if paired else (half, draws)


def kernel_design(n: int, budget: int, generator: torch.Generator, device, paired: bool = True) -> KernelDesign:
    """At most ``budget`` distinct coalitions of sizes 1..n-1 for KernelSHAP-type regressions (n >= 2).

    Border trick (as in SHAP's KernelExplainer): sizes are taken in pairs (s, n - s) from the
    ends inwards; a pair is enumerated when all its coalitions fit in what is left of the budget
    and its share of the remaining kernel mass would buy at least that many samples. Enumerated
    rows carry their exact kernel weight mass(s) / C(n, s). The rest of the budget is paired
    (complement) sampling over the remaining sizes (size ~ kernel mass, uniform within size),
    distinct pairs, each weighted by how often it was drawn, the sampled rows together carrying
    the remaining mass. ``paired=False``: single distinct draws instead of complement pairs.
    """
    mass = shapley_kernel_mass(n, device)
    left, rows, weights, enumerated = budget, [], [], []
    remaining = mass.clone()
    for s in range(1, n // 2 + 1):
        sizes = (s,) if s == n - s else (s, n - s)
        count = sum(comb(n, t) for t in sizes)
        share = float(sum(remaining[t] for t in sizes) / remaining.sum())
        if count > left or left * share < count * (1 - 1e-9):
            break
        for t in sizes:
            rows.append(_all_of_size(n, t, device))
            weights.append(torch.full((comb(n, t),), float(mass[t]) / comb(n, t), dtype=torch.float64, device=device))
            remaining[t] = 0.0
            enumerated.append(t)
        left -= count
    rest = float(remaining.sum())
    if rest > 1e-12 and left >= (2 if paired else 1):
        sampled, draws = _sample_distinct(n, left // 2 if paired else left, remaining / rest, generator, paired)
        rows.append(sampled)
        weights.append(draws / draws.sum() * rest)
    coalitions = torch.cat(rows) if rows else torch.zeros(0, n, dtype=torch.bool, device=device)
    weights = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64, device=device)
    return KernelDesign(coalitions, weights / weights.sum().clamp(min=1e-300), tuple(sorted(enumerated)))
