#!/usr/bin/env bash
# The CUDA extension's build against a CUDA build of torch, without a GPU (called by .ci/run when
# nvcc is on the PATH): the binding (csrc/*_cuda_binding.cpp, torch's CUDA headers) is compiled
# nowhere else off a GPU machine. Builds with setup.py into WORK_DIR (not in place, so the CPU
# install's extensions are untouched), imports shapley_kernels._cuda without a device and checks
# its exports, then removes the multi-GB venv. No CUDA build of torch installable: a warning.
#
#   bash .ci/cuda_build.sh WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:?usage: cuda_build.sh WORK_DIR}"
venv="$work/cuda_venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
# torch 2.14.1 is the CUDA 13.0 build (a wheel on the CI machines' disk; nvcc there is 13.0)
if ! pip install -q torch==2.14.1 numpy pybind11 ninja setuptools wheel \
   || ! python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  echo "WARNING: no CUDA build of torch could be installed: the CUDA extension build is not checked"
  deactivate; rm -rf "$venv"; exit 0
fi
if [ -z "${CUDA_HOME:-}" ] && [ -e /usr/local/cuda/include/cuda_runtime_api.h ]; then
  export CUDA_HOME=/usr/local/cuda  # torch's guess from a wrapper nvcc has no headers (setup.py)
fi
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
MAX_JOBS=2 python setup.py -q build_ext --build-lib "$work/cuda_lib" --build-temp "$work/cuda_tmp"
python - "$work/cuda_lib" <<'PY'
import glob, importlib.machinery, importlib.util, sys
import torch  # noqa: F401  (libtorch first)
paths = glob.glob(f"{sys.argv[1]}/shapley_kernels/_cuda*.so")
if not paths:
    sys.exit("shapley_kernels._cuda was not built (see the build output above)")
loader = importlib.machinery.ExtensionFileLoader("_cuda", paths[0])
module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_cuda", paths[0], loader=loader))
loader.exec_module(module)
ops = ("alignment_game", "alignment_exact_direction", "alignment_sampling_sums")
missing = [name for name in ops + ("EXACT_LIMIT", "SAMPLING_LIMIT") if not hasattr(module, name)]
if missing:
    sys.exit(f"shapley_kernels._cuda lacks {missing}")
print(f"shapley_kernels._cuda built and imported: {', '.join(ops)}; EXACT_LIMIT {module.EXACT_LIMIT}, "
      f"SAMPLING_LIMIT {module.SAMPLING_LIMIT}")
PY
deactivate
rm -rf "$venv" "$work/cuda_tmp" "$work/cuda_lib"
