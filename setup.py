"""The C++/CUDA extension build of shapley_kernels + loupe_core (the metadata is in pyproject.toml).

The C++ extension ``shapley_kernels._C`` (csrc/*.cpp, pybind11, built with ninja through
torch.utils.cpp_extension) is built against the torch already installed: install with
``pip install --no-build-isolation -e .``. The CUDA extension ``shapley_kernels._cuda``
(csrc/*.cu plus csrc/*_cuda_binding.cpp) is added only where a CUDA toolkit and a CUDA build of
PyTorch are both present. A failed extension build is reported and skipped: the package still
installs and works with its torch (and Triton) backends.

No -std flag is passed: torch.utils.cpp_extension adds the C++ standard its own headers need
(C++20 from torch 2.13 on; torch 2.14's headers refuse C++17).

Switches: SHAPLEY_KERNELS_NO_EXT=1 skips every extension; SHAPLEY_KERNELS_NO_CUDA=1 skips CUDA;
TORCH_CUDA_ARCH_LIST as in PyTorch (default here: 8.0;9.0).
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("SHAPLEY_KERNELS_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing: pure-Python install
        print(f"[shapley_kernels] torch not importable ({exc}); building no extension", file=sys.stderr)
        return [], {}

    cxx = ["-O3", "-fopenmp"]
    cpp_sources = sorted(
        os.path.relpath(p, HERE)
        for p in glob.glob(os.path.join(HERE, "csrc", "*.cpp"))
        if not p.endswith("_cuda_binding.cpp")
    )
    exts = []
    if cpp_sources:
        exts.append(
            CppExtension("shapley_kernels._C", cpp_sources, extra_compile_args={"cxx": cxx},
                         extra_link_args=["-fopenmp"])
        )
    cu_sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.cu")))
    binding = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*_cuda_binding.cpp")))
    want_cuda = os.environ.get("SHAPLEY_KERNELS_NO_CUDA") != "1"
    if not (want_cuda and cu_sources and torch.version.cuda is not None and CUDA_HOME is not None):
        cuda_skipped = "needs a CUDA toolkit and a CUDA build of torch"
    elif not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h")):
        # torch takes CUDA_HOME from the nvcc on the PATH when it is unset: a wrapper script outside
        # the toolkit (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc) gives a folder without headers
        cuda_skipped = (f"no include/cuda_runtime_api.h under CUDA_HOME={CUDA_HOME}: set CUDA_HOME to the "
                        f"CUDA toolkit's folder, e.g. /usr/local/cuda")
    else:
        cuda_skipped = None
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(
            CUDAExtension(
                "shapley_kernels._cuda", binding + cu_sources,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
            )
        )
    if cuda_skipped:
        print(f"[shapley_kernels] CUDA extension skipped ({cuda_skipped})", file=sys.stderr)

    class TolerantBuildExt(BuildExtension):
        """Build each extension; on failure warn and go on (the torch backend still works)."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                print(f"[shapley_kernels] WARNING: building {ext.name} failed: {exc}\n"
                      f"[shapley_kernels] the package works without it; see available_backends()",
                      file=sys.stderr)

    return exts, {"build_ext": TolerantBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

# name, version, dependencies, extras, the `loupe` script and the packages: pyproject.toml
setup(ext_modules=ext_modules, cmdclass=cmdclass)
