"""Compiled-extension loading and the backend registry.

Compiled modules load lazily and a failed load is recorded, never raised at import time
(xformers / apex style): the torch backend always works, and ``available_backends()`` and
``backend_status()`` say what else this install can run and why not.

Environment switches (documented in README "Switches"):
  SHAPLEY_KERNELS_DISABLE=cpp,triton,cuda   hide backends (for testing fallbacks).
"""
import importlib
import os
from typing import Dict, List, Optional

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")

# The compiled kernels' limits, stated once: each extension exports its own (``m.attr`` of the
# value its kernels are built with) and ``load_extension`` refuses a build whose limits differ.
EXACT_LIMIT = 20       # present regions and phrases per side of the exact alignment paths
SAMPLING_LIMIT = 64    # present players per side of the CUDA sampling kernel (64-bit masks)
EXTENSION_LIMITS = {"_C": {"EXACT_LIMIT": EXACT_LIMIT},
                    "_cuda": {"EXACT_LIMIT": EXACT_LIMIT, "SAMPLING_LIMIT": SAMPLING_LIMIT}}

_load_errors: Dict[str, str] = {}
_modules: Dict[str, object] = {}


def _disabled() -> set:
    return {b.strip() for b in os.environ.get("SHAPLEY_KERNELS_DISABLE", "").split(",") if b.strip()}


def load_extension(name: str) -> Optional[object]:
    """Import the compiled module ``shapley_kernels.<name>`` once; None (error recorded) on failure,
    also where the module's exported limits differ from ``EXTENSION_LIMITS`` (a stale build)."""
    if name in _modules:
        return _modules[name]
    try:
        mod = importlib.import_module(f"shapley_kernels.{name}")
    except Exception as exc:  # ImportError, undefined symbols, ABI mismatch ...
        _load_errors[name] = f"{type(exc).__name__}: {exc}"
        mod = None
    if mod is not None:
        wrong = {key: getattr(mod, key, None) for key, want in EXTENSION_LIMITS.get(name, {}).items()
                 if getattr(mod, key, None) != want}
        if wrong:
            _load_errors[name] = (f"built with limits {wrong}, the Python side expects "
                                  f"{ {k: EXTENSION_LIMITS[name][k] for k in wrong} }: rebuild it (pip install -e .)")
            mod = None
    _modules[name] = mod
    return mod


def _triton_interprets() -> bool:
    """Whether Triton runs its kernels in the interpreter, on the CPU (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_usable() -> Optional[str]:
    """None if Triton kernels can run here (a CUDA GPU, or TRITON_INTERPRET=1), else why not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton not importable: {exc}"
    if torch.cuda.is_available() or _triton_interprets():
        return None
    return "no CUDA device and TRITON_INTERPRET is not 1"


def backend_status() -> Dict[str, str]:
    """Every backend with "available" or the reason it is not."""
    status = {"torch": "available"}
    disabled = _disabled()
    ext = load_extension("_C")
    status["cpp"] = "available" if ext is not None else f"extension not built: {_load_errors.get('_C')}"
    reason = _triton_usable()
    status["triton"] = "available" if reason is None else reason
    if not torch.cuda.is_available():
        status["cuda"] = "no CUDA device"
    else:
        cuda_ext = load_extension("_cuda")
        status["cuda"] = "available" if cuda_ext is not None else f"extension not built: {_load_errors.get('_cuda')}"
    for name in disabled:
        if name in status and name != "torch":
            status[name] = "disabled by SHAPLEY_KERNELS_DISABLE"
    return status


def missing_kernel(op: str, device: torch.device) -> RuntimeError:
    """The error a ``shapley_kernels::op`` custom op raises on a device no backend registered for."""
    return RuntimeError(f"shapley_kernels::{op} has no kernel for device {device}; see "
                        f"shapley_kernels.backend_status()")


def available_backends() -> List[str]:
    """Backends this install can run now, in order of preference on a GPU: cuda, triton, cpp, torch."""
    status = backend_status()
    return [b for b in BACKENDS if status[b] == "available"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` ("auto" or a name) to a runnable backend for tensors on ``device``.

    "auto": cuda, then triton, on a CUDA device; cpp on the CPU; torch as the fallback.
    An explicit backend that is unknown or unavailable raises ValueError listing what is available,
    as does one that cannot take tensors on ``device`` (cuda and, outside Triton's interpreter,
    triton need a CUDA device; cpp the CPU).
    """
    avail = available_backends()
    if backend == "auto":
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpp", "torch")
        return next(b for b in order if b in avail)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    if backend not in avail:
        raise ValueError(
            f"backend {backend!r} is not available in this install ({backend_status()[backend]}); "
            f"available: {avail}"
        )
    if backend == "cuda" and device.type != "cuda":
        raise ValueError("backend 'cuda' needs tensors on a CUDA device")
    if backend == "cpp" and device.type != "cpu":
        raise ValueError("backend 'cpp' needs tensors on the CPU")
    if backend == "triton" and device.type != "cuda" and not _triton_interprets():
        raise ValueError("backend 'triton' needs tensors on a CUDA device (on the CPU only under TRITON_INTERPRET=1)")
    return backend
