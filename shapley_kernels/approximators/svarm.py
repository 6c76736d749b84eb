"""Stratified SVARM (Kolpaczki et al. 2024): every evaluation updates every player.

phi_i = (1 / n) sum_{l=0}^{n-1} (mean_{|S| = l, i not in S} v(S + i) - mean_{|S| = l, i not in S} v(S)):
a "plus" and a "minus" stratum per player and size l. The coalitions of sizes 0, 1, n-1 and n
(2n + 2 evaluations) fill the strata plus l in {0, n-2, n-1} and minus l in {0, 1, n-1} exactly;
the rest of the budget draws coalitions A of sizes 2..n-2 (size with probability proportional to
1 / min(s, n - s), uniform within the size), and each drawn v(A) joins the plus stratum
(i, |A| - 1) of every member i and the minus stratum (i, |A|) of every other player, each a
uniform draw from that stratum. A stratum mean is its sample mean; a stratum no draw reached
takes the pooled mean of its size and sign over the players (a small bias, only at budgets
too small to reach every stratum). Standard error: the square root of
(1 / n^2) sum over the sampled strata of (within-stratum variance / draws), the variance
pooled over the players of a size and sign: approximate (the draw counts are random).
"""
import torch

from .coalitions import of_sizes


def minimum_budget(n: int) -> int:
    """The exact border (2n + 2) plus two draws."""
    return 2 * n + 4


def _border(n: int, device) -> torch.Tensor:
    """Coalitions of sizes 0, n, 1 (player i at row 2 + i), n - 1 (i absent at row 2 + n + i): bool[2n + 2, n]."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    ends = torch.zeros(2, n, dtype=torch.bool, device=device)
    ends[1] = True
    return torch.cat([ends, eye, ~eye])


def _stratum_means(sums, squares, counts):
    """Per-stratum means and variances of the mean, float64[n, L] each, from sums, squared sums
    and draw counts [n, L]; unreached strata take the pooled mean over the players of their
    size (column), variances pooled per column."""
    total, count = sums.sum(0), counts.sum(0)
    pooled = total / count.clamp(min=1)
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), pooled)
    pooled_var = ((squares.sum(0) - total ** 2 / count.clamp(min=1)) / (count - 1).clamp(min=1)).clamp(min=0)
    var_of_mean = torch.where(counts > 0, pooled_var / counts.clamp(min=1), pooled_var)
    return mean, var_of_mean


def svarm_shapley(evaluate, n: int, budget: int, generator: torch.Generator, device):
    """(value float64[n], stderr float64[n]) within ``budget`` evaluations (n >= 4; smaller n
    has no size 2..n-2 to sample: exact from the border)."""
    border = _border(n, device)
    draws = budget - border.shape[0] if n >= 4 else 0
    if draws > 0:
        sizes = torch.arange(2, n - 1, device=device)
        prob = 1.0 / torch.minimum(sizes, n - sizes).double()
        picked = sizes[torch.multinomial(prob / prob.sum(), draws, replacement=True, generator=generator)]
        sampled = of_sizes(picked, n, generator)
    else:
        sampled = torch.zeros(0, n, dtype=torch.bool, device=device)
    values = evaluate(torch.cat([border, sampled]))
    v0, v1, single, all_but = values[0], values[1], values[2:2 + n], values[2 + n:2 + 2 * n]
    # strata l = 0..n-1, plus (v(S + i)) and minus (v(S)); columns of sampled sizes summed from the draws
    plus_sum = torch.zeros(n, n, dtype=torch.float64, device=device)
    minus_sum, plus_sq, minus_sq, plus_cnt, minus_cnt = (torch.zeros_like(plus_sum) for _ in range(5))
    if sampled.shape[0]:
        v = values[2 + 2 * n:]
        z = sampled.double()
        size = sampled.sum(1)
        plus_col = torch.nn.functional.one_hot(size - 1, n).double()  # [draws, L]
        minus_col = torch.nn.functional.one_hot(size, n).double()
        plus_sum, plus_sq, plus_cnt = ((z * v[:, None] ** p).T @ plus_col for p in (1, 2, 0))
        minus_sum, minus_sq, minus_cnt = (((1 - z) * v[:, None] ** p).T @ minus_col for p in (1, 2, 0))
    plus_mean, plus_var = _stratum_means(plus_sum, plus_sq, plus_cnt)
    minus_mean, minus_var = _stratum_means(minus_sum, minus_sq, minus_cnt)
    exact_plus = {0: single, n - 1: v1.expand(n)}
    exact_minus = {0: v0.expand(n), n - 1: all_but}
    if n >= 2:
        exact_plus[n - 2] = (all_but.sum() - all_but) / (n - 1)  # v(N \ j), j != i
        exact_minus[1] = (single.sum() - single) / (n - 1)  # v({j}), j != i
    for col, known in exact_plus.items():
        plus_mean[:, col], plus_var[:, col] = known, 0.0
    for col, known in exact_minus.items():
        minus_mean[:, col], minus_var[:, col] = known, 0.0
    value = (plus_mean - minus_mean).sum(1) / n
    stderr = (plus_var + minus_var).sum(1).sqrt() / n
    return value, stderr
