"""The LOUPE model: dual encoder + region head + losses (docs/CONTRACTS.md section 5).

Training: ``model(batch, step=, total_steps=, bank=)`` returns ``LossOutput`` with the enabled
terms of L = L_CMC + L_TSA + L_FSA (+ L_UNSIL). Inference: ``model(batch, embed_only=True)``,
``encode_images``, ``encode_texts``, ``propose_regions``, ``phrase_embeddings``; every
embedding they return is L2-normalised.
"""
import math
import time
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import shapley_kernels as sk

from .. import global_batch as gb
from .. import labels as lab
from ..losses import ContrastiveBank, LossOutput, cmc_loss, fine_contrastive_loss, fsa_loss, tsa_loss
from ..unsil import Unsil, UnsilInputs
from .config import LossConfig, ModelConfig
from .region_head import Geometry, RegionHead, cells_in_boxes
from .towers import TextTower, build_image_tower

BATCH_KEYS = ("images", "input_ids", "text_mask")
PHRASE_KEYS = ("phrase_tokens", "phrase_mask")


class ImageFeatures(NamedTuple):
    """global_emb float[B, d]; patch_emb float[B, N_I, d] (final grid, row-major); grid (gh, gw);
    patch_size: pixels per final cell."""

    global_emb: torch.Tensor
    patch_emb: torch.Tensor
    grid: Tuple[int, int]
    patch_size: float


class TextFeatures(NamedTuple):
    """global_emb float[B, d]; token_emb float[B, L, d] (0 at padding)."""

    global_emb: torch.Tensor
    token_emb: torch.Tensor


class Regions(NamedTuple):
    """boxes float[B, K, 4] xyxy pixels; scores float[B, K] = p(R); patch_masks bool[B, K, N_I];
    emb float[B, K, d]."""

    boxes: torch.Tensor
    scores: torch.Tensor
    patch_masks: torch.Tensor
    emb: torch.Tensor


def masked_mean_embedding(masks: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of emb float[B, N, d] over masks bool[B, K, N] -> float[B, K, d] (0 if empty)."""
    weights = masks.to(emb.dtype)
    pooled = weights @ emb / weights.sum(dim=2, keepdim=True).clamp(min=1.0)
    return F.normalize(pooled, dim=-1)


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


def _as_config(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


def alignment_game_labels(patch_emb: torch.Tensor, phrases: torch.Tensor, phrase_mask: torch.Tensor,
                          region_masks: torch.Tensor, score):
    """Exact region scores in the alignment game of B captions: float[B, K] (a dict of them for a
    tuple ``score``).

    patch_emb float[B, N, d], phrases float[B, M, d] (L2-normalised, 0 at padding), phrase_mask
    bool[B, M], region_masks bool[B or 1, K, N]; score "phi", "excess", "shapley_iou" or a tuple of
    them (``shapley_kernels.max_game_region_values``). Each phrase j gives the maximum game
    v_j(S) = max(0, max_{p in S} cos(p, phrase_j)). "phi" and "excess" are averaged over the
    caption's phrases, i.e. the region's score in the mean game, the late-interaction similarity
    of the caption with the patches in S; "shapley_iou" takes the best phrase, how well the region
    fits one phrase's object (a mean would rank a box that half fits two objects above one that
    fits one). 0 for a caption without a phrase.
    """
    cosines = phrases @ patch_emb.transpose(1, 2)                                         # [B, M, N]
    names = (score,) if isinstance(score, str) else tuple(score)
    scores = sk.max_game_region_values(cosines, region_masks[:, None], score=names)       # {name: [B, M, K]}
    present = phrase_mask[..., None]
    weight = present.to(cosines.dtype)

    def over_phrases(name, value):
        if name == "shapley_iou":
            return value.masked_fill(~present, 0.0).amax(dim=1)   # IoUs are >= 0: 0 without a phrase
        return (value * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)

    out = {name: over_phrases(name, value) for name, value in scores.items()}
    return out[score] if isinstance(score, str) else out


class LoupeModel(nn.Module):
    """LOUPE dual encoder. ``LoupeModel(model_config, loss_config)``: dataclasses or plain dicts."""

    def __init__(self, model_config: Union[ModelConfig, dict, None] = None,
                 loss_config: Union[LossConfig, dict, None] = None):
        super().__init__()
        self.config = cfg = _as_config(ModelConfig, model_config)
        self.loss_config = lcfg = _as_config(LossConfig, loss_config)
        if lcfg.token_baseline == "drop" and cfg.image_tower == "swin" and lcfg.tsa:
            raise ValueError("token_baseline='drop' is not defined for the Swin image tower; use 'zero'")
        self.image_tower = build_image_tower(cfg)
        self.text_tower = TextTower(cfg)
        init = math.log(cfg.logit_scale_init)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.region_logit_scale = nn.Parameter(torch.tensor(init))
        self.region_head = RegionHead(cfg.embed_dim, cfg.anchors, cfg.region_head)
        d, n_final = cfg.embed_dim, self.image_tower.final_grid[0] * self.image_tower.final_grid[1]
        shapes = {"token": (d, 1 + n_final + cfg.text_max_tokens),
                  "semantic": (2 * d, 3 + cfg.top_k + cfg.text_max_tokens)}
        self.unsil = nn.ModuleDict({
            level: Unsil(lcfg.unsil_arch, shapes[level][0], d, lcfg.unsil_hidden, shapes[level][1])
            for level in lcfg.hybrid_levels()})

    # ------------------------------------------------------------------ scales
    def _scale(self, parameter: torch.Tensor) -> torch.Tensor:
        return parameter.exp().clamp(max=self.config.logit_scale_max)

    def global_scale(self) -> torch.Tensor:
        """The image-text (global, L_CMC) logit scale, exponentiated and clamped, detached: scalar."""
        return self._scale(self.logit_scale.detach())

    def alignment_scale(self) -> torch.Tensor:
        """The region-phrase (and patch-text) logit scale, exponentiated and clamped, detached: scalar."""
        return self._scale(self.region_logit_scale.detach())

    # ------------------------------------------------------------------ encoders
    def _encode_image_tokens(self, images):
        tokens = self.image_tower.embed_tokens(images)
        cls, final = self.image_tower.encode(tokens)
        feats = ImageFeatures(F.normalize(self.image_tower.project(cls), dim=-1),
                              F.normalize(self.image_tower.project(final), dim=-1),
                              self.image_tower.final_grid, self.image_tower.final_cell)
        return tokens, feats

    def _encode_text_tokens(self, input_ids, text_mask):
        tokens = self.text_tower.embed_tokens(input_ids)
        return tokens, self.encode_text_embeddings(tokens, text_mask)

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """images float[B, 3, S, S] -> ImageFeatures (global and final patch embeddings)."""
        return self._encode_image_tokens(images)[1]

    def encode_texts(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> TextFeatures:
        """input_ids long[B, L], text_mask bool[B, L] -> TextFeatures."""
        return self._encode_text_tokens(input_ids, text_mask)[1]

    def encode_text_embeddings(self, tokens: torch.Tensor, text_mask: torch.Tensor) -> TextFeatures:
        """Word-token embeddings float[B, L, text_dim] (``text_tower.embed_tokens``' output, before
        [CLS] and position embeddings: token j takes position j), text_mask bool[B, L] ->
        TextFeatures (global_emb float[B, d], token_emb float[B, L, d], 0 where masked). Lets a
        caller place its own vectors among the words (CoOp's learned prompt context)."""
        if not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool \
                or text_mask.shape != tokens.shape[:2]:
            raise ValueError(f"text_mask must be a bool tensor of shape {list(tokens.shape[:2])} (the tokens' [B, L])")
        cls, final = self.text_tower.encode(tokens, text_mask)
        token_emb = F.normalize(self.text_tower.project(final), dim=-1) * text_mask[..., None]
        return TextFeatures(F.normalize(self.text_tower.project(cls), dim=-1), token_emb)

    def phrase_embeddings(self, text_feats: TextFeatures, phrase_tokens: torch.Tensor) -> torch.Tensor:
        """Mean of each phrase's token embeddings, L2-normalised: phrase_tokens bool[B, M, L] -> float[B, M, d]."""
        B, L = text_feats.token_emb.shape[:2]
        if phrase_tokens.dtype != torch.bool or phrase_tokens.dim() != 3 or phrase_tokens.shape[0] != B \
                or phrase_tokens.shape[2] != L:
            raise ValueError(f"phrase_tokens must be bool[{B}, M, {L}], got {phrase_tokens.dtype} "
                             f"{list(phrase_tokens.shape)}")
        return masked_mean_embedding(phrase_tokens, text_feats.token_emb)

    # ------------------------------------------------------------------ regions
    def _geometry(self, feats: ImageFeatures) -> Geometry:
        """Candidate boxes in float32 (float64 for a float64 model), also under bf16 autocast."""
        dtype = torch.float64 if feats.patch_emb.dtype == torch.float64 else torch.float32
        return self.region_head.geometry(feats.grid, feats.patch_size, feats.patch_emb.device, dtype)

    def _token_masks(self, boxes: torch.Tensor, final_masks: torch.Tensor) -> torch.Tensor:
        """The token-level game's players of candidate regions: bool[..., N_tokens], the cells of the
        image tower's token grid in boxes float[..., 4]; final_masks bool[..., N_I] (the regions'
        final-grid cells) themselves where the token grid is the final grid (ViT)."""
        tower = self.image_tower
        if tower.token_grid == tower.final_grid:
            return final_masks
        return cells_in_boxes(boxes, tower.token_grid, tower.token_cell)

    def _regions(self, feats: ImageFeatures, logits, geometry, index) -> Regions:
        masks = geometry.masks[index]
        return Regions(geometry.boxes[index], torch.sigmoid(logits.gather(1, index)), masks,
                       masked_mean_embedding(masks, feats.patch_emb))

    def propose_regions(self, image_feats: ImageFeatures, top_k: int) -> Regions:
        """The top_k candidate regions per image after NMS, best first (no random candidates)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        logits = self.region_head(image_feats.patch_emb, image_feats.grid)
        geometry = self._geometry(image_feats)
        index = self.region_head.select(logits, geometry, top_k, 0, self.config.nms_iou)
        return self._regions(image_feats, logits, geometry, index)

    def ground_scores(self, patch_emb: torch.Tensor, regions: Regions, query_emb: torch.Tensor) -> torch.Tensor:
        """float[R, K]: how well each of the K regions of an image matches the query of that image.

        patch_emb float[R, N, d] (final patch embeddings of each query's image), regions: the
        image's ``Regions`` (fields with leading dims [R, K]), query_emb float[R, d] (L2-normalised).
        Score: region logit scale x match + ``ground_prior`` x log p(R), the match being the cosine
        of the pooled region embedding (``ground_score="cosine"``) or the region's exact excess
        Shapley value in the query's maximum game over the patches (``"shapley"``).
        """
        cfg = self.config
        if cfg.ground_score == "cosine":
            match = (regions.emb @ query_emb[:, :, None]).squeeze(2)
        else:
            cosines = (patch_emb @ query_emb[:, :, None]).squeeze(2).float()  # [R, N]
            match = sk.max_game_region_values(cosines, regions.patch_masks, score="excess").to(patch_emb.dtype)
        scores = self.alignment_scale() * match
        if cfg.ground_prior > 0:
            scores = scores + cfg.ground_prior * regions.scores.clamp(min=1e-12).log()
        return scores

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, step: int = 0, total_steps: int = 1,
                bank: Optional[ContrastiveBank] = None, embed_only: bool = False, diagnostics: bool = True):
        """Training: LossOutput(total, terms, logs). ``embed_only``: (img_global, txt_global) float[b, d].

        ``diagnostics=False`` skips UNSIL's probe (fresh samples that only feed the
        ``unsil_probe_error_*`` logs); the trainer asks for it on the steps it logs.
        """
        lcfg = self.loss_config
        uses_phrases = (lcfg.fsa or (lcfg.fine_contrast > 0 and lcfg.fine_queries == "phrases")
                        or (lcfg.tsa and lcfg.token_game == "alignment"))
        needed = BATCH_KEYS + (PHRASE_KEYS if uses_phrases and not embed_only else ())
        for key in needed:
            if key not in batch:
                raise ValueError(f"batch is missing {key!r} (needs {list(needed)})")
        image_tokens, img = self._encode_image_tokens(batch["images"])
        text_tokens, txt = self._encode_text_tokens(batch["input_ids"], batch["text_mask"])
        if embed_only:
            return img.global_emb, txt.global_emb
        warmup = step < lcfg.warmup_fraction * total_steps
        probe_size = lcfg.probe_size if diagnostics else 0
        rows, size = gb.batch_rows(batch)  # each pair's row in the step's global batch: budget and seeds (DDP)
        terms, logs, unsil_terms = {}, {}, []
        if lcfg.cmc:
            terms["cmc"] = cmc_loss(img.global_emb, txt.global_emb, self._scale(self.logit_scale), bank)
        phrases = self.phrase_embeddings(txt, batch["phrase_tokens"]) if uses_phrases else None
        if lcfg.fine_contrast > 0:
            queries, query_mask = ((txt.token_emb, batch["text_mask"]) if lcfg.fine_queries == "tokens"
                                   else (phrases, batch["phrase_mask"]))
            terms["fine"] = lcfg.fine_contrast * fine_contrastive_loss(
                queries, query_mask, img.patch_emb, self._scale(self.region_logit_scale))
        if lcfg.tsa or lcfg.fsa:
            logits = self.region_head(img.patch_emb, img.grid)
            geometry = self._geometry(img)
            # the head's selection (NMS on the host, per image) only where a loss reads it: dense
            # alignment-game labels without L_FSA use every candidate
            dense_only = not lcfg.fsa and lcfg.token_game == "alignment" and lcfg.token_candidates == "all"
            index = None if dense_only else self.region_head.select(
                logits.detach(), geometry, self.config.top_k, self.config.num_random if lcfg.tsa else 0,
                self.config.nms_iou, gb.pair_uniforms(gb.stream_seed(step, "candidates"), rows, logits.shape[1]))
        if lcfg.tsa and lcfg.token_game == "alignment":
            if lcfg.token_candidates == "selected":
                label_logits, label_masks = logits.gather(1, index), geometry.masks[index]
            else:  # every candidate: one geometry shared by the batch
                label_logits, label_masks = logits, geometry.masks[None]
            start = time.perf_counter()
            values, labelled = self._alignment_token_labels(img.patch_emb, phrases, batch["phrase_mask"],
                                                            label_masks)
            logs["label_time_token"] = time.perf_counter() - start
            terms["tsa"] = tsa_loss(label_logits, values, labelled)
        elif lcfg.tsa:
            P = gb.label_rows(rows, size, lcfg.pairs_per_step)  # this batch's pairs among the step's labelled ones
            values, labelled, unsil_term, level_logs = self._token_labels(
                image_tokens[P], text_tokens[P], batch["text_mask"][P], img.patch_emb[P], txt.token_emb[P],
                geometry, index[P], step, warmup, probe_size, rows[P])
            unsil_terms.append(unsil_term)
            logs.update(level_logs)
            terms["tsa"] = tsa_loss(logits.gather(1, index)[P], values, labelled)
        if lcfg.fsa:
            top = index[:, : min(self.config.top_k, index.shape[1])]
            regions = self._regions(img, logits, geometry, top)
            A = self._scale(self.region_logit_scale) * regions.emb @ phrases.transpose(1, 2)
            region_mask = torch.ones(A.shape[:2], dtype=torch.bool, device=A.device)
            values, unsil_term, level_logs = self._semantic_labels(
                A, region_mask, batch["phrase_mask"], img.global_emb, txt.global_emb, regions.emb, phrases,
                step, warmup, probe_size)
            unsil_terms.append(unsil_term)
            logs.update(level_logs)
            terms["fsa"] = fsa_loss(A, values, region_mask, batch["phrase_mask"])
        if self.unsil:
            terms["unsil"] = sum(term for term in unsil_terms if term is not None)
        logs["logit_scale"] = float(self._scale(self.logit_scale.detach()))
        logs["region_logit_scale"] = float(self._scale(self.region_logit_scale.detach()))
        total = sum(terms.values())
        return LossOutput(total, terms, logs)

    def _alignment_token_labels(self, patch_emb, phrases, phrase_mask, region_masks):
        """Token-level labels in the alignment game (``token_game="alignment"``), exact: (values
        float[B, K] by ``alignment_game_labels``, labelled bool[B, K]: False for captions without
        a phrase). Shapes as in ``alignment_game_labels``."""
        with torch.no_grad():
            values = alignment_game_labels(patch_emb.detach().float(), phrases.detach().float(), phrase_mask,
                                           region_masks, self.loss_config.token_target)
        labelled = phrase_mask.any(dim=1, keepdim=True).expand(values.shape[0], values.shape[1])
        return values.to(patch_emb.dtype), labelled

    def _token_labels(self, image_tokens, text_tokens, text_mask, patch_emb, token_emb, geometry, index,
                      step, warmup, probe_size, rows):
        """Token-level labels float[P, K'] of the candidates ``index`` LongTensor[P, K'] of P pairs
        (global rows ``rows`` long[P]: each pair's draws its own, ``global_batch.token_scores_by_pair``).

        Returns (values, labelled bool[P, K'], L_UNSIL of the level or None where the source is
        not hybrid, logs). A one-patch region's interaction is 0 by Eq. 7 whatever the model does,
        so it carries no label (``labelled`` False, left out of L_TSA's min-max and loss): kept in,
        its constant 0 becomes the top label of every image whose other candidates interact
        negatively, and the head learns to propose single background cells."""
        lcfg = self.loss_config
        final_masks = geometry.masks[index]
        token_masks = self._token_masks(geometry.boxes[index], final_masks)
        common = dict(baseline=lcfg.token_baseline, num_samples=lcfg.token_num_samples, score=lcfg.token_target)
        towers = (self.image_tower, self.text_tower)
        # Eq. 7 is 0 for one patch whatever the model does; phi([R]) of one patch is informative
        labelled = token_masks.sum(dim=2) >= (1 if lcfg.token_target == "phi" else 2)
        if lcfg.token_source != "hybrid":
            start = time.perf_counter()
            values = gb.token_scores_by_pair(lab.token_interactions, None, towers, image_tokens, text_tokens,
                                             text_mask, token_masks, rows, lab.step_seed(step, "token"),
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
                                                          pair.device)[pair, region])
        values = patch_emb.new_zeros(P * K)
        values[flat] = out.values.to(values.dtype)
        return values.reshape(P, K), labelled, out.unsil_loss, out.logs

    def _semantic_labels(self, A, region_mask, phrase_mask, img_global, txt_global, region_emb, phrase_emb,
                         step, warmup, probe_size):
        """Semantic-level labels float[B, K, M] on the detached A: (values, L_UNSIL or None, logs)."""
        lcfg = self.loss_config
        if lcfg.semantic_source != "hybrid":
            start = time.perf_counter()
            values = lab.semantic_interactions(A, region_mask, phrase_mask, method=lcfg.semantic_source,
                                               num_samples=lcfg.semantic_num_samples,
                                               seed=lab.step_seed(step, "semantic"))
            return values, None, {"label_time_semantic": time.perf_counter() - start}
        targets = (region_mask[:, :, None] & phrase_mask[:, None, :]).nonzero()
        b, i, j = targets.unbind(1)
        inputs = semantic_unsil_inputs(img_global, txt_global, region_emb, phrase_emb, region_mask, phrase_mask,
                                       targets)

        def sample(which, seed):
            return lab.semantic_target_interactions(A, region_mask, phrase_mask, targets[which],
                                                    num_samples=lcfg.semantic_num_samples, seed=seed)

        out = lab.hybrid_labels("semantic", self.unsil["semantic"], inputs, sample, warmup=warmup,
                                lam=lcfg.unsil_lambda, probe_size=probe_size, step=step,
                                gate=lcfg.unsil_gate)
        values = torch.zeros_like(A).detach()
        values[b, i, j] = out.values.to(A.dtype)
        return values, out.unsil_loss, out.logs
