"""Diagnostics of estimators: the paper's instability (Section 4.5)."""
import torch

from .checks import check_finite, check_tensor


def instability(runs: torch.Tensor) -> float:
    """E_{u != v} |I_u - I_v| / E_u |I_u| over repeated runs of an estimator.

    runs: float[U, ...], U >= 2 runs of the same estimate (any trailing shape). The numerator
    is the mean over ordered pairs u != v of the mean over entries of |runs[u] - runs[v]|; the
    denominator is the mean of |runs| over all runs and entries. Computed in float64.
    """
    check_tensor("runs", runs, dtype_kind="float")
    if runs.dim() < 1 or runs.shape[0] < 2:
        raise ValueError(f"runs must hold at least 2 runs along dim 0, got shape {tuple(runs.shape)}")
    if runs[0].numel() == 0:
        raise ValueError(f"runs must have at least one entry per run, got shape {tuple(runs.shape)}")
    check_finite("runs", runs)
    flat = runs.reshape(runs.shape[0], -1).double()
    scale = flat.abs().mean()
    if float(scale) == 0.0:
        raise ValueError("runs are all zero: instability is undefined (mean |runs| = 0)")
    count = flat.shape[0]
    # one row at a time: memory O(U * entries); the u == v terms are zero
    spread = sum((flat[u] - flat).abs().mean(1).sum() for u in range(count)) / (count * (count - 1))
    return float(spread / scale)
