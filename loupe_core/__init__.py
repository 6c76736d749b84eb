"""loupe_core: LOUPE pretraining (NeurIPS 2022) on the shapley_kernels engine.

Public model API (``loupe_core.api``): ``list_models``, ``create_model``, ``load_checkpoint``,
``get_tokenizer`` and the ``Loupe`` model (``encode_image``, ``encode_text``, ``ground``,
``save_pretrained``). Imports go one way: loupe_core uses shapley_kernels, never the reverse.
"""
__version__ = "0.1.0"

from .api import Loupe, create_model, get_tokenizer, list_models, load_checkpoint

__all__ = ["Loupe", "create_model", "get_tokenizer", "list_models", "load_checkpoint"]
