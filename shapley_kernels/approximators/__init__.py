"""Budgeted Shapley-value estimators, one module per family, all drawing through
``coalitions`` (the one coalition sampler).

Each estimator is ``fn(evaluate, n, budget, generator, device) -> (value float64[n], stderr
float64[n])``: it builds every coalition it needs as bool[C, n] on ``device``, hands them to
``evaluate`` (which splits them into game calls of at most max_batch rows and counts them),
and never spends more than ``budget`` evaluations (n >= 2; n = 1 is exact at 2).

    name              family                                   unbiased  stderr   minimum budget
    "permutation"     antithetic permutation sampling          yes       yes      2 + 4 (n - 1)
    "kernel"          KernelSHAP, paired, border trick         no        NaN      2 n + 2
    "unbiased_kernel" unbiased KernelSHAP, paired              yes       yes      6
    "kadd2"           kADD-SHAP, k = 2, border trick, unpaired no        NaN      2 C(n,1..2) + 2
    "kadd3"           kADD-SHAP, k = 3, as "kernel" (paired)   no        NaN      2 C(n,1..3) + 2
    "svarm"           stratified SVARM                         no*       approx.  2n + 4
(* unbiased once every stratum is reached.) "kadd2" draws single coalitions: with complement
pairs its Shapley values are exactly KernelSHAP's (a paired design cannot tell a 2-additive fit
from a 1-additive one in the Shapley values), so it would add nothing.
"""
from functools import partial
from math import comb
from typing import Callable, NamedTuple

from . import permutation, regression, svarm, unbiased_kernel


class Approximator(NamedTuple):
    """One budgeted estimator: its function, its minimum budget at n players, and whether it is unbiased."""

    estimate: Callable
    minimum_budget: Callable[[int], int]
    unbiased: bool


APPROXIMATORS = {
    "permutation": Approximator(permutation.permutation_shapley, permutation.minimum_budget, True),
    "kernel": Approximator(partial(regression.regression_shapley, k=1),
                           partial(regression.minimum_budget, k=1), False),
    "unbiased_kernel": Approximator(unbiased_kernel.unbiased_kernel_shapley, unbiased_kernel.minimum_budget, True),
    "kadd2": Approximator(partial(regression.regression_shapley, k=2, paired=False),
                          partial(regression.minimum_budget, k=2), False),
    "kadd3": Approximator(partial(regression.regression_shapley, k=3), partial(regression.minimum_budget, k=3), False),
    "svarm": Approximator(svarm.svarm_shapley, svarm.minimum_budget, False),
}


KADD3_MAX_PLAYERS = 20
"""Largest n "auto" fits a 3-additive game for: C(20, 1..3) = 1,350 coefficients (a 1,351-row
KKT solve, ~1.5 s on one CPU thread at B = 4096); beyond, the cubic growth outweighs the gain."""


def choose_estimator(n: int, budget: int) -> str:
    """What ``method="auto"`` samples with when 2^n does not fit the budget (issue 29 tables in
    benchmarks/RESULTS.md): kADD-SHAP with k = 3 ("kadd3", paired) wherever its design fits
    (budget >= 2 (C(n,1) + C(n,2) + C(n,3)) + 2) and n <= KADD3_MAX_PLAYERS; else KernelSHAP
    ("kernel": paired, border trick) where it fits (budget >= 2n + 2), else unbiased KernelSHAP
    (any budget >= 6). Below 6 nothing fits: the caller's budget check names the minimum."""
    if n <= KADD3_MAX_PLAYERS and budget >= APPROXIMATORS["kadd3"].minimum_budget(n):
        return "kadd3"
    if budget >= APPROXIMATORS["kernel"].minimum_budget(n):
        return "kernel"
    return "unbiased_kernel"
