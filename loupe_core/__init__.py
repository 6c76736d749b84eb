"""loupe_core: LOUPE pretraining (NeurIPS 2022) on the shapley_kernels engine.

Public model API (``loupe_core.api``): ``list_models``, ``create_model``, ``load_checkpoint``,
``get_tokenizer``, ``build_zero_shot_classifier`` and the ``Loupe`` model (``from_pretrained``,
``encode_image``, ``encode_text``, ``ground``, ``save_pretrained``). Imports go one way, down the layers of docs/ARCHITECTURE.md: loupe_core
uses shapley_kernels, never the reverse.
"""
__version__ = "0.1.0"

__all__ = ["Loupe", "build_zero_shot_classifier", "create_model", "get_tokenizer", "list_models", "load_checkpoint"]


def __getattr__(name):
    # Lazy (PEP 562): Python runs this file before any submodule, so an eager ``from .api import``
    # here would make ``import loupe_core.data`` (or losses, model, ...) load the API layer and,
    # through it, model, eval and train: every lower layer would import the top one.
    if name == "list_models":  # the config names alone: no need to load torch and the model stack
        from .config import list_configs

        return list_configs
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
