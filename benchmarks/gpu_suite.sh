#!/usr/bin/env bash
# One prepared GPU check (issue 13, item 5; issue 30 added its 60 s step): at most 9 minutes on a lent CUDA machine.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR            (from the repository root)
#
# Works from a plain checkout or after `pip install --no-deps --no-build-isolation -e .`
# (it runs with the repository root on PYTHONPATH either way). Steps, each under its own
# time limit (seconds): the GPU and Triton tests `pytest -m "gpu or triton"`, on CUDA (150),
# benchmarks/gpu_alignment_bench.py --quick (120), benchmarks/gpu_token_bench.py (90),
# benchmarks/late_interaction_scaling.py fine --device cuda (60, issue 30: B = 512 and 4096),
# benchmarks/estimator_bench.py on CUDA (90). Writes OUT_DIR/gpu_suite.log (every step's
# output) and OUT_DIR/gpu_suite.json (per step: command, exit status, seconds; the estimator
# benchmark's own JSON under "estimator").
# A failing step does not stop the others; the script exits non-zero if any step failed.
set -u
OUT="${1:?usage: gpu_suite.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
STEPS="$OUT/steps.tsv"
: > "$LOG"; : > "$STEPS"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# the JIT build of gpu_alignment_bench.py needs the toolkit's headers; torch's guess from a
# wrapper nvcc outside the toolkit has none (setup.py says so at install)
if [ -z "${CUDA_HOME:-}" ] && [ -e /usr/local/cuda/include/cuda_runtime_api.h ]; then
  export CUDA_HOME=/usr/local/cuda
fi

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo "=== $name: $* (limit ${limit}s) ===" >> "$LOG"
  local start rc
  start=$EPOCHREALTIME
  timeout "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$start" "$EPOCHREALTIME" "$*" >> "$STEPS"
  echo "=== $name: exit $rc ===" >> "$LOG"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >> "$LOG" 2>&1
"$PY" -c "import triton, shapley_kernels as sk; print('triton', triton.__version__, 'CUDA_HOME', '${CUDA_HOME:-unset}'); print(sk.backend_status())" >> "$LOG" 2>&1
step gpu_tests 150 "$PY" -m pytest -q -m "gpu or triton" tests
step alignment_bench 120 "$PY" benchmarks/gpu_alignment_bench.py --quick
step token_bench 90 "$PY" benchmarks/gpu_token_bench.py --repeats 5
step late_interaction_bench 60 "$PY" benchmarks/late_interaction_scaling.py fine --device cuda --sizes 512,4096 --paths einsum,op,op-cuda,op-torch --repeats 3
step estimator_bench 90 "$PY" benchmarks/estimator_bench.py --device cuda --runs 20 --json "$OUT/estimator.json"
"$PY" benchmarks/estimator_bench.py --collect "$STEPS" "$OUT/estimator.json" "$OUT/gpu_suite.json" >> "$LOG" 2>&1
! cut -f2 "$STEPS" | grep -qv '^0$'
