"""KernelSHAP and kADD-SHAP: Shapley values from a Shapley-kernel weighted regression.

With v0 = v(empty), v1 = v(N) and coalitions S_r of sizes 1..n-1 weighted by the Shapley kernel
(``coalitions.kernel_design``: border trick plus paired sampling), fit a k-additive game

    v(S) - v0 ~ sum_{T subset S, 1 <= |T| <= k} beta_T,   subject to sum_T beta_T = v1 - v0,

by weighted least squares (the constraint makes the fit exact on the full coalition), and read
the Shapley values off its Moebius coefficients: phi_i = sum_{T containing i} beta_T / |T|.
k = 1 is KernelSHAP (Lundberg & Lee 2017; beta_i = phi_i), k = 2, 3 kADD-SHAP (Pelegrina et
al. 2023). With complement pairs the k = 2 fit gives exactly KernelSHAP's Shapley values (found
here numerically, to 1e-15), so "kadd2" samples single coalitions. The fit is exact for a k-additive game once the design spans it, and with every
coalition enumerated KernelSHAP gives the exact Shapley values. Biased at a finite budget (a
ratio of estimates): no standard error is defined, ``stderr`` is NaN.
"""
from itertools import combinations
from math import comb

import torch

from .coalitions import kernel_design


def parameters(n: int, k: int) -> int:
    """Moebius coefficients of a k-additive game on n players: sum_{t=1..k} C(n, t)."""
    return sum(comb(n, t) for t in range(1, min(k, n) + 1))


def minimum_budget(n: int, k: int) -> int:
    """v(empty), v(N) and a complement pair per coefficient: a pair (S, N \\ S) adds one equation
    to a 1-additive fit given the constraint, so 2 rows per coefficient is the smallest design
    that can identify every coefficient."""
    return 2 * parameters(n, k) + 2


def moebius_members(n: int, k: int, device) -> torch.Tensor:
    """The coefficients' player sets: bool[P, n], all T with 1 <= |T| <= k, by size then lexicographic."""
    rows = []
    for t in range(1, min(k, n) + 1):
        members = torch.tensor(list(combinations(range(n), t)), device=device)
        rows.append(torch.zeros(members.shape[0], n, dtype=torch.bool, device=device).scatter_(1, members, True))
    return torch.cat(rows)


def fit_shapley(coalitions: torch.Tensor, weights: torch.Tensor, values: torch.Tensor, v0: float,
                v1: float, k: int) -> torch.Tensor:
    """Shapley values float64[n] of the constrained weighted least-squares k-additive fit
    (module docstring) of values float64[m] at coalitions bool[m, n] with weights float64[m].

    Solved through the KKT system [[X'WX, 1], [1', 0]] [beta; lam] = [X'W(y - v0); v1 - v0] by
    LU, or by least squares (the minimum-norm fit) where the design does not identify every
    coefficient.
    """
    n = coalitions.shape[1]
    members = moebius_members(n, k, coalitions.device)  # [P, n]
    sizes = members.sum(1).double()
    x = (coalitions.double() @ members.double().T == sizes).double()  # 1[T subset S]: [m, P]
    xw = x * weights[:, None]
    p = members.shape[0]
    kkt = torch.zeros(p + 1, p + 1, dtype=torch.float64)
    kkt[:p, :p] = (xw.T @ x).cpu()
    kkt[:p, p] = kkt[p, :p] = 1.0
    rhs = torch.zeros(p + 1, dtype=torch.float64)
    rhs[:p] = (xw.T @ (values - v0)).cpu()
    rhs[p] = v1 - v0
    scale = float(kkt[:p, :p].diagonal().mean().clamp(min=1e-300))
    kkt[:p, :p] /= scale  # condition the blocks alike; beta is unchanged, lam rescaled
    rhs[:p] /= scale
    solution, info = torch.linalg.solve_ex(kkt, rhs[:, None])
    if int(info) != 0 or not bool(torch.isfinite(solution).all()):  # singular: the minimum-norm fit
        solution = torch.linalg.lstsq(kkt, rhs[:, None], driver="gelsd").solution
    beta = solution[:p, 0].to(coalitions.device)
    return (members.double() * (beta / sizes)[:, None]).sum(0)


def regression_shapley(evaluate, n: int, budget: int, generator: torch.Generator, device, k: int,
                       paired: bool = True):
    """KernelSHAP (k = 1) or kADD-SHAP (k = 2, 3) within ``budget`` evaluations:
    (value float64[n], stderr float64[n] of NaN). ``evaluate(bool[C, n]) -> float64[C]``;
    ``paired``: complement pairs in the sampled part of the design."""
    ends = torch.zeros(2, n, dtype=torch.bool, device=device)
    ends[1] = True
    design = kernel_design(n, budget - 2, generator, device, paired)
    values = evaluate(torch.cat([ends, design.coalitions]))
    v0, v1 = float(values[0]), float(values[1])
    value = fit_shapley(design.coalitions, design.weights, values[2:], v0, v1, k)
    return value, torch.full_like(value, float("nan"))
