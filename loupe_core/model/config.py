"""Model and loss configuration of LOUPE: plain dataclasses, built from and written to dicts.

Named configurations (the Table-4 rows, tiny test configs) are JSON files of the trainer's
config registry; they only set the fields defined here. ``from_dict`` rejects unknown keys with
a ``ValueError`` naming the key, so a typo in a JSON file never passes silently.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Sequence

LABEL_SOURCES = ("exact", "sampling", "hybrid")
TOKEN_BASELINES = ("zero", "drop")
UNSIL_ARCHS = ("mlp_attention", "conv1d", "transformer")
IMAGE_TOWERS = ("vit", "swin")
FINE_QUERIES = ("tokens", "phrases")
TOKEN_GAMES = ("encoder", "alignment")
TOKEN_TARGETS = {"encoder": ("interaction", "negative_interaction", "phi"), "alignment": ("phi", "excess", "shapley_iou")}
TOKEN_CANDIDATES = ("selected", "all")
GROUND_SCORES = ("cosine", "shapley")
REGION_HEADS = ("mlp", "conv")
GROUND_QUERIES = ("cls", "phrase")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _non_negative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _in_range(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")


class _DictMixin:
    """``from_dict`` (strict: unknown keys raise) and ``to_dict`` (JSON-ready) for dataclasses."""

    @classmethod
    def from_dict(cls, values: dict):
        if not isinstance(values, dict):
            raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown {cls.__name__} key {key!r}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _default_anchors() -> List[List[float]]:
    """No 1 x 1 shape: a one-cell region's token interaction is 0 by Eq. 7, so L_TSA cannot train it."""
    return [[2.0, 2.0], [3.0, 3.0], [2.0, 1.0], [1.0, 2.0]]


@dataclass
class ModelConfig(_DictMixin):
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
    ground_top_k: int = 0
    ground_query: str = "cls"
    ground_prior: float = 0.0
    ground_score: str = "cosine"

    def __post_init__(self):
        _choice("image_tower", self.image_tower, IMAGE_TOWERS)
        _choice("ground_score", self.ground_score, GROUND_SCORES)
        _choice("region_head", self.region_head, REGION_HEADS)
        _choice("ground_query", self.ground_query, GROUND_QUERIES)
        _non_negative_int("ground_top_k", self.ground_top_k)
        _in_range("ground_prior", self.ground_prior, 0.0, 1e6)
        for name in ("image_size", "patch_size", "image_dim", "image_depth", "image_heads",
                     "text_vocab_size", "text_dim", "text_depth", "text_heads", "text_max_tokens",
                     "embed_dim", "top_k"):
            _positive_int(name, getattr(self, name))
        _non_negative_int("num_random", self.num_random)
        if self.image_tower == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        if self.image_dim % self.image_heads:
            raise ValueError(f"image_dim ({self.image_dim}) must be divisible by image_heads ({self.image_heads})")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim ({self.text_dim}) must be divisible by text_heads ({self.text_heads})")
        _in_range("image_dropout", self.image_dropout, 0.0, 1.0)
        _in_range("text_dropout", self.text_dropout, 0.0, 1.0)
        _in_range("nms_iou", self.nms_iou, 0.0, 1.0)
        _in_range("logit_scale_init", self.logit_scale_init, 1e-6, 1e6)
        _in_range("logit_scale_max", self.logit_scale_max, self.logit_scale_init, 1e6)
        if not isinstance(self.anchors, (list, tuple)) or len(self.anchors) == 0:
            raise ValueError(f"anchors must be a non-empty list of [width, height], got {self.anchors!r}")
        for anchor in self.anchors:
            if (not isinstance(anchor, (list, tuple)) or len(anchor) != 2
                    or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in anchor)):
                raise ValueError(f"anchors entries must be [width, height] with positive sizes, got {anchor!r}")
        self.anchors = [[float(w), float(h)] for w, h in self.anchors]


@dataclass
class LossConfig(_DictMixin):
    """Which losses are on and where their Shapley labels come from.

    ``cmc``/``tsa``/``fsa``: L_CMC (Eq. 1), L_TSA (Eq. 8), L_FSA (Eq. 11) on or off.
    ``unsil``: the UNSIL networks and L_UNSIL (Eq. 12); required exactly when an enabled level's
    label source is "hybrid" (spec section 5).
    ``token_source`` / ``semantic_source``: "exact" (enumeration; token level only for tiny
    encoders), "sampling" (``*_num_samples`` Monte Carlo samples per target, the paper's 500),
    or "hybrid" (UNSIL with sampling fallback).
    ``token_baseline``: "zero" (spec **[choice]**) or "drop" (a different, cheaper game).
    ``pairs_per_step``: this many image-text pairs of each optimiser step's global batch (all
    ranks and micro-batches together; at most the batch) get token-level labels, the rows spread
    evenly over it (``global_batch.labelled_rows``), whatever the number of processes. With
    ``train.accum_steps`` A > 1, L_TSA and L_UNSIL are means over each micro-step's own labelled
    pairs, averaged over the A micro-steps: pairs_per_step >= A leaves none without a label.
    ``warmup_fraction``: the share of steps during which hybrid always samples.
    ``unsil_lambda``: lambda of Eq. 12. ``unsil_gate``: after warm-up, UNSIL answers targets only
    while the correlation of its estimates with the targets it had not yet trained on
    (``Unsil.correlation``, about the last 20 steps) is at least this; below it every target is
    sampled (0: never gate, the published hybrid; Table 4 row 4 and ``paper`` use 0). ``probe_size``: targets per level re-sampled on each
    logged step (``train.log_every``) to log UNSIL's error (0: no probe).
    ``token_game``: the game whose region scores label L_TSA: "encoder" (the paper's v1, masked
    re-encoding through both towers, Eq. 7; priced per Monte Carlo sample) or "alignment" (the
    maximum game of each caption phrase over the final patch embeddings, v(S) = max(0,
    max_{p in S} cos(p, phrase)), averaged over the caption's phrases: exact in closed form,
    ``shapley_kernels.max_game_region_values``; ``token_source`` must then be "exact").
    ``token_target``: what L_TSA's min-max labels are made of. Encoder game: "interaction"
    (Eq. 7 as published), "negative_interaction" (-Eq. 7) or "phi" (phi([R]), the region as one
    player). Alignment game: "phi", "excess" (phi([R]) minus the region's equal share of v(N)) or
    "shapley_iou" (the region's IoU with the soft patch set of each phrase's per-patch Shapley
    values, the best over the caption's phrases: how well the region fits one phrase's object).
    ``token_candidates``: "selected" (the head's top_k after NMS plus num_random random ones, for
    ``pairs_per_step`` pairs) or "all" (every candidate of every pair of the batch: dense labels).
    docs/fine_grained_alignment.md gives the measurements behind the choices.
    ``fine_contrast``: weight of the cross-image fine-grained contrastive term
    (``losses.fine_contrastive_loss``; 0: off), whose queries are the caption's word tokens
    (``fine_queries="tokens"``, FILIP's text side) or its noun phrases (``"phrases"``).
    """

    cmc: bool = True
    tsa: bool = False
    fsa: bool = False
    unsil: bool = False
    token_source: str = "sampling"
    semantic_source: str = "exact"
    token_num_samples: int = 500
    semantic_num_samples: int = 500
    token_baseline: str = "zero"
    pairs_per_step: int = 4
    unsil_arch: str = "mlp_attention"
    unsil_hidden: int = 64
    unsil_lambda: float = 1.0
    unsil_gate: float = 0.8
    warmup_fraction: float = 0.1
    probe_size: int = 4
    token_game: str = "encoder"
    token_target: str = "interaction"
    token_candidates: str = "selected"
    fine_contrast: float = 0.0
    fine_queries: str = "tokens"

    def __post_init__(self):
        for name in ("cmc", "tsa", "fsa", "unsil"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _choice("token_source", self.token_source, LABEL_SOURCES)
        _choice("semantic_source", self.semantic_source, LABEL_SOURCES)
        _choice("token_baseline", self.token_baseline, TOKEN_BASELINES)
        _choice("unsil_arch", self.unsil_arch, UNSIL_ARCHS)
        _choice("token_game", self.token_game, TOKEN_GAMES)
        _choice("token_target", self.token_target, TOKEN_TARGETS[self.token_game])
        _choice("token_candidates", self.token_candidates, TOKEN_CANDIDATES)
        if self.token_game == "alignment" and self.token_source != "exact":
            raise ValueError(f"token_game='alignment' is exact in closed form: token_source must be 'exact', "
                             f"got {self.token_source!r}")
        _choice("fine_queries", self.fine_queries, FINE_QUERIES)
        _in_range("fine_contrast", self.fine_contrast, 0.0, 1e6)
        for name in ("token_num_samples", "semantic_num_samples", "pairs_per_step", "unsil_hidden"):
            _positive_int(name, getattr(self, name))
        _non_negative_int("probe_size", self.probe_size)
        _in_range("unsil_lambda", self.unsil_lambda, 1e-12, 1e12)
        _in_range("unsil_gate", self.unsil_gate, 0.0, 1.0)
        _in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        if not (self.cmc or self.tsa or self.fsa or self.fine_contrast > 0):
            raise ValueError("at least one of cmc, tsa, fsa, fine_contrast must be on")
        hybrid = self.hybrid_levels()
        if hybrid and not self.unsil:
            raise ValueError(f"label source 'hybrid' at level(s) {hybrid} needs unsil=True")
        if self.unsil and not hybrid:
            raise ValueError("unsil=True needs an enabled level (tsa: token_source, fsa: semantic_source) "
                             "with label source 'hybrid'")

    def hybrid_levels(self) -> List[str]:
        """The enabled levels ("token", "semantic") whose labels come from the hybrid strategy."""
        levels = []
        if self.tsa and self.token_source == "hybrid":
            levels.append("token")
        if self.fsa and self.semantic_source == "hybrid":
            levels.append("semantic")
        return levels
