"""Data for LOUPE: the embedded ShapesWorld dataset, real-data loaders, tokenizer, noun phrases.

Training batches follow docs/CONTRACTS.md s3 (``collate_batch``); evaluation files follow s4
(written by ``prepare_shapesworld``, read by ``loupe_core.data.eval_splits``).
"""
from .batch import collate_batch, make_sample
from .csv_loader import make_csv_loader
from .eval_splits import (ClassificationSplit, DetectionSplit, GroundingSplit, RetrievalSplit,
                          load_classification_split, load_detection_split, load_grounding_split,
                          load_retrieval_split)
from .images import IMAGE_MEAN, IMAGE_STD, normalize_image
from .phrases import extract_noun_phrases
from .shapesworld import (ShapesWorldDataset, ShapesWorldPaths, SplitFiles, default_cache_dir,
                          prepare_shapesworld)
from .shards import add_phrases_to_shards, write_shapesworld_shards
from .stats import CountingLoader, DataStats
from .tokenizer import Tokenizer, phrase_token_mask
from .webdataset_loader import make_webdataset_loader, webdataset_pipeline, webdataset_samples

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "ClassificationSplit", "CountingLoader", "DataStats", "DetectionSplit",
    "GroundingSplit", "RetrievalSplit", "ShapesWorldDataset", "ShapesWorldPaths", "SplitFiles", "Tokenizer",
    "add_phrases_to_shards", "collate_batch", "default_cache_dir", "extract_noun_phrases",
    "load_classification_split", "load_detection_split", "load_grounding_split", "load_retrieval_split",
    "make_csv_loader", "make_sample", "make_webdataset_loader", "normalize_image", "phrase_token_mask",
    "prepare_shapesworld", "webdataset_pipeline", "webdataset_samples", "write_shapesworld_shards",
]
