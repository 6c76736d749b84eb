"""Loss configuration of LOUPE's training objective: a plain dataclass, built from and written to dicts
(``from_dict`` rejects unknown keys with a ``ConfigError`` naming the key)."""
from dataclasses import dataclass, field
from typing import Dict, List

from shapley_kernels.checks import check_int

from ..model.config import in_range, one_of
from ..schema import DictMixin
from ..errors import ConfigError

LABEL_SOURCES = ("exact", "sampling", "hybrid")
TOKEN_BASELINES = ("zero", "drop")
UNSIL_ARCHS = ("mlp_attention",)  # the paper's kept design (objective/unsil.py)
FINE_QUERIES = ("tokens", "phrases")
TOKEN_GAMES = ("encoder", "alignment")
TOKEN_TARGETS = {"encoder": ("interaction", "negative_interaction", "phi"), "alignment": ("phi", "excess", "shapley_iou")}
TOKEN_CANDIDATES = ("selected", "all")


@dataclass
class LossConfig(DictMixin):
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
    ``terms``: the sections of registered loss terms that have no keys of their own here
    (``objective.terms``): term name -> {field: value}, each built and validated by its term's
    ``Section`` when the objective is built; a named term is on.
    ``fine_contrast``: weight of the cross-image fine-grained contrastive term
    (``losses.fine_contrastive_loss``; 0: off), whose queries are the caption's word tokens
    (``fine_queries="tokens"``, FILIP's text side) or its noun phrases (``"phrases"``).
    ``pacl``: weight of PACL's patch-level contrastive term (``losses.pacl_loss``: each text's
    [CLS] pools the image's patches by their compatibility with it; 0: off).
    ``simclr``: weight of SLIP's self-supervised term (``losses.simclr_loss`` on two random views
    of each image, ``data.augment.random_view``, through an MLP head; 0: off) at temperature
    ``simclr_temperature``.
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
    pacl: float = 0.0
    simclr: float = 0.0
    simclr_temperature: float = 0.1
    terms: Dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("cmc", "tsa", "fsa", "unsil"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        one_of("token_source", self.token_source, LABEL_SOURCES)
        one_of("semantic_source", self.semantic_source, LABEL_SOURCES)
        one_of("token_baseline", self.token_baseline, TOKEN_BASELINES)
        one_of("unsil_arch", self.unsil_arch, UNSIL_ARCHS)
        one_of("token_game", self.token_game, TOKEN_GAMES)
        one_of("token_target", self.token_target, TOKEN_TARGETS[self.token_game])
        one_of("token_candidates", self.token_candidates, TOKEN_CANDIDATES)
        if self.token_game == "alignment" and self.token_source != "exact":
            raise ConfigError(f"token_game='alignment' is exact in closed form: token_source must be 'exact', "
                              f"got {self.token_source!r}")
        one_of("fine_queries", self.fine_queries, FINE_QUERIES)
        in_range("fine_contrast", self.fine_contrast, 0.0, 1e6)
        in_range("pacl", self.pacl, 0.0, 1e6)
        in_range("simclr", self.simclr, 0.0, 1e6)
        in_range("simclr_temperature", self.simclr_temperature, 1e-6, 1e6)
        for name in ("token_num_samples", "semantic_num_samples", "pairs_per_step", "unsil_hidden"):
            check_int(name, getattr(self, name), 1)
        check_int("probe_size", self.probe_size, 0)
        in_range("unsil_lambda", self.unsil_lambda, 1e-12, 1e12)
        in_range("unsil_gate", self.unsil_gate, 0.0, 1.0)
        in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        if not (self.cmc or self.tsa or self.fsa or self.fine_contrast > 0 or self.pacl > 0 or self.terms):
            raise ConfigError("at least one of cmc, tsa, fsa, fine_contrast, pacl (or a term of loss.terms) "
                              "must be on")
        hybrid = self.hybrid_levels()
        if hybrid and not self.unsil:
            raise ConfigError(f"label source 'hybrid' at level(s) {hybrid} needs unsil=True")
        if self.unsil and not hybrid:
            raise ConfigError("unsil=True needs an enabled level (tsa: token_source, fsa: semantic_source) "
                              "with label source 'hybrid'")

    def hybrid_levels(self) -> List[str]:
        """The enabled levels ("token", "semantic") whose labels come from the hybrid strategy."""
        levels = []
        if self.tsa and self.token_source == "hybrid":
            levels.append("token")
        if self.fsa and self.semantic_source == "hybrid":
            levels.append("semantic")
        return levels
