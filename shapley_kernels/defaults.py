"""Process-wide defaults of the token-level towers, read when a tower is constructed (timm's
``layers/config`` style): each tower then keeps its own choice, and nothing at run time changes it.

  SHAPLEY_KERNELS_ATTENTION = auto | sdpa | triton   (``TransformerTower(attention=None)``)
  SHAPLEY_KERNELS_DROP_IMPL = pack | mask            (``TransformerTower(drop_impl=None)``)
"""
import os

from .checks import check_choice

DROP_IMPLS = ("pack", "mask")
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
