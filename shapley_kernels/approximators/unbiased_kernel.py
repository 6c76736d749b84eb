"""Unbiased KernelSHAP (Covert & Lee 2021) with paired sampling.

Under the Shapley kernel distribution p(z) over coalitions z of sizes 1..n-1 (size s with mass
``coalitions.shapley_kernel_mass``, uniform within the size), the KernelSHAP normal equations
have the known matrix A = E[z z'] = (1/2 - c) I + c 11' with c = E[s (s - 1)] / (n (n - 1)),
and b = E[z (v(z) - v0)] estimated by its sample mean. The Shapley values are exactly
phi = A^-1 (b - 1 nu) with nu fixing 1' phi = v1 - v0, a linear map M b plus a constant, so the
estimate is unbiased. Draws come in complement pairs (z, 1 - z); each pair is one i.i.d. unit
(b_j = (z (v(z) - v0) + (1 - z)(v(1 - z) - v0)) / 2), the standard error is the std of
M b_j over the units / sqrt(units). Cost: 2 + 2 per pair.
"""
import torch

from .coalitions import of_sizes, shapley_kernel_mass


def minimum_budget(n: int) -> int:
    """Two pairs (a standard error needs two units) plus v(empty), v(N)."""
    return 6


def _linear_map(n: int, mass: torch.Tensor):
    """(M float64[n, n], offset float64[n]) with phi = M b + offset * (v1 - v0)."""
    sizes = torch.arange(n + 1, dtype=torch.float64, device=mass.device)
    c = float((mass * sizes * (sizes - 1)).sum()) / (n * (n - 1))
    eye, ones = torch.eye(n, dtype=torch.float64, device=mass.device), torch.ones(n, dtype=torch.float64, device=mass.device)
    a_inv = torch.linalg.inv((0.5 - c) * eye + c * torch.outer(ones, ones))
    row = a_inv @ ones  # A^-1 1
    total = float(ones @ row)
    return a_inv - torch.outer(row, row) / total, row / total


def unbiased_kernel_shapley(evaluate, n: int, budget: int, generator: torch.Generator, device):
    """(value float64[n], stderr float64[n]) from floor((budget - 2) / 2) complement pairs (n >= 2)."""
    pairs = (budget - 2) // 2
    mass = shapley_kernel_mass(n, device)
    sizes = torch.multinomial(mass, pairs, replacement=True, generator=generator)
    half = of_sizes(sizes, n, generator)
    ends = torch.zeros(2, n, dtype=torch.bool, device=device)
    ends[1] = True
    values = evaluate(torch.cat([ends, half, ~half]))
    v0, v1 = values[0], values[1]
    gain, gain_complement = values[2:2 + pairs] - v0, values[2 + pairs:] - v0
    units = (half.double() * gain[:, None] + (~half).double() * gain_complement[:, None]) / 2  # b_j: [pairs, n]
    m, offset = _linear_map(n, mass)
    phi_units = units @ m.T + offset * (v1 - v0)
    return phi_units.mean(0), phi_units.std(0, correction=1) / pairs ** 0.5
