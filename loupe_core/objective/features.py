"""A lazy, memoised view of one model forward: each feature a loss term asks for is computed on
first use and shared by every later term of the same forward (``LoupeObjective.forward``).
``image`` and ``text`` (each tower's input tokens and features) are computed on construction.

``ForwardView(model, batch, step, num_random)``: ``model`` a ``LoupeModel``, ``batch`` the data
batch (docs/CONTRACTS.md s3), ``step`` the resolved ``StepContext`` (``StepContext.for_batch``),
``num_random`` the random candidates the head's selection adds (the model's ``num_random`` where a
built term asks for them, else 0). What nobody asks for is never computed; the order in which the
terms ask does not change a value (every draw comes from the step's seeded per-pair streams).
"""
from __future__ import annotations

from functools import cached_property

import torch

from ..model import LoupeModel
from .step import StepContext


class ForwardView:
    """The features of one forward (module docstring). Shapes: B pairs, N_I final-grid patches,
    L tokens, M phrases, P candidates of the region head, K' selected candidates, d embedding."""

    def __init__(self, model: LoupeModel, batch: dict, step: StepContext, num_random: int = 0):
        self.model, self.batch, self.step, self.num_random = model, batch, step, int(num_random)
        self.logs: dict = {}                 # name -> float, the terms' diagnostics
        self.unsil_losses: list = []         # L_UNSIL of each hybrid label source run (the "unsil" term sums them)
        # the towers' passes, which every term reads, run first, image then text (their dropout draws)
        self.image = model.encode_image_tokens(batch["images"])
        self.text = model.encode_text_tokens(batch["input_ids"], batch["text_mask"])

    @property
    def img(self):
        """ImageFeatures (global_emb [B, d], patch_emb [B, N_I, d], ...)."""
        return self.image[1]

    @property
    def txt(self):
        """TextFeatures (global_emb [B, d], token_emb [B, L, d])."""
        return self.text[1]

    @cached_property
    def phrases(self) -> torch.Tensor:
        """float[B, M, d]: each noun phrase's embedding (batch ``phrase_tokens``)."""
        return self.model.phrase_embeddings(self.txt, self.batch["phrase_tokens"])

    @cached_property
    def candidates(self):
        """(confidence logits float[B, P] of every candidate, their ``Geometry``)."""
        return self.model.candidates(self.img)

    @cached_property
    def selection(self) -> torch.Tensor:
        """long[B, K']: the head's top_k after NMS, then ``num_random`` random others per image, the
        noise of each pair from its global row (stream "candidates")."""
        logits, geometry = self.candidates
        cfg = self.model.config
        return self.model.region_head.select(logits.detach(), geometry, cfg.top_k, self.num_random, cfg.nms_iou,
                                             self.step.uniforms("candidates", logits.shape[1]))

    @cached_property
    def regions(self):
        """The top_k selected candidates of each image as ``Regions`` (emb float[B, K, d], ...)."""
        logits, geometry = self.candidates
        top = self.selection[:, : min(self.model.config.top_k, self.selection.shape[1])]
        return self.model.regions(self.img, logits, geometry, top)

    @cached_property
    def alignment(self) -> torch.Tensor:
        """A float[B, K, M]: the region-phrase alignment logits of ``regions`` (spec section 4)."""
        return self.model.alignment_logits(self.regions.emb, self.phrases)
