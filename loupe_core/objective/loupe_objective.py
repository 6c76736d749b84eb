"""LOUPE's training objective: L = L_CMC + fine-grained contrast + L_TSA + L_FSA (+ L_UNSIL) on a
``LoupeModel`` (spec sections 1-5; docs/CONTRACTS.md section 5), a sum of registered loss terms.

``LoupeObjective(model, loss_config)`` wraps the model (its features: encoders, region head,
alignment logits) with what training adds to it: the loss terms the configuration names
(``objective.terms``, built in the registry's order, each with its typed section), the Shapley
label sources they train on (``label_sources``) and UNSIL's networks. ``objective(batch, step)``
(``step`` a ``StepContext``, built by the trainer) returns ``LossOutput`` with the built terms;
``objective(batch, embed_only=True)`` the global embeddings (the trainer's contrastive bank). The
trainer trains and checkpoints the objective (state dict keys ``model.*``, ``unsil.*`` and the
terms' own parameters under ``terms.<name>.*``).
"""
import contextlib
from typing import Optional, Union

from torch import nn

from .. import global_batch as gb
from ..errors import ConfigError
from ..model import LoupeModel, ModelConfig
from ..model.loupe import as_config
from .config import LossConfig
from .features import ForwardView
from .losses import LossOutput
from .step import StepContext
from .terms import TERMS
from .unsil import Unsil

BATCH_KEYS = ("images", "input_ids", "text_mask")
PHRASE_KEYS = ("phrase_tokens", "phrase_mask")
# earlier state dict keys (before the terms owned their parameters) -> their keys now
_MOVED_KEYS = {"simclr_head.": "terms.simclr.head."}


def upgrade_state_dict(state_dict: dict) -> dict:
    """An objective's state dict: itself, or one of an earlier layout with its keys moved. The
    layouts: flat model keys with UNSIL's ``unsil.*`` beside them (before the objective was split
    from the model: model keys go under ``model.``); ``simclr_head.*`` (before the loss terms owned
    their parameters: now ``terms.simclr.head.*``)."""
    if state_dict and not any(key.startswith("model.") for key in state_dict):
        state_dict = {(key if key.startswith(("unsil.",) + tuple(_MOVED_KEYS)) else "model." + key): value
                      for key, value in state_dict.items()}
    return {next((new + key[len(old):] for old, new in _MOVED_KEYS.items() if key.startswith(old)), key): value
            for key, value in state_dict.items()}


def model_state_dict(state_dict: dict) -> dict:
    """The ``LoupeModel``'s part of an objective's state dict (either layout), keys unprefixed."""
    return {key[len("model."):]: value for key, value in upgrade_state_dict(state_dict).items()
            if key.startswith("model.")}


def build_terms(loss_config: LossConfig, model: LoupeModel, objective) -> nn.ModuleDict:
    """The registered terms (``terms.TERMS``, in its order) whose section ``loss_config`` gives;
    ConfigError naming ``loss.terms.<name>`` for a section of no registered term."""
    unknown = sorted(set(loss_config.terms) - set(TERMS))
    if unknown:
        raise ConfigError(f"loss.terms.{unknown[0]}: no such loss term (registered: {list(TERMS)})")
    sections = {name: cls.section(loss_config) for name, cls in TERMS.items()}
    return nn.ModuleDict({name: TERMS[name](section, model, objective) for name, section in sections.items()
                          if section is not None})


class LoupeObjective(nn.Module):
    """LOUPE's losses on a model. ``LoupeObjective(model, loss_config)``: ``model`` a ``LoupeModel``
    or its ``ModelConfig`` (dataclass or dict); ``loss_config`` a ``LossConfig`` or dict."""

    def __init__(self, model: Union[LoupeModel, ModelConfig, dict, None] = None,
                 loss_config: Union[LossConfig, dict, None] = None):
        super().__init__()
        self.model = model if isinstance(model, LoupeModel) else LoupeModel(model)
        self.loss_config = lcfg = as_config(LossConfig, loss_config)
        cfg = self.model.config
        if lcfg.token_baseline == "drop" and cfg.image_tower == "swin" and lcfg.tsa:
            raise ConfigError("token_baseline='drop' is not defined for the Swin image tower; use 'zero'")
        d = cfg.embed_dim
        query_dims = {"token": d, "semantic": 2 * d}  # a region; a (region, phrase) pair
        self.unsil = nn.ModuleDict({level: Unsil(lcfg.unsil_arch, query_dims[level], d, lcfg.unsil_hidden)
                                    for level in lcfg.hybrid_levels()})
        self.terms = build_terms(lcfg, self.model, self)
        # terms that are losses over the whole accumulated batch (the trainer's ContrastiveBank)
        self.bank_terms = tuple(name for name, term in self.terms.items() if term.bank)
        extra = {key for term in self.terms.values() for key in term.needs()}
        self.batch_keys = (BATCH_KEYS + tuple(k for k in PHRASE_KEYS if k in extra)
                           + tuple(sorted(extra - set(PHRASE_KEYS))))
        self.num_random = cfg.num_random if any(term.random_candidates for term in self.terms.values()) else 0

    def compile_towers(self, **options) -> None:
        """``LoupeModel.compile_towers`` of the model (the trainer's ``train.compile="towers"``)."""
        self.model.compile_towers(**options)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, also of a state dict in an earlier layout (``upgrade_state_dict``)."""
        return super().load_state_dict(upgrade_state_dict(state_dict), strict=strict, assign=assign)

    def _check_batch(self, batch: dict, needed) -> None:
        for key in needed:
            if key not in batch:
                raise ValueError(f"batch is missing {key!r} (needs {list(needed)})")

    def embed(self, batch: dict):
        """(img_global, txt_global) float[b, d] of the batch, L2-normalised (the trainer's bank)."""
        self._check_batch(batch, BATCH_KEYS)
        _, img = self.model.encode_image_tokens(batch["images"])
        _, txt = self.model.encode_text_tokens(batch["input_ids"], batch["text_mask"])
        return img.global_emb, txt.global_emb

    def forward(self, batch: dict, step: Optional[StepContext] = None, embed_only: bool = False):
        """Training: LossOutput(total, terms, logs) of the batch at ``step`` (default: one process,
        step 0 of 1), the built terms in order. ``embed_only``: ``embed(batch)``.

        ``step.diagnostics=False`` skips UNSIL's probe (fresh samples that only feed the
        ``unsil_probe_error_*`` logs); the trainer asks for it on the steps it logs.
        """
        if embed_only:
            return self.embed(batch)
        self._check_batch(batch, self.batch_keys)
        step = StepContext.resolve(step, int(batch["input_ids"].shape[0]))
        view = ForwardView(self.model, batch, step, self.num_random)
        terms = {}
        for name, term in self.terms.items():  # every built term on every forward: their collectives match
            with contextlib.nullcontext() if term.collective else gb.local_only(f"loss term {name!r}"):
                terms[name] = term(view, step)
        view.logs["logit_scale"] = float(self.model.contrastive_scale().detach())
        view.logs["region_logit_scale"] = float(self.model.alignment_scale())
        return LossOutput(sum(terms.values()), terms, view.logs)
