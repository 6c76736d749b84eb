"""Per-sample dicts and their collation into the training batch of docs/CONTRACTS.md s3.

A sample is ``{"image": float[3, H, W] (normalised), "input_ids": long[L], "phrase_tokens":
bool[m, L], "caption": str, "key": str}`` with L >= 1 real tokens and m >= 0 phrases, each
covering at least one token.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .images import normalize_image
from .tokenizer import Tokenizer, phrase_token_mask
from ..errors import DataError


def make_sample(image: np.ndarray, caption: str, phrase_spans: Sequence[tuple[int, int]], key: str,
                tokenizer: Tokenizer) -> dict:
    """Tokenise ``caption`` and map its phrase character spans to tokens.

    image: uint8 ``[H, W, 3]``. Phrases cut off by the token limit are dropped. Raises
    ``DataError`` if the caption has no token (loaders count and skip such captions first).
    """
    ids, offsets = tokenizer.encode(caption)
    if not ids:
        raise DataError(f"caption: no tokens in {caption!r} (key {key!r})")
    phrase_tokens = phrase_token_mask(offsets, phrase_spans)
    return {
        "image": normalize_image(image),
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "phrase_tokens": phrase_tokens[phrase_tokens.any(1)],
        "caption": caption,
        "key": key,
    }


def collate_batch(samples: Sequence[dict], max_phrases: int = 8) -> dict:
    """Stack samples into the CONTRACTS s3 batch.

    Returns ``images`` float[B, 3, H, W], ``input_ids`` long[B, L] (pad 0), ``text_mask`` bool[B, L],
    ``phrase_tokens`` bool[B, M, L], ``phrase_mask`` bool[B, M] (M = the batch's largest phrase
    count, at most ``max_phrases``, at least 1; a sample's first phrases are kept), ``captions``,
    ``keys``. L is the longest caption in the batch.
    """
    if isinstance(max_phrases, bool) or not isinstance(max_phrases, int):
        raise TypeError(f"max_phrases must be an int, got {type(max_phrases).__name__}")
    if max_phrases < 1:
        raise ValueError(f"max_phrases must be >= 1, got {max_phrases}")
    if len(samples) == 0:
        raise ValueError("samples must hold at least one sample")
    b = len(samples)
    length = max(len(s["input_ids"]) for s in samples)
    m = max(1, min(max_phrases, max(len(s["phrase_tokens"]) for s in samples)))
    input_ids = torch.zeros(b, length, dtype=torch.long)
    text_mask = torch.zeros(b, length, dtype=torch.bool)
    phrase_tokens = torch.zeros(b, m, length, dtype=torch.bool)
    phrase_mask = torch.zeros(b, m, dtype=torch.bool)
    for i, s in enumerate(samples):
        n, k = len(s["input_ids"]), min(m, len(s["phrase_tokens"]))
        input_ids[i, :n] = s["input_ids"]
        text_mask[i, :n] = True
        phrase_tokens[i, :k, :n] = s["phrase_tokens"][:k]
        phrase_mask[i, :k] = True
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "input_ids": input_ids,
        "text_mask": text_mask,
        "phrase_tokens": phrase_tokens,
        "phrase_mask": phrase_mask,
        "captions": [s["caption"] for s in samples],
        "keys": [s["key"] for s in samples],
    }
