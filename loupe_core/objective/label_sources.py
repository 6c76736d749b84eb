"""Where L_TSA's and L_FSA's Shapley labels come from, one object per source (spec section 5).

Token level (L_TSA), ``source(view) -> (logits float[P', K'], values float[P', K'], labelled
bool[P', K'])``: the head's logits of the labelled candidates, their labels and which carry one.

- :class:`AlignmentTokenLabels`: the alignment game of the caption's phrases over the final patch
  embeddings, exact in closed form, every pair (``token_game="alignment"``);
- :class:`EncoderTokenLabels`: the encoder game (Eq. 7, masked re-encoding through both towers),
  "exact" or "sampling", for the step's ``pairs_per_step`` labelled pairs;
- :class:`HybridTokenLabels`: the encoder game's samples or UNSIL's estimates, per target.

Semantic level (L_FSA), ``source(view) -> values float[B, K, M]`` on the detached A:
:class:`SemanticLabels` ("exact" or "sampling") and :class:`HybridSemanticLabels`.

A hybrid source holds its level's UNSIL network (owned by the objective, ``LoupeObjective.unsil``)
and adds its L_UNSIL to ``view.unsil_losses``; every source adds its timing and diagnostics to
``view.logs``. Sampled values and hybrid decisions are drawn per pair from its global row
(``global_batch``), so they do not depend on its batch or rank. :func:`token_label_source` and
:func:`semantic_label_source` build the source a ``LossConfig`` names.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F

from .. import global_batch as gb
from ..model.loupe import masked_mean_embedding
from . import labels as lab
from .config import LossConfig
from .features import ForwardView
from .unsil import Unsil, UnsilInputs


def token_unsil_inputs(patch_emb: torch.Tensor, token_emb: torch.Tensor, text_mask: torch.Tensor,
                       pair: torch.Tensor, final_masks: torch.Tensor) -> UnsilInputs:
    """Detached token-level UNSIL inputs (``unsil`` module docstring) of T targets.

    patch_emb float[P, N_I, d] (final grid), token_emb float[P, L, d] and text_mask bool[P, L] of
    P image-text pairs; pair LongTensor[T]: each target's pair; final_masks bool[T, N_I]: each
    target region's final-grid cells.
    """
    patches = patch_emb[pair].detach()
    return UnsilInputs(masked_mean_embedding(final_masks[:, None], patches)[:, 0], patches,
                       torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device), final_masks,
                       token_emb[pair].detach(), text_mask[pair], torch.zeros_like(text_mask[pair]))


def semantic_unsil_inputs(img_global: torch.Tensor, txt_global: torch.Tensor, region_emb: torch.Tensor,
                          phrase_emb: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor,
                          targets: torch.Tensor) -> UnsilInputs:
    """Detached semantic-level UNSIL inputs (``unsil`` module docstring) of T targets.

    img_global / txt_global float[B, d], region_emb float[B, K, d], phrase_emb float[B, M, d],
    region_mask bool[B, K], phrase_mask bool[B, M]; targets LongTensor[T, 3] of (b, i, j).
    """
    b, i, j = targets.unbind(1)
    K, M = region_emb.shape[1], phrase_emb.shape[1]
    ones = torch.ones(region_emb.shape[0], 1, dtype=torch.bool, device=region_emb.device)
    seq_a = torch.cat([img_global[:, None], region_emb], dim=1).detach()
    seq_b = torch.cat([txt_global[:, None], phrase_emb], dim=1).detach()
    return UnsilInputs(torch.cat([region_emb[b, i], phrase_emb[b, j]], dim=1).detach(),
                       seq_a[b], torch.cat([ones, region_mask], dim=1)[b], F.one_hot(i + 1, K + 1).bool(),
                       seq_b[b], torch.cat([ones, phrase_mask], dim=1)[b], F.one_hot(j + 1, M + 1).bool())


def _probe_size(lcfg: LossConfig, view: ForwardView) -> int:
    return lcfg.probe_size if view.step.diagnostics else 0


# ---------------------------------------------------------------- token level
class AlignmentTokenLabels:
    """Exact region scores in the alignment game (``labels.alignment_game_labels``) of the head's
    selected candidates (``token_candidates="selected"``) or of every candidate ("all"); a caption
    without a phrase carries no label."""

    def __init__(self, lcfg: LossConfig):
        self.target, self.every_candidate = lcfg.token_target, lcfg.token_candidates == "all"

    def __call__(self, view: ForwardView):
        logits, geometry = view.candidates
        if self.every_candidate:  # one geometry shared by the batch
            label_logits, label_masks = logits, geometry.masks[None]
        else:
            label_logits, label_masks = logits.gather(1, view.selection), geometry.masks[view.selection]
        patch_emb, phrase_mask = view.img.patch_emb, view.batch["phrase_mask"]
        start = time.perf_counter()
        with torch.no_grad():
            values = lab.alignment_game_labels(patch_emb.detach().float(), view.phrases.detach().float(),
                                               phrase_mask, label_masks, self.target)
        view.logs["label_time_token"] = time.perf_counter() - start
        labelled = phrase_mask.any(dim=1, keepdim=True).expand(values.shape[0], values.shape[1])
        return label_logits, values.to(patch_emb.dtype), labelled


class EncoderTokenLabels:
    """Token-level labels in the encoder game (Eq. 7) of the selected candidates of the step's
    labelled pairs (``global_batch.label_rows``), "exact" or "sampling" (``token_source``).

    A one-patch region's interaction is 0 by Eq. 7 whatever the model does, so it carries no
    label (``labelled`` False, left out of L_TSA's min-max and loss): kept in, its constant 0
    becomes the top label of every image whose other candidates interact negatively, and the head
    learns to propose single background cells. phi([R]) of one patch is informative."""

    def __init__(self, lcfg: LossConfig, model):
        self.lcfg, self.model = lcfg, model

    def _pairs(self, view: ForwardView):
        """(P long[p]: this batch's labelled pairs, index long[p, K'], final masks bool[p, K', N_I],
        token masks bool[p, K', N_tokens], labelled bool[p, K'])."""
        P = gb.label_rows(view.step.rows, view.step.global_size, self.lcfg.pairs_per_step)
        _, geometry = view.candidates
        index = view.selection[P]
        final_masks = geometry.masks[index]
        token_masks = self.model.token_masks(geometry.boxes[index], final_masks)
        labelled = token_masks.sum(dim=2) >= (1 if self.lcfg.token_target == "phi" else 2)
        return P, index, final_masks, token_masks, labelled

    def _game(self, view: ForwardView, P: torch.Tensor) -> dict:
        """The arguments of ``labels.token_scores_by_pair`` for the pairs ``P``."""
        lcfg = self.lcfg
        return dict(towers=(self.model.image_tower, self.model.text_tower), image_tokens=view.image[0][P],
                    text_tokens=view.text[0][P], text_mask=view.batch["text_mask"][P], rows=view.step.rows[P],
                    baseline=lcfg.token_baseline, num_samples=lcfg.token_num_samples, score=lcfg.token_target)

    def __call__(self, view: ForwardView):
        P, index, _, token_masks, labelled = self._pairs(view)
        start = time.perf_counter()
        values = lab.token_scores_by_pair(regions=token_masks, seed=view.step.seed("token"),
                                          method=self.lcfg.token_source, **self._game(view, P))
        view.logs["label_time_token"] = time.perf_counter() - start
        logits, _ = view.candidates
        return logits[P].gather(1, index), values.to(view.img.patch_emb.dtype), labelled


class HybridTokenLabels(EncoderTokenLabels):
    """The encoder game's samples or UNSIL's estimates per labelled target (``labels.hybrid_labels``);
    one-patch regions: no sampling, no UNSIL target."""

    def __init__(self, lcfg: LossConfig, model, unsil: Unsil):
        super().__init__(lcfg, model)
        self.unsil = unsil

    def __call__(self, view: ForwardView):
        P, index, final_masks, token_masks, labelled = self._pairs(view)
        n, K = index.shape
        flat = labelled.reshape(-1).nonzero().squeeze(1)
        pair, region = flat // K, flat % K
        patch_emb = view.img.patch_emb[P]
        inputs = token_unsil_inputs(patch_emb, view.txt.token_emb[P], view.batch["text_mask"][P], pair,
                                    final_masks.reshape(n * K, final_masks.shape[-1])[flat])
        game = self._game(view, P)

        def sample(which, seed):
            return lab.token_scores_by_pair(regions=token_masks, seed=seed, labelled=labelled,
                                            targets=torch.stack([pair[which], region[which]], 1), **game)

        lcfg, step = self.lcfg, view.step
        out = lab.hybrid_labels("token", self.unsil, inputs, sample, warmup=step.in_warmup(lcfg.warmup_fraction),
                                lam=lcfg.unsil_lambda, probe_size=_probe_size(lcfg, view), step=step.index,
                                gate=lcfg.unsil_gate, ranks=step.ranks,
                                uniforms=gb.pair_uniforms(step.seed("token_decision"), step.rows[P], K,
                                                          pair.device)[pair, region])
        values = patch_emb.new_zeros(n * K)
        values[flat] = out.values.to(values.dtype)
        view.unsil_losses.append(out.unsil_loss)
        view.logs.update(out.logs)
        logits, _ = view.candidates
        return logits[P].gather(1, index), values.reshape(n, K), labelled


def token_label_source(lcfg: LossConfig, model, unsil: Optional[Unsil]):
    """The token-level label source ``lcfg`` names (``token_game``, ``token_source``)."""
    if lcfg.token_game == "alignment":
        return AlignmentTokenLabels(lcfg)
    if lcfg.token_source == "hybrid":
        return HybridTokenLabels(lcfg, model, unsil)
    return EncoderTokenLabels(lcfg, model)


# ---------------------------------------------------------------- semantic level
def _region_mask(A: torch.Tensor) -> torch.Tensor:
    return torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)


class SemanticLabels:
    """Semantic-level labels float[B, K, M] of the detached A: "exact" (every pair in one call) or
    "sampling" (pair by pair, each from its global row: ``labels.semantic_scores_by_pair``)."""

    def __init__(self, lcfg: LossConfig):
        self.lcfg = lcfg

    def __call__(self, view: ForwardView) -> torch.Tensor:
        A, phrase_mask, seed = view.alignment, view.batch["phrase_mask"], view.step.seed("semantic")
        start = time.perf_counter()
        if self.lcfg.semantic_source == "exact":
            values = lab.semantic_interactions(A, _region_mask(A), phrase_mask, method="exact",
                                               num_samples=self.lcfg.semantic_num_samples, seed=seed)
        else:
            values = lab.semantic_scores_by_pair(A, _region_mask(A), phrase_mask, view.step.rows, seed,
                                                 num_samples=self.lcfg.semantic_num_samples)
        view.logs["label_time_semantic"] = time.perf_counter() - start
        return values


class HybridSemanticLabels:
    """Sampled interactions or UNSIL's estimates per (pair, region, phrase) target."""

    def __init__(self, lcfg: LossConfig, unsil: Unsil):
        self.lcfg, self.unsil = lcfg, unsil

    def __call__(self, view: ForwardView) -> torch.Tensor:
        lcfg, step = self.lcfg, view.step
        A, phrase_mask, phrases = view.alignment, view.batch["phrase_mask"], view.phrases
        region_mask = _region_mask(A)
        targets = (region_mask[:, :, None] & phrase_mask[:, None, :]).nonzero()
        b, i, j = targets.unbind(1)
        inputs = semantic_unsil_inputs(view.img.global_emb, view.txt.global_emb, view.regions.emb, phrases,
                                       region_mask, phrase_mask, targets)

        def sample(which, seed):
            asked = targets[which]
            values = lab.semantic_scores_by_pair(A, region_mask, phrase_mask, step.rows, seed,
                                                 num_samples=lcfg.semantic_num_samples, pairs=asked[:, 0].unique())
            return values[asked[:, 0], asked[:, 1], asked[:, 2]]

        K = A.shape[1]  # each pair's decision draws laid out [phrase, region]: independent of the batch's M
        draws = step.uniforms("semantic_decision", K * A.shape[2], A.device)
        out = lab.hybrid_labels("semantic", self.unsil, inputs, sample, warmup=step.in_warmup(lcfg.warmup_fraction),
                                lam=lcfg.unsil_lambda, probe_size=_probe_size(lcfg, view), step=step.index,
                                gate=lcfg.unsil_gate, uniforms=draws[b, j * K + i], ranks=step.ranks)
        values = torch.zeros_like(A).detach()
        values[b, i, j] = out.values.to(A.dtype)
        view.unsil_losses.append(out.unsil_loss)
        view.logs.update(out.logs)
        return values


def semantic_label_source(lcfg: LossConfig, unsil: Optional[Unsil]):
    """The semantic-level label source ``lcfg.semantic_source`` names."""
    return HybridSemanticLabels(lcfg, unsil) if lcfg.semantic_source == "hybrid" else SemanticLabels(lcfg)
