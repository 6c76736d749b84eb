"""Model configuration of LOUPE: plain dataclasses, built from and written to dicts.

Named configurations (the Table-4 rows, tiny test configs) are JSON files of the trainer's
config registry; they only set the fields defined here. ``from_dict`` rejects unknown keys with
a ``ValueError`` naming the key, so a typo in a JSON file never passes silently.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from shapley_kernels.checks import check_int

from ..schema import DictMixin
from ..errors import ConfigError

IMAGE_TOWERS = ("vit", "swin")
GROUND_SCORES = ("cosine", "shapley")
REGION_HEADS = ("mlp", "conv")
REGION_BOXES = ("cells", "anchors")
GROUND_QUERIES = ("cls", "phrase")


def one_of(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def in_range(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must lie in [{low}, {high}], got {value}")


def _default_anchors() -> List[List[float]]:
    """No 1 x 1 shape: a one-cell region's token interaction is 0 by Eq. 7, so L_TSA cannot train it."""
    return [[2.0, 2.0], [3.0, 3.0], [2.0, 1.0], [1.0, 2.0]]


@dataclass
class ModelConfig(DictMixin):
    """Architecture of the dual encoder and its region head.

    Image tower "vit": a ``patch_size`` convolutional patch embedding and a pre-LN transformer
    (``image_dim``, ``image_depth``, ``image_heads``). Image tower "swin": the timm model named
    ``swin_name`` (optional dependency, zero token baseline only).
    Text tower: a BERT-style post-LN GELU transformer (layer-norm eps 1e-12) over WordPiece ids,
    at most ``text_max_tokens`` tokens plus its [CLS].
    Region head (spec section 3, YOLOv3-style anchors **[choice]**): ``anchors`` is a list of
    box shapes [width, height] in units of the final patch grid; a candidate is a
    (cell, anchor) pair with one confidence logit; ``top_k`` candidates are kept after NMS at
    ``nms_iou`` and ``num_random`` (cell, anchor) pairs are drawn uniformly from the rest as
    contrast candidates for L_TSA. Candidates whose region holds one patch (1 x 1 anchors,
    clipped boxes at the border) get no L_TSA label (their Eq. 7 interaction is 0 whatever the
    model does).
    An anchor may also be [width, height, dx, dy]: its centre shifted by (dx, dy) cells from the
    cell's centre (|dx|, |dy| <= 0.5; ``region_head.with_offsets``). ``region_boxes``: a candidate's
    box is the rectangle of its region's cells ("cells", the spec's choice) or its anchor box in
    continuous pixels ("anchors", issue 31: boxes that can fit objects smaller than the cells).
    ``region_head``: "mlp" (per-cell LayerNorm-Linear-GELU-Linear) or "conv" (the same with a
    3 x 3 convolution over the patch grid first, so each cell's confidences see its neighbours).
    Both the global and the region-phrase alignment logit scales start at
    ``logit_scale_init`` (CLIP's 1/0.07) and are clamped at ``logit_scale_max``.
    Grounding (``LoupeModel.ground_scores``): the head's top ``ground_top_k`` candidates after NMS
    (0: ``top_k``) are scored by the region logit scale times a region-text match plus
    ``ground_prior`` times log p(R); the text is the expression's [CLS] (``ground_query="cls"``)
    or the mean embedding of its first noun phrase (``"phrase"``); the match is the cosine of the
    region's pooled embedding (``ground_score="cosine"``) or the region's exact excess Shapley
    value in the text's maximum game over the patches (``"shapley"``,
    ``shapley_kernels.max_game_region_values``, docs/fine_grained_alignment.md).
    ``ground_refine`` (issue 31): the grounding boxes are moved, size kept, to the centroid of the
    query's per-cell evidence around them (``eval.grounding.refined_boxes``), so that a box can
    sit between cell centres.
    Locked-image tuning (LiT): ``image_init`` names a trained run (directory, checkpoint file or
    ``save_pretrained`` folder) whose image tower initialises this one (the pipeline loads it;
    the towers must match), and ``lock_image`` freezes the image tower (no gradient, always in
    eval mode), so that only the text side and the heads train.
    Pretrained towers (``loupe_core.model.pretrained``, read by ``create_model`` and ``loupe
    pretrain``, never downloaded): ``image_weights`` a timm checkpoint file (ViT with a class
    token, or Swin for ``image_tower="swin"``) whose sizes (``image_dim``, ``image_depth``,
    ``patch_size``) are read from its tensors and whose heads come from ``image_timm_model`` (a
    timm model name, built without weights to read its sizes) or timm's 64-wide heads;
    ``text_weights`` a Hugging Face BERT-family folder whose sizes and tokenizer the text tower
    takes.
    """

    image_tower: str = "vit"
    image_size: int = 32
    patch_size: int = 8
    image_dim: int = 32
    image_depth: int = 2
    image_heads: int = 2
    image_dropout: float = 0.0
    swin_name: str = "swin_tiny_patch4_window7_224"
    text_vocab_size: int = 30522
    text_dim: int = 32
    text_depth: int = 2
    text_heads: int = 2
    text_max_tokens: int = 60
    text_dropout: float = 0.1
    embed_dim: int = 32
    anchors: List[List[float]] = field(default_factory=_default_anchors)
    top_k: int = 4
    num_random: int = 2
    nms_iou: float = 0.5
    logit_scale_init: float = 1.0 / 0.07
    logit_scale_max: float = 100.0
    region_head: str = "mlp"
    region_boxes: str = "cells"
    ground_top_k: int = 0
    ground_query: str = "cls"
    ground_prior: float = 0.0
    ground_refine: bool = False
    ground_score: str = "cosine"
    image_init: Optional[str] = None
    lock_image: bool = False
    image_weights: Optional[str] = None
    image_timm_model: Optional[str] = None
    text_weights: Optional[str] = None

    def __post_init__(self):
        one_of("image_tower", self.image_tower, IMAGE_TOWERS)
        one_of("ground_score", self.ground_score, GROUND_SCORES)
        one_of("region_head", self.region_head, REGION_HEADS)
        one_of("region_boxes", self.region_boxes, REGION_BOXES)
        one_of("ground_query", self.ground_query, GROUND_QUERIES)
        check_int("ground_top_k", self.ground_top_k, 0)
        in_range("ground_prior", self.ground_prior, 0.0, 1e6)
        for name in ("image_size", "patch_size", "image_dim", "image_depth", "image_heads",
                     "text_vocab_size", "text_dim", "text_depth", "text_heads", "text_max_tokens",
                     "embed_dim", "top_k"):
            check_int(name, getattr(self, name), 1)
        check_int("num_random", self.num_random, 0)
        if self.image_tower == "vit" and self.image_size % self.patch_size:
            raise ConfigError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                              f"({self.patch_size})")
        if self.image_dim % self.image_heads:
            raise ConfigError(f"image_dim ({self.image_dim}) must be divisible by image_heads ({self.image_heads})")
        if self.text_dim % self.text_heads:
            raise ConfigError(f"text_dim ({self.text_dim}) must be divisible by text_heads ({self.text_heads})")
        in_range("image_dropout", self.image_dropout, 0.0, 1.0)
        in_range("text_dropout", self.text_dropout, 0.0, 1.0)
        in_range("nms_iou", self.nms_iou, 0.0, 1.0)
        in_range("logit_scale_init", self.logit_scale_init, 1e-6, 1e6)
        in_range("logit_scale_max", self.logit_scale_max, self.logit_scale_init, 1e6)
        if not isinstance(self.anchors, (list, tuple)) or len(self.anchors) == 0:
            raise ConfigError(f"anchors must be a non-empty list of [width, height], got {self.anchors!r}")
        for anchor in self.anchors:
            if (not isinstance(anchor, (list, tuple)) or len(anchor) not in (2, 4)
                    or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
                           for s in anchor)
                    or not (anchor[0] > 0 and anchor[1] > 0) or any(abs(d) > 0.5 for d in anchor[2:])):
                raise ConfigError(f"anchors entries must be [width, height] with positive sizes, or [width, height, "
                                 f"dx, dy] with |dx|, |dy| <= 0.5, got {anchor!r}")
        self.anchors = [[float(v) for v in anchor] for anchor in self.anchors]
