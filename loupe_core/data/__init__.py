"""Data for LOUPE: the embedded ShapesWorld dataset, real-data loaders, tokenizer, noun phrases.

Training batches follow docs/CONTRACTS.md s3 (``collate_batch``); evaluation files follow s4
(written by ``prepare_shapesworld``, read by ``loupe_core.data.eval_splits``).
"""
from .batch import collate_batch, make_sample
from .images import IMAGE_MEAN, IMAGE_STD, normalize_image
from .phrases import extract_noun_phrases
from .shapesworld import (ShapesWorldDataset, ShapesWorldPaths, SplitFiles, default_cache_dir,
                          prepare_shapesworld)
from .tokenizer import Tokenizer, phrase_token_mask

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "ShapesWorldDataset", "ShapesWorldPaths", "SplitFiles", "Tokenizer",
    "collate_batch", "default_cache_dir", "extract_noun_phrases", "make_sample", "normalize_image",
    "phrase_token_mask", "prepare_shapesworld",
]
