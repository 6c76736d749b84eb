"""Batched, gradient-free encoding shared by the evaluators (CONTRACTS s5 model methods).

Every function runs the model under ``torch.inference_mode`` in eval mode (its train flag is
restored afterwards), in batches of ``batch_size`` with progress reports
(``loupe_core.progress``), and returns L2-normalised embeddings on the CPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch

from loupe_core.data.images import normalize_image
from loupe_core.data.phrases import extract_noun_phrases
from loupe_core.data.tokenizer import phrase_token_mask
from loupe_core.progress import progress as progress_report


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


@contextlib.contextmanager
def evaluating(model):
    """``model.eval()`` under ``torch.inference_mode``; the model's train flag is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def batches(n: int, batch_size: int, *, progress: Optional[bool], desc: str) -> Iterator[slice]:
    """Slices of ``range(n)`` in steps of ``batch_size``, with progress reports unless ``progress``
    is False (``loupe_core.progress``: a bar on a terminal, timed lines in a log)."""
    check_batch_size(batch_size)
    starts = range(0, n, batch_size)
    for start in progress_report(starts, desc=desc, enabled=progress is not False, leave=False):
        yield slice(start, min(start + batch_size, n))


def tokenize(tokenizer, texts: Sequence[str], max_tokens: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (input_ids long[T, L] padded with 0, text_mask bool[T, L]); 1 <= L <= max_tokens.

    Texts longer than ``max_tokens`` (the text tower's limit) are cut, as the tokenizer cuts at
    its own limit. A text without any token keeps one padding position marked absent (the
    tower's [CLS] alone then encodes it), so no text is silently dropped.
    """
    ids = [tokenizer.encode(t)[0][:max_tokens] for t in texts]
    length = max([1] + [len(i) for i in ids])
    input_ids = torch.zeros(len(ids), length, dtype=torch.long)
    text_mask = torch.zeros(len(ids), length, dtype=torch.bool)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        text_mask[row, : len(seq)] = True
    return input_ids, text_mask


def image_tensor(images, device) -> torch.Tensor:
    """uint8 ``[B, S, S, 3]`` (numpy or tensor) or already normalised float ``[B, 3, S, S]`` -> model input."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return normalize_image(images).to(device)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return normalize_image(images.cpu().numpy()).to(device)
    return torch.as_tensor(images, dtype=torch.float32).to(device)


def encode_text_list(model, tokenizer, texts: Sequence[str], *, device="cpu", batch_size: int = 64,
                     progress: Optional[bool] = None, desc: str = "texts") -> torch.Tensor:
    """Global text embeddings float[T, d] of ``texts`` (L2-normalised)."""
    out = []
    with evaluating(model):
        for sl in batches(len(texts), batch_size, progress=progress, desc=desc):
            ids, mask = tokenize(tokenizer, texts[sl], model.config.text_max_tokens)
            out.append(model.encode_texts(ids.to(device), mask.to(device)).global_emb.float().cpu())
    if not out:
        raise ValueError("texts must hold at least one text")
    return torch.cat(out)


def phrase_tokens(tokenizer, text: str, length: int) -> torch.Tensor:
    """bool[M, length]: the tokens of each noun phrase of ``text`` (``data.phrases`` chunker) among
    its first ``length`` tokens; a phrase cut off by that limit has an all-False row."""
    spans = extract_noun_phrases(text)
    offsets = tokenizer.encode(text)[1][:length]
    out = torch.zeros(len(spans), length, dtype=torch.bool)
    if spans and offsets:
        tokens = phrase_token_mask(offsets, spans)
        out[:, : tokens.shape[1]] = tokens
    return out


class TextViews(NamedTuple):
    """The embeddings ``encode_text_views`` gets from one pass of the text tower (L2-normalised).

    global_emb float[T, d] ([CLS]); first_phrase float[T, d] (the first noun phrase; all tokens
    for a text without one or whose first one was cut off: ``encode_phrase_list``); phrases
    float[T, M, d] (every noun phrase, 0 at padding) with phrase_mask bool[T, M] (a text without
    a phrase: an all-False row).
    """

    global_emb: torch.Tensor
    first_phrase: torch.Tensor
    phrases: torch.Tensor
    phrase_mask: torch.Tensor


def encode_text_views(model, tokenizer, texts: Sequence[str], *, max_phrases: int = 8, device="cpu",
                      batch_size: int = 64, progress: Optional[bool] = None, desc: str = "texts") -> TextViews:
    """[CLS], first-noun-phrase and every-noun-phrase embeddings of ``texts`` in one text-tower pass.

    A phrase's embedding is the mean of its word-token embeddings in the context of the whole
    text (``data.phrases`` chunker; tokens and phrases kept as in the training batches,
    ``data.batch``). M = the most phrases of one text, at most ``max_phrases`` (the first ones
    are kept), at least 1.
    """
    if isinstance(max_phrases, bool) or not isinstance(max_phrases, int) or max_phrases < 1:
        raise ValueError(f"max_phrases must be a positive int, got {max_phrases!r}")
    glob, first, embs, masks = [], [], [], []
    with evaluating(model):
        for sl in batches(len(texts), batch_size, progress=progress, desc=desc):
            chunk = list(texts[sl])
            ids, mask = tokenize(tokenizer, chunk, model.config.text_max_tokens)
            spans = [phrase_tokens(tokenizer, text, ids.shape[1]) for text in chunk]
            rows = [tokens[tokens.any(dim=1)][:max_phrases] for tokens in spans]  # as data.batch drops cut-off ones
            # slot 0: the first phrase (all tokens where there is none, or it was cut off); then every phrase
            phrase = torch.zeros(len(chunk), 1 + max(1, max(len(r) for r in rows)), ids.shape[1], dtype=torch.bool)
            for row, (tokens, kept) in enumerate(zip(spans, rows)):
                phrase[row, 0] = tokens[0] if len(tokens) and bool(tokens[0].any()) else mask[row]
                phrase[row, 1: 1 + len(kept)] = kept
            feats = model.encode_texts(ids.to(device), mask.to(device))
            emb = model.phrase_embeddings(feats, phrase.to(device)).float().cpu()
            glob.append(feats.global_emb.float().cpu())
            first.append(emb[:, 0])
            embs.append(emb[:, 1:])
            masks.append(phrase[:, 1:].any(dim=2))
    if not glob:
        raise ValueError("texts must hold at least one text")
    width = max(e.shape[1] for e in embs)
    return TextViews(torch.cat(glob), torch.cat(first),
                     torch.cat([torch.nn.functional.pad(e, (0, 0, 0, width - e.shape[1])) for e in embs]),
                     torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]))


def encode_phrase_list(model, tokenizer, texts: Sequence[str], *, device="cpu", batch_size: int = 64,
                       progress: Optional[bool] = None, desc: str = "phrases") -> torch.Tensor:
    """Embeddings float[T, d] of each text's first noun phrase (``data.phrases`` chunker), the mean
    of its word-token embeddings in the context of the whole text (L2-normalised); a text without
    a noun phrase takes all its tokens."""
    return encode_text_views(model, tokenizer, texts, max_phrases=1, device=device, batch_size=batch_size,
                             progress=progress, desc=desc).first_phrase


def encode_image_array(model, images, *, device="cpu", batch_size: int = 64, progress: Optional[bool] = None,
                       desc: str = "images") -> torch.Tensor:
    """Global image embeddings float[N, d] of uint8 images ``[N, S, S, 3]`` (L2-normalised)."""
    out = []
    with evaluating(model):
        for sl in batches(len(images), batch_size, progress=progress, desc=desc):
            out.append(model.encode_images(image_tensor(images[sl], device)).global_emb.float().cpu())
    if not out:
        raise ValueError("images must hold at least one image")
    return torch.cat(out)
