"""The LOUPE model: dual encoder + region head, features only (docs/CONTRACTS.md section 5).

``encode_images`` / ``encode_texts`` (and their ``*_tokens`` forms that also return the towers'
input tokens, the players of the token-level game), ``phrase_embeddings``, the region head's
``candidates`` and ``regions``, ``propose_regions``, ``alignment_logits``, ``token_masks`` and
``ground_scores``; every embedding they return is L2-normalised. The training losses and their
Shapley labels live in ``loupe_core.objective`` (``LoupeObjective`` wraps this model).
"""
import math
from typing import NamedTuple, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import shapley_kernels as sk

from .config import ModelConfig
from .region_head import Geometry, RegionHead, cells_in_boxes
from .towers import TextTower, build_image_tower

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


def as_config(cls, value):
    """``value`` as a ``cls`` dataclass: itself, ``cls.from_dict`` of a dict, ``cls()`` for None."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


class LoupeModel(nn.Module):
    """LOUPE dual encoder with its region head. ``LoupeModel(model_config)``: a dataclass or plain dict."""

    def __init__(self, model_config: Union[ModelConfig, dict, None] = None):
        super().__init__()
        self.config = cfg = as_config(ModelConfig, model_config)
        self.image_tower = build_image_tower(cfg)
        self.text_tower = TextTower(cfg)
        init = math.log(cfg.logit_scale_init)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.region_logit_scale = nn.Parameter(torch.tensor(init))
        self.region_head = RegionHead(cfg.embed_dim, cfg.anchors, cfg.region_head, cfg.region_boxes)
        if cfg.lock_image:
            self.image_tower.requires_grad_(False)

    def train(self, mode: bool = True):
        """``nn.Module.train``; a locked image tower (``lock_image``) stays in eval mode."""
        super().train(mode)
        if self.config.lock_image:
            self.image_tower.eval()
        return self

    def compile_towers(self, **options) -> None:
        """``torch.compile(**options)`` the dense transformer pass of both towers for training
        forwards (``TransformerTower.compile_dense``: calls without grad, such as the token-level
        Shapley labels and evaluation, stay eager; the state dict keys do not change). The Swin
        image tower is not supported (ValueError)."""
        if self.config.image_tower != "vit":
            raise ValueError(f"compiling the towers needs the vit image tower, not {self.config.image_tower!r}")
        for tower in (self.image_tower, self.text_tower):
            tower.tower.compile_dense(**options)

    # ------------------------------------------------------------------ scales
    def _scale(self, parameter: torch.Tensor) -> torch.Tensor:
        return parameter.exp().clamp(max=self.config.logit_scale_max)

    def contrastive_scale(self) -> torch.Tensor:
        """L_CMC's (image-text, global) logit scale, exponentiated and clamped, with its graph: scalar."""
        return self._scale(self.logit_scale)

    def region_scale(self) -> torch.Tensor:
        """The region-phrase (and patch-text) logit scale, exponentiated and clamped, with its graph: scalar."""
        return self._scale(self.region_logit_scale)

    def alignment_scale(self) -> torch.Tensor:
        """``region_scale`` detached: scalar."""
        return self._scale(self.region_logit_scale.detach())

    # ------------------------------------------------------------------ encoders
    def encode_image_tokens(self, images: torch.Tensor):
        """(the image tower's input tokens float[B, N_tokens, w], ImageFeatures) of images float[B, 3, S, S]."""
        tokens = self.image_tower.embed_tokens(images)
        cls, final = self.image_tower.encode(tokens)
        feats = ImageFeatures(F.normalize(self.image_tower.project(cls), dim=-1),
                              F.normalize(self.image_tower.project(final), dim=-1),
                              self.image_tower.final_grid, self.image_tower.final_cell)
        return tokens, feats

    def encode_text_tokens(self, input_ids: torch.Tensor, text_mask: torch.Tensor):
        """(the text tower's input tokens float[B, L, w], TextFeatures) of input_ids long[B, L], text_mask bool[B, L]."""
        tokens = self.text_tower.embed_tokens(input_ids)
        return tokens, self.encode_text_embeddings(tokens, text_mask)

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """images float[B, 3, S, S] -> ImageFeatures (global and final patch embeddings)."""
        return self.encode_image_tokens(images)[1]

    def encode_texts(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> TextFeatures:
        """input_ids long[B, L], text_mask bool[B, L] -> TextFeatures."""
        return self.encode_text_tokens(input_ids, text_mask)[1]

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

    def token_masks(self, boxes: torch.Tensor, final_masks: torch.Tensor) -> torch.Tensor:
        """The token-level game's players of candidate regions: bool[..., N_tokens], the cells of the
        image tower's token grid in boxes float[..., 4]; final_masks bool[..., N_I] (the regions'
        final-grid cells) themselves where the token grid is the final grid (ViT)."""
        tower = self.image_tower
        if tower.token_grid == tower.final_grid:
            return final_masks
        return cells_in_boxes(boxes, tower.token_grid, tower.token_cell)

    def candidates(self, feats: ImageFeatures):
        """(confidence logits float[B, P] of every (cell, anchor) candidate, their ``Geometry``)."""
        return self.region_head(feats.patch_emb, feats.grid), self._geometry(feats)

    def regions(self, feats: ImageFeatures, logits: torch.Tensor, geometry: Geometry, index: torch.Tensor) -> Regions:
        """The candidates ``index`` long[B, K] of each image as ``Regions`` (logits float[B, P])."""
        masks = geometry.masks[index]
        return Regions(geometry.boxes[index], torch.sigmoid(logits.gather(1, index)), masks,
                       masked_mean_embedding(masks, feats.patch_emb))

    def propose_regions(self, image_feats: ImageFeatures, top_k: int) -> Regions:
        """The top_k candidate regions per image after NMS, best first (no random candidates)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        logits, geometry = self.candidates(image_feats)
        index = self.region_head.select(logits, geometry, top_k, 0, self.config.nms_iou)
        return self.regions(image_feats, logits, geometry, index)

    def alignment_logits(self, region_emb: torch.Tensor, phrase_emb: torch.Tensor) -> torch.Tensor:
        """The region-phrase alignment matrix A float[B, K, M] (spec section 4), with its graph:
        region scale x cosine of region_emb float[B, K, d] with phrase_emb float[B, M, d]."""
        return self.region_scale() * region_emb @ phrase_emb.transpose(1, 2)

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
