"""Every Triton kernel of the package compiles to an sm_90 cubin with the real compiler, no GPU
needed, at the launch configurations (tests/_triton_compile_check.py). The interpreter, which the
other Triton tests run under without CUDA, does not check what only the compiler does."""
import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                 or importlib.util.find_spec("triton.backends.nvidia") is None,
                                 reason="triton or its NVIDIA backend is not installed")]


def test_kernels_compile_for_sm90():
    """3 alignment kernels x 2 configurations, the bitmask attention in float32, float16 and
    bfloat16, and the late-interaction forward (2 configurations) and its two backward kernels:
    one cubin each."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_triton_compile_check.py")
    result = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("bytes of cubin") == 13, result.stdout
    assert result.stdout.count("_bitmask_attention_kernel") == 3, result.stdout
