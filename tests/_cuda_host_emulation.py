"""The kernels of csrc/alignment_cuda.cu run on the CPU (tests/cuda_emulation/alignment_host_harness.cpp).

``build(directory)`` compiles the harness (g++, C++20) and returns an object with the methods of
the binding ``shapley_kernels._cuda`` (alignment_game, alignment_exact_direction,
alignment_sampling_sums, and its EXACT_LIMIT / SAMPLING_LIMIT) working on CPU tensors,
so ``shapley_kernels.alignment._cuda_backend`` can be driven end to end without a GPU.
"""
import ctypes
import os
import shutil
import subprocess

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "cuda_emulation", "alignment_host_harness.cpp")
KERNELS = os.path.join(ROOT, "csrc", "alignment_cuda.cu")


def compiler_missing():
    """Why the emulation cannot be built here (None if it can)."""
    if shutil.which("g++") is None:
        return "g++ not found"
    return None


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_contiguous() and t.device.type == "cpu"
    return ctypes.c_void_p(t.data_ptr())


class HostEmulatedExtension:
    """Drop-in for shapley_kernels._cuda on CPU tensors (same arguments and results as the binding)."""

    def __init__(self, library_path: str):
        self._lib = ctypes.CDLL(library_path)
        self.EXACT_LIMIT = self._lib.alignment_exact_max()      # the kernels' own limits, as the binding exports
        self.SAMPLING_LIMIT = self._lib.alignment_sampling_max()

    def _fn(self, name: str, A: torch.Tensor):
        return getattr(self._lib, f"emu_{name}_{'f64' if A.dtype == torch.float64 else 'f32'}")

    def alignment_game(self, A, coalitions, region_mask, phrase_mask):
        B, K, M = A.shape
        C = coalitions.shape[1]
        out = torch.empty(B, C, dtype=A.dtype)
        self._fn("game", A)(_ptr(A), _ptr(region_mask), _ptr(phrase_mask), _ptr(coalitions), _ptr(out), B, C, K, M)
        return out

    def alignment_exact_direction(self, A, rows, cols, coef, subsets_per_chunk):
        B, R, C = A.shape
        out = torch.zeros(B, -(-(1 << C) // subsets_per_chunk), R, C, dtype=A.dtype)
        self._fn("exact_direction", A)(_ptr(A), _ptr(rows), _ptr(cols), _ptr(coef), _ptr(out), B, R, C,
                                       ctypes.c_longlong(subsets_per_chunk))
        return out

    def alignment_sampling_sums(self, A, rows, cols, num_samples, key0, key1):
        B, R, C = A.shape
        total = torch.empty(B, R, C, dtype=torch.float64)
        total_sq = torch.empty_like(total)
        self._fn("sampling", A)(_ptr(A), _ptr(rows), _ptr(cols), _ptr(total), _ptr(total_sq), B, R, C,
                                ctypes.c_longlong(num_samples), ctypes.c_uint32(key0), ctypes.c_uint32(key1))
        return total, total_sq


def build(directory: str) -> HostEmulatedExtension:
    """Compile the harness with the kernel source into ``directory``; raise on a compile error."""
    library = os.path.join(str(directory), "libalignment_host_emulation.so")
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           "-Wno-unknown-pragmas", f'-DKERNEL_SOURCE="{KERNELS}"', HARNESS, "-o", library]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host emulation build failed:\n{' '.join(cmd)}\n{result.stderr}")
    return HostEmulatedExtension(library)
