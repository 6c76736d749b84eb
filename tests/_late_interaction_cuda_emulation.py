"""The kernels of csrc/late_interaction_cuda.cu run on the CPU (tests/cuda_emulation/late_interaction_host_harness.cpp).

``build(directory)`` compiles the harness (g++, C++20) and returns an object with the methods of
the binding in ``shapley_kernels._cuda`` (late_interaction_forward, late_interaction_backward)
working on CPU tensors, so ``shapley_kernels.late_interaction._cuda_backend``'s kernels can be
driven end to end without a GPU.
"""
import ctypes
import os
import subprocess

import torch

from _cuda_host_emulation import ROOT, _ptr

HARNESS = os.path.join(ROOT, "tests", "cuda_emulation", "late_interaction_host_harness.cpp")
KERNELS = os.path.join(ROOT, "csrc", "late_interaction_cuda.cu")


class HostEmulatedLateInteraction:
    """Drop-in for the late-interaction methods of shapley_kernels._cuda on CPU tensors."""

    def __init__(self, library_path: str):
        self._lib = ctypes.CDLL(library_path)

    def _fn(self, name: str, x: torch.Tensor):
        return getattr(self._lib, f"emu_{name}_{'f64' if x.dtype == torch.float64 else 'f32'}")

    def late_interaction_forward(self, queries, query_mask, patches, write_best):
        (Bt, Q, D), (Bi, P, _) = queries.shape, patches.shape
        similarity = queries.new_empty(Bt, Bi)
        best = queries.new_empty(Bt if write_best else 0, Bi, Q)
        argmax = torch.empty(Bt, Bi, Q, dtype=torch.int32)
        self._fn("forward", queries)(_ptr(queries), _ptr(query_mask), _ptr(patches), _ptr(similarity),
                                     _ptr(best) if write_best else None, _ptr(argmax), ctypes.c_longlong(Bt),
                                     ctypes.c_longlong(Bi), Q, P, D)
        return similarity, best, argmax

    def late_interaction_backward(self, grad, weight, queries, patches, argmax):
        (Bt, Q, D), (Bi, P, _) = queries.shape, patches.shape
        grad_queries = torch.empty_like(queries)
        grad_patches = torch.zeros_like(patches)
        self._fn("backward", queries)(_ptr(grad), _ptr(weight), _ptr(queries), _ptr(patches), _ptr(argmax),
                                      _ptr(grad_queries), _ptr(grad_patches), ctypes.c_longlong(Bt),
                                      ctypes.c_longlong(Bi), Q, P, D)
        return grad_queries, grad_patches


def build(directory: str) -> HostEmulatedLateInteraction:
    """Compile the harness with the kernel source into ``directory``; raise on a compile error."""
    library = os.path.join(str(directory), "liblate_interaction_host_emulation.so")
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
           f'-DKERNEL_SOURCE="{KERNELS}"', HARNESS, "-o", library]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host emulation build failed:\n{' '.join(cmd)}\n{result.stderr}")
    return HostEmulatedLateInteraction(library)
