"""One image-caption pair run through the model, as the pictures need it (CONTRACTS s5 methods).

:func:`inspect_pair` returns the collated one-pair batch (CONTRACTS s3: the caption's noun phrases
from the offline chunker), the image and text features, the region head's top-K regions and the
region-phrase alignment logits A (region logit scale times cosine, spec section 4).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from loupe_core.data import collate_batch, extract_noun_phrases, make_sample, phrase_token_mask
from loupe_core.eval.encode import evaluating


class PairView(NamedTuple):
    """batch: the one-pair CONTRACTS s3 batch; image_feats / text_feats: the model's features;
    regions: ``Regions`` with K = model.config.top_k; A float[1, K, M] alignment logits; phrases:
    the M phrase strings (M >= 1 columns; padding where the caption has none)."""

    batch: dict
    image_feats: object
    text_feats: object
    regions: object
    A: torch.Tensor
    phrases: list


def inspect_pair(model, tokenizer, image: np.ndarray, caption: str, *, device="cpu") -> PairView:
    """Run one pair: image uint8 ``[S, S, 3]``, caption str."""
    spans = extract_noun_phrases(caption)
    batch = collate_batch([make_sample(image, caption, spans, "viz", tokenizer)])
    limit = model.config.text_max_tokens  # the text tower's limit may be below the tokenizer's
    batch["input_ids"], batch["text_mask"] = batch["input_ids"][:, :limit], batch["text_mask"][:, :limit]
    batch["phrase_tokens"] = batch["phrase_tokens"][:, :, :limit]
    batch["phrase_mask"] &= batch["phrase_tokens"].any(dim=2)
    offsets = tokenizer.encode(caption)[1][:limit]
    covered = phrase_token_mask(offsets, spans).any(dim=1).tolist() if spans else []
    kept = [caption[a:b] for (a, b), c in zip(spans, covered) if c][: int(batch["phrase_mask"].sum())]
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with evaluating(model):
        image_feats = model.encode_images(batch["images"])
        text_feats = model.encode_texts(batch["input_ids"], batch["text_mask"])
        regions = model.propose_regions(image_feats, model.config.top_k)
        phrase_emb = model.phrase_embeddings(text_feats, batch["phrase_tokens"])
        A = model.alignment_scale() * regions.emb @ phrase_emb.transpose(1, 2)
    return PairView(batch, image_feats, text_feats, regions, A, kept)
