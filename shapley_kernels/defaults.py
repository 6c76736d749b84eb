"""Process-wide defaults of the token-level towers, read when a tower is constructed (timm's
``layers/config`` style): each tower then keeps its own choice, and nothing at run time changes it.

  SHAPLEY_KERNELS_ATTENTION = auto | sdpa | triton   (``TransformerTower(attention=None)``)
  SHAPLEY_KERNELS_DROP_IMPL = pack | mask            (``TransformerTower(drop_impl=None)``)

and the batch sizes a call with ``max_batch=None`` takes, by the device it computes on (issue 29
item 4; the knee measured by ``benchmarks/max_batch_knee.py``, benchmarks/RESULTS.md):

  generic estimators (``shapley_values`` & co.): MAX_BATCH_CPU = 512 coalitions per game call on
      the CPU, MAX_BATCH_GPU = 4096 on CUDA. On the CPU throughput is flat from ~128 to ~1024 rows
      for an expensive game and peaks at 512-1024 for a cheap one (per-call overhead); at 4096 the
      expensive game loses ~1.7x (its activations leave the cache).
  token engine (``dual_encoder_game``, ``region_interaction``): TOKENS_PER_CALL_CPU = 2^13 tokens
      per encoder call on the CPU (128 rows of a 64-patch ViT, at the knee of 64-128 rows),
      TOKENS_PER_CALL_GPU = 2^16 on CUDA (bounded by activation memory: 2^16 tokens of a ViT-S MLP
      are 400 MB in float32).
Batch sizes never change a result's draws (the coalition stream does not depend on them).
"""
import os

import torch

from .checks import check_choice

DROP_IMPLS = ("pack", "mask")
MAX_BATCH_CPU, MAX_BATCH_GPU = 512, 4096
TOKENS_PER_CALL_CPU, TOKENS_PER_CALL_GPU = 1 << 13, 1 << 16
ATTENTION_IMPLS = ("auto", "sdpa", "triton")


def default_attention() -> str:
    """The attention implementation a tower built with ``attention=None`` takes ("auto" unless the
    environment says otherwise)."""
    return check_choice("SHAPLEY_KERNELS_ATTENTION", os.environ.get("SHAPLEY_KERNELS_ATTENTION", "auto"),
                        ATTENTION_IMPLS)


def default_drop_impl() -> str:
    """The drop implementation a tower built with ``drop_impl=None`` takes ("pack" unless the
    environment says otherwise)."""
    return check_choice("SHAPLEY_KERNELS_DROP_IMPL", os.environ.get("SHAPLEY_KERNELS_DROP_IMPL", "pack"),
                        DROP_IMPLS)


def default_max_batch(device: torch.device) -> int:
    """Coalitions per game call of a generic estimator with ``max_batch=None`` on ``device``."""
    return MAX_BATCH_GPU if device.type == "cuda" else MAX_BATCH_CPU


def default_tokens_per_call(device: torch.device) -> int:
    """Tokens per encoder call of the token engine with ``max_batch=None`` on ``device``."""
    return TOKENS_PER_CALL_GPU if device.type == "cuda" else TOKENS_PER_CALL_CPU
