"""LOUPE's training objective: L = L_CMC + fine-grained contrast + L_TSA + L_FSA (+ L_UNSIL) on a
``LoupeModel`` (spec sections 1-5; docs/CONTRACTS.md section 5).

``LoupeObjective(model, loss_config)`` wraps the model (its features: encoders, region head,
alignment logits) with what training adds to it: the loss configuration, the Shapley labels of
both levels (``labels``) and UNSIL's networks. ``objective(batch, step)`` (``step`` a
``StepContext``, built by the trainer) returns ``LossOutput`` with the enabled terms;
``objective(batch, embed_only=True)`` the global embeddings (the trainer's contrastive bank). The trainer trains and checkpoints the objective
(state dict keys ``model.*`` and ``unsil.*``).
"""
import time
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import global_batch as gb
from ..data.augment import random_view
from ..model import LoupeModel, ModelConfig
from ..model.loupe import as_config, masked_mean_embedding
from . import labels as lab
from .config import LossConfig
from .losses import (LossOutput, cmc_loss, fine_contrastive_loss, fsa_loss, pacl_loss, simclr_loss,
                     tsa_loss)
from .step import StepContext
from .unsil import Unsil, UnsilInputs

BATCH_KEYS = ("images", "input_ids", "text_mask")
PHRASE_KEYS = ("phrase_tokens", "phrase_mask")


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


def upgrade_state_dict(state_dict: dict) -> dict:
    """An objective's state dict: itself, or one of the earlier layout (checkpoints written before
    the objective was split from the model: flat model keys, UNSIL's ``unsil.*`` beside them)
    with the model's keys moved under ``model.``."""
    if state_dict and not any(key.startswith("model.") for key in state_dict):
        return {(key if key.startswith("unsil.") else "model." + key): value for key, value in state_dict.items()}
    return state_dict


def model_state_dict(state_dict: dict) -> dict:
    """The ``LoupeModel``'s part of an objective's state dict (either layout), keys unprefixed."""
    return {key[len("model."):]: value for key, value in upgrade_state_dict(state_dict).items()
            if key.startswith("model.")}


class LoupeObjective(nn.Module):
    """LOUPE's losses on a model. ``LoupeObjective(model, loss_config)``: ``model`` a ``LoupeModel``
    or its ``ModelConfig`` (dataclass or dict); ``loss_config`` a ``LossConfig`` or dict."""

    def __init__(self, model: Union[LoupeModel, ModelConfig, dict, None] = None,
                 loss_config: Union[LossConfig, dict, None] = None):
        super().__init__()
        self.model = model if isinstance(model, LoupeModel) else LoupeModel(model)
        self.loss_config = lcfg = as_config(LossConfig, loss_config)
        # terms that are losses over the whole accumulated batch (the trainer's ContrastiveBank)
        self.bank_terms = ("cmc",) if lcfg.cmc else ()
        cfg = self.model.config
        if lcfg.token_baseline == "drop" and cfg.image_tower == "swin" and lcfg.tsa:
            raise ValueError("token_baseline='drop' is not defined for the Swin image tower; use 'zero'")
        grid = self.model.image_tower.final_grid
        d, n_final = cfg.embed_dim, grid[0] * grid[1]
        shapes = {"token": (d, 1 + n_final + cfg.text_max_tokens),
                  "semantic": (2 * d, 3 + cfg.top_k + cfg.text_max_tokens)}
        self.unsil = nn.ModuleDict({
            level: Unsil(lcfg.unsil_arch, shapes[level][0], d, lcfg.unsil_hidden, shapes[level][1])
            for level in lcfg.hybrid_levels()})
        # SLIP's SimCLR projection head (an MLP on the image embedding), only where the term is on
        self.simclr_head = (nn.Sequential(nn.Linear(d, 4 * d), nn.LayerNorm(4 * d), nn.GELU(), nn.Linear(4 * d, d))
                            if lcfg.simclr > 0 else None)

    def compile_towers(self, **options) -> None:
        """``LoupeModel.compile_towers`` of the model (the trainer's ``train.compile="towers"``)."""
        self.model.compile_towers(**options)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, also of a state dict in the earlier layout (``upgrade_state_dict``)."""
        return super().load_state_dict(upgrade_state_dict(state_dict), strict=strict, assign=assign)

    def forward(self, batch: dict, step: Optional[StepContext] = None, embed_only: bool = False):
        """Training: LossOutput(total, terms, logs) of the batch at ``step`` (default: one process,
        step 0 of 1). ``embed_only``: (img_global, txt_global) float[b, d].

        ``step.diagnostics=False`` skips UNSIL's probe (fresh samples that only feed the
        ``unsil_probe_error_*`` logs); the trainer asks for it on the steps it logs.
        """
        lcfg, model = self.loss_config, self.model
        uses_phrases = (lcfg.fsa or (lcfg.fine_contrast > 0 and lcfg.fine_queries == "phrases")
                        or (lcfg.tsa and lcfg.token_game == "alignment"))
        needed = BATCH_KEYS + (PHRASE_KEYS if uses_phrases and not embed_only else ())
        for key in needed:
            if key not in batch:
                raise ValueError(f"batch is missing {key!r} (needs {list(needed)})")
        image_tokens, img = model.encode_image_tokens(batch["images"])
        text_tokens, txt = model.encode_text_tokens(batch["input_ids"], batch["text_mask"])
        if embed_only:
            return img.global_emb, txt.global_emb
        context = (step or StepContext()).for_batch(int(batch["input_ids"].shape[0]))
        warmup = context.in_warmup(lcfg.warmup_fraction)
        probe_size = lcfg.probe_size if context.diagnostics else 0
        rows, size = context.rows, context.global_size  # each pair's row in the global batch: budget and seeds
        ranks, bank, step = context.ranks, context.bank, context.index  # means and contrast sets span the ranks
        terms, logs, unsil_terms = {}, {}, []
        if lcfg.cmc:
            terms["cmc"] = cmc_loss(img.global_emb, txt.global_emb, model.contrastive_scale(), bank, ranks)
        phrases = model.phrase_embeddings(txt, batch["phrase_tokens"]) if uses_phrases else None
        if lcfg.fine_contrast > 0:
            queries, query_mask = ((txt.token_emb, batch["text_mask"]) if lcfg.fine_queries == "tokens"
                                   else (phrases, batch["phrase_mask"]))
            terms["fine"] = lcfg.fine_contrast * fine_contrastive_loss(
                queries, query_mask, img.patch_emb, model.region_scale(), ranks)
        if lcfg.simclr > 0:
            terms["simclr"] = lcfg.simclr * self._simclr_term(batch["images"], rows, step, ranks)
        if lcfg.pacl > 0:
            terms["pacl"] = lcfg.pacl * pacl_loss(txt.global_emb, img.patch_emb, model.region_scale(), ranks)
        if lcfg.tsa or lcfg.fsa:
            logits, geometry = model.candidates(img)
            # the head's selection (NMS on the host, per image) only where a loss reads it: dense
            # alignment-game labels without L_FSA use every candidate
            dense_only = not lcfg.fsa and lcfg.token_game == "alignment" and lcfg.token_candidates == "all"
            index = None if dense_only else model.region_head.select(
                logits.detach(), geometry, model.config.top_k, model.config.num_random if lcfg.tsa else 0,
                model.config.nms_iou, gb.pair_uniforms(gb.stream_seed(step, "candidates"), rows, logits.shape[1]))
        if lcfg.tsa and lcfg.token_game == "alignment":
            if lcfg.token_candidates == "selected":
                label_logits, label_masks = logits.gather(1, index), geometry.masks[index]
            else:  # every candidate: one geometry shared by the batch
                label_logits, label_masks = logits, geometry.masks[None]
            start = time.perf_counter()
            values, labelled = self._alignment_token_labels(img.patch_emb, phrases, batch["phrase_mask"],
                                                            label_masks)
            logs["label_time_token"] = time.perf_counter() - start
            terms["tsa"] = tsa_loss(label_logits, values, labelled, ranks)
        elif lcfg.tsa:
            P = gb.label_rows(rows, size, lcfg.pairs_per_step)  # this batch's pairs among the step's labelled ones
            values, labelled, unsil_term, level_logs = self._token_labels(
                image_tokens[P], text_tokens[P], batch["text_mask"][P], img.patch_emb[P], txt.token_emb[P],
                geometry, index[P], step, warmup, probe_size, rows[P], ranks)
            unsil_terms.append(unsil_term)
            logs.update(level_logs)
            terms["tsa"] = tsa_loss(logits.gather(1, index)[P], values, labelled, ranks)
        if lcfg.fsa:
            top = index[:, : min(model.config.top_k, index.shape[1])]
            regions = model.regions(img, logits, geometry, top)
            A = model.alignment_logits(regions.emb, phrases)
            region_mask = torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
            values, unsil_term, level_logs = self._semantic_labels(
                A, region_mask, batch["phrase_mask"], img.global_emb, txt.global_emb, regions.emb, phrases,
                step, warmup, probe_size, rows, ranks)
            unsil_terms.append(unsil_term)
            logs.update(level_logs)
            terms["fsa"] = fsa_loss(A, values, region_mask, batch["phrase_mask"], ranks)
        if self.unsil:
            terms["unsil"] = sum(term for term in unsil_terms if term is not None)
        logs["logit_scale"] = float(model.contrastive_scale().detach())
        logs["region_logit_scale"] = float(model.alignment_scale())
        total = sum(terms.values())
        return LossOutput(total, terms, logs)

    def _simclr_term(self, images: torch.Tensor, rows: torch.Tensor, step: int, ranks) -> torch.Tensor:
        """SLIP's term on two random views of images float[b, 3, S, S]; each pair's view draws come
        from its global row (``rows`` long[b]), so they do not depend on its batch or rank."""
        draws = gb.pair_uniforms(gb.stream_seed(step, "views"), rows, 10, images.device)    # [b, 10]
        views = [F.normalize(self.simclr_head(self.model.encode_images(random_view(images, u)).global_emb), dim=-1)
                 for u in (draws[:, :5], draws[:, 5:])]
        return simclr_loss(*views, self.loss_config.simclr_temperature, ranks)

    def _alignment_token_labels(self, patch_emb, phrases, phrase_mask, region_masks):
        """Token-level labels in the alignment game (``token_game="alignment"``), exact: (values
        float[B, K] by ``alignment_game_labels``, labelled bool[B, K]: False for captions without
        a phrase). Shapes as in ``alignment_game_labels``."""
        with torch.no_grad():
            values = lab.alignment_game_labels(patch_emb.detach().float(), phrases.detach().float(), phrase_mask,
                                           region_masks, self.loss_config.token_target)
        labelled = phrase_mask.any(dim=1, keepdim=True).expand(values.shape[0], values.shape[1])
        return values.to(patch_emb.dtype), labelled

    def _token_labels(self, image_tokens, text_tokens, text_mask, patch_emb, token_emb, geometry, index,
                      step, warmup, probe_size, rows, ranks):
        """Token-level labels float[P, K'] of the candidates ``index`` LongTensor[P, K'] of P pairs
        (global rows ``rows`` long[P]: each pair's draws its own, ``global_batch.token_scores_by_pair``;
        ``ranks``: the ``global_batch.Ranks`` sharing the step, for UNSIL).

        Returns (values, labelled bool[P, K'], L_UNSIL of the level or None where the source is
        not hybrid, logs). A one-patch region's interaction is 0 by Eq. 7 whatever the model does,
        so it carries no label (``labelled`` False, left out of L_TSA's min-max and loss): kept in,
        its constant 0 becomes the top label of every image whose other candidates interact
        negatively, and the head learns to propose single background cells."""
        lcfg = self.loss_config
        final_masks = geometry.masks[index]
        token_masks = self.model.token_masks(geometry.boxes[index], final_masks)
        common = dict(baseline=lcfg.token_baseline, num_samples=lcfg.token_num_samples, score=lcfg.token_target)
        towers = (self.model.image_tower, self.model.text_tower)
        # Eq. 7 is 0 for one patch whatever the model does; phi([R]) of one patch is informative
        labelled = token_masks.sum(dim=2) >= (1 if lcfg.token_target == "phi" else 2)
        if lcfg.token_source != "hybrid":
            start = time.perf_counter()
            values = gb.token_scores_by_pair(lab.token_interactions, None, towers, image_tokens, text_tokens,
                                             text_mask, token_masks, rows, gb.stream_seed(step, "token"),
                                             method=lcfg.token_source, **common)
            return values.to(patch_emb.dtype), labelled, None, {"label_time_token": time.perf_counter() - start}
        # one-patch regions: no sampling, no UNSIL target
        P, K = index.shape
        flat = labelled.reshape(-1).nonzero().squeeze(1)
        pair, region = flat // K, flat % K
        final_masks = final_masks.reshape(P * K, final_masks.shape[-1])[flat]
        inputs = token_unsil_inputs(patch_emb, token_emb, text_mask, pair, final_masks)

        def sample(which, seed):
            return gb.token_scores_by_pair(lab.token_interactions, lab.token_target_interactions, towers,
                                           image_tokens, text_tokens, text_mask, token_masks, rows, seed,
                                           labelled=labelled, targets=torch.stack([pair[which], region[which]], 1),
                                           **common)

        out = lab.hybrid_labels("token", self.unsil["token"], inputs, sample, warmup=warmup,
                                lam=lcfg.unsil_lambda, probe_size=probe_size, step=step,
                                gate=lcfg.unsil_gate,
                                uniforms=gb.pair_uniforms(gb.stream_seed(step, "token_decision"), rows, K,
                                                          pair.device)[pair, region], ranks=ranks)
        values = patch_emb.new_zeros(P * K)
        values[flat] = out.values.to(values.dtype)
        return values.reshape(P, K), labelled, out.unsil_loss, out.logs

    def _semantic_labels(self, A, region_mask, phrase_mask, img_global, txt_global, region_emb, phrase_emb,
                         step, warmup, probe_size, rows, ranks):
        """Semantic-level labels float[B, K, M] on the detached A: (values, L_UNSIL or None, logs).

        Sampled values and hybrid decisions are drawn per pair from its global row (``rows``
        long[B], ``global_batch.semantic_scores_by_pair``), so they do not depend on its batch or rank.
        """
        lcfg = self.loss_config
        seed = gb.stream_seed(step, "semantic")
        if lcfg.semantic_source == "exact":
            start = time.perf_counter()
            values = lab.semantic_interactions(A, region_mask, phrase_mask, method="exact",
                                               num_samples=lcfg.semantic_num_samples, seed=seed)
            return values, None, {"label_time_semantic": time.perf_counter() - start}
        if lcfg.semantic_source == "sampling":
            start = time.perf_counter()
            values = gb.semantic_scores_by_pair(lab.semantic_interactions, A, region_mask, phrase_mask, rows, seed,
                                                num_samples=lcfg.semantic_num_samples)
            return values, None, {"label_time_semantic": time.perf_counter() - start}
        targets = (region_mask[:, :, None] & phrase_mask[:, None, :]).nonzero()
        b, i, j = targets.unbind(1)
        inputs = semantic_unsil_inputs(img_global, txt_global, region_emb, phrase_emb, region_mask, phrase_mask,
                                       targets)

        def sample(which, seed):
            asked = targets[which]
            values = gb.semantic_scores_by_pair(lab.semantic_interactions, A, region_mask, phrase_mask, rows, seed,
                                                num_samples=lcfg.semantic_num_samples, pairs=asked[:, 0].unique())
            return values[asked[:, 0], asked[:, 1], asked[:, 2]]

        K = A.shape[1]  # each pair's decision draws laid out [phrase, region]: independent of the batch's M
        draws = gb.pair_uniforms(gb.stream_seed(step, "semantic_decision"), rows, K * A.shape[2], A.device)
        out = lab.hybrid_labels("semantic", self.unsil["semantic"], inputs, sample, warmup=warmup,
                                lam=lcfg.unsil_lambda, probe_size=probe_size, step=step,
                                gate=lcfg.unsil_gate, uniforms=draws[b, j * K + i], ranks=ranks)
        values = torch.zeros_like(A).detach()
        values[b, i, j] = out.values.to(A.dtype)
        return values, out.unsil_loss, out.logs
