"""Boundary checks shared by every public function: one clear error naming the argument."""
from typing import Optional, Sequence

import torch


def check_tensor(name: str, x, *, dims: Optional[int] = None, dtype_kind: Optional[str] = None):
    """Raise TypeError unless ``x`` is a tensor, ValueError on a wrong number of dims.

    dtype_kind: "float" (float16/bfloat16/float32/float64), "bool" or "int" (any integer dtype).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    if dtype_kind == "float" and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if dtype_kind == "bool" and x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {x.dtype}")
    if dtype_kind == "int" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if ``x`` holds NaN or inf (never let a NaN through silently)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {bad} values")
    return x


def check_shape(name: str, x: torch.Tensor, shape: Sequence[Optional[int]]) -> torch.Tensor:
    """Raise ValueError unless ``x.shape`` matches ``shape`` (None matches any size)."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    return x


def check_num_samples(num_samples, default: int = 500) -> int:
    """Resolve ``num_samples`` (None means ``default``); raise on non-positive or non-int."""
    if num_samples is None:
        return default
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return num_samples


def check_max_batch(max_batch, default: int = 4096) -> int:
    """Resolve ``max_batch`` (None means ``default``); raise on non-positive."""
    if max_batch is None:
        return default
    if isinstance(max_batch, bool) or not isinstance(max_batch, int):
        raise TypeError(f"max_batch must be an int, got {type(max_batch).__name__}")
    if max_batch <= 0:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    return max_batch


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 in, float64 out; float32 otherwise (api.md)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
