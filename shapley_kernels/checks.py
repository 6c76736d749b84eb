"""Argument checks of every public function, one clear error naming the argument (a public
module: the project's other layers check their arguments with it too).

Integer arguments (``num_samples``, ``max_batch``, ``seed``) follow one rule everywhere: any
integral value (Python int or NumPy integer, never bool) within the argument's range; anything
else is a TypeError, an integer out of range a ValueError, both naming the argument.
"""
import numbers
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


def check_has_values(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if ``x`` is on the meta device (shape and dtype only, no values to read)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: it holds no values to compute with "
                         f"(create it on 'cpu' or 'cuda')")
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


def check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """``value`` as a Python int if it is integral (int or NumPy integer, not bool) and in
    ``low..high``; TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = ("positive" if low == 1 else f"at least {low}") if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_count(name: str, value, low: int = 1) -> int:
    """``value`` as a Python int if it is integral (int or NumPy integer, not bool) and >= ``low``;
    otherwise one ValueError naming ``name`` (for counts and seeds given by users of the
    evaluation tasks, where the wrong type and the wrong value are the same mistake)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_num_samples(num_samples, default: int = 500) -> int:
    """Resolve ``num_samples`` (None means ``default``); raise on non-positive or non-integral."""
    return default if num_samples is None else check_int("num_samples", num_samples, 1)


def check_max_batch(max_batch, default: Optional[int] = None) -> Optional[int]:
    """Resolve ``max_batch`` (None means ``default``); raise on non-positive or non-integral."""
    return default if max_batch is None else check_int("max_batch", max_batch, 1)


SEED_MAX = 2 ** 64 - 1
"""Largest seed: ``torch.Generator.manual_seed`` takes a 64-bit unsigned value."""


def check_seed(seed) -> Optional[int]:
    """``seed`` as an int in 0..SEED_MAX, or None (then drawn from torch's global generator by the caller)."""
    return None if seed is None else check_int("seed", seed, 0, SEED_MAX)


def check_device(name: str, device) -> "torch.device":
    """``device`` (a str or torch.device) as a torch.device this install can compute on, else
    ValueError naming ``name``, the device and what this install supports."""
    supported = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name}={device!r} is not a device; this install supports {supported}") from exc
    if dev.type not in supported:
        why = "no CUDA device is available" if dev.type == "cuda" else f"{dev.type!r} devices cannot compute here"
        raise ValueError(f"{name}={device!r}: {why}; this install supports {supported}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={device!r}: there are {torch.cuda.device_count()} CUDA devices")
    return dev


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 in, float64 out; float32 otherwise (api.md)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
