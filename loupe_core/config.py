"""Run configuration: one ``RunConfig`` with model, loss, data, train and eval sections.

Configs are data (``loupe_core/configs/<name>.json``, each holding only what differs from the
defaults, optionally ``"extends": "<other name>"``). ``load_config`` takes a config name or a
JSON path and applies ``key=value`` overrides with dotted keys (``train.steps=6``,
``loss.tsa_weight=0.5``); values are type-checked against the field's annotation, an unknown key
or a value of the wrong type is a ``ValueError`` naming the key. ``save_config`` writes the
resolved config (every field) as JSON beside the run.

The ``model`` and ``loss`` sections are ``loupe_core.model.config.ModelConfig`` /
``loupe_core.objective.config.LossConfig``; ``data``, ``train`` and ``eval`` are defined here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from loupe_core import schema
from loupe_core.errors import ConfigError

MAX_SEED = 2**32 - 1
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


@dataclass
class DataConfig:
    """Where the training pairs and the held-out evaluation split come from.

    ``dataset="shapesworld"``: generated on first use into ``root`` (None: the package's cache
    directory) by ``loupe_core.data.prepare_shapesworld``, rendered at ``model.image_size``; its
    own vocabulary unless ``tokenizer`` is set (``model.text_weights`` sets it to the pretrained
    text tower's).
    ``dataset="webdataset"``: ``train_shards`` is a brace-expanded shard pattern, read as a
    resampled stream (shards drawn with replacement, seeded by ``train.seed``, rank and worker;
    ``shuffle_buffer`` samples shuffled), ``tokenizer`` a WordPiece ``vocab.txt`` or
    ``tokenizer.json``, ``eval_paths`` the evaluation files {task: path} (docs/CONTRACTS.md s4).
    ``dataset="csv"``: ``train_csv`` a CSV/TSV of (image path, caption) rows (columns
    ``csv_img_key`` / ``csv_caption_key``, separator ``csv_sep``, relative paths from the file's
    folder), visited in a seeded order; ``tokenizer`` and ``eval_paths`` as for webdataset.
    Real data skips and counts bad records; ``bad_limit`` records skipped in a row stop the run
    with an error naming the data (``loupe_core.data.stats``). A CSV row's image must be a
    regular file of at most ``max_image_bytes`` bytes (not a device, a FIFO or a link to one) and
    its caption at most ``max_caption_chars`` characters, else the row is skipped and counted.
    """

    dataset: Literal["shapesworld", "webdataset", "csv"] = "shapesworld"
    root: Optional[str] = None
    train_size: int = 4000
    eval_size: int = 200
    seed: int = 0
    train_shards: Optional[str] = None
    tokenizer: Optional[str] = None
    eval_paths: Optional[dict] = None
    shuffle_buffer: int = 1000
    num_workers: int = 0
    train_csv: Optional[str] = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_sep: str = "\t"
    bad_limit: int = 1000
    max_image_bytes: int = 64 * 2**20
    max_caption_chars: int = 16384

    def __post_init__(self):
        _at_least(self, "data", train_size=1, eval_size=1, seed=0, shuffle_buffer=0, num_workers=0, bad_limit=1,
                  max_image_bytes=1, max_caption_chars=1)


@dataclass
class TrainConfig:
    """Optimiser, schedule, batch and bookkeeping (spec section 6).

    ``batch_size`` is the global batch (all ranks, all micro-batches); ``accum_steps`` splits it
    into micro-batches per rank (cached-feature accumulation). ``steps`` optimiser steps in all;
    ``steps=0`` means ``epochs`` full passes over the training set. ``precision``: "bf16"
    autocast (GPU or CPU), "fp16" autocast with a gradient scaler (GPU only), or "fp32".
    ``ckpt_every``: a checkpoint every this many steps (0: only at the end), the newest
    ``keep_checkpoints`` kept (0: all). ``collective_timeout``: seconds a DDP collective waits for
    the other ranks before the job ends with an error (a rank that failed mid-step), never a hang.
    ``compile``: "towers" runs the dense transformer pass of
    the image and text towers (vit only) through ``torch.compile`` (``compile_mode`` its
    ``mode``) in training forwards; labels, the bank's embedding pass and evaluation stay eager,
    and checkpoints are the eager run's (benchmarks/RESULTS.md: no gain on the CPU). "none": eager.
    """

    seed: int = 0
    steps: int = 0
    epochs: int = 1
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = 0.1
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    grad_clip: float = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    log_every: int = 1
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = True
    collective_timeout: float = 600.0
    compile: Literal["none", "towers"] = "none"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"

    def __post_init__(self):
        for name in ("compile", "compile_mode"):  # the loader checks these too; here for TrainConfig(...)
            allowed = list(typing.get_args(schema.field_types(TrainConfig)[name]))
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        _at_least(self, "train", seed=0, steps=0, epochs=1, batch_size=1, accum_steps=1, log_every=1, ckpt_every=0,
                  keep_checkpoints=0)
        if isinstance(self.seed, int) and self.seed > MAX_SEED:
            raise ConfigError(f"train.seed must be <= {MAX_SEED} (NumPy's seed range), got {self.seed}")
        _positive(self, "train", lr=self.lr, eps=self.eps, div_factor=self.div_factor,
                  final_div_factor=self.final_div_factor, collective_timeout=self.collective_timeout)
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"train.pct_start must be in (0, 1), got {self.pct_start!r}")


@dataclass
class EvalConfig:
    """Zero-shot evaluation on the held-out split ``split``: every ``every`` steps (0: only at the end).

    ``hard_splits``: the harder ShapesWorld grounding splits (docs/CONTRACTS.md s6, names from
    ``loupe_core.data.shapesworld_hard.HARD_SPLITS``) of ``hard_size`` images each, scored once
    after the final evaluation (grounding and the cheap diagnostics); ShapesWorld data only.
    """

    every: int = 0
    split: str = "test"
    final: bool = True
    tasks: tuple[str, ...] = ("retrieval", "grounding")
    batch_size: int = 64
    report: bool = True
    hard_splits: tuple[str, ...] = ()
    hard_size: int = 200

    def __post_init__(self):
        _at_least(self, "eval", every=0, batch_size=1, hard_size=1)


def _at_least(section, prefix: str, **bounds) -> None:
    """ValueError naming ``prefix.field`` when an int field is below its bound."""
    for name, low in bounds.items():
        value = getattr(section, name)
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{prefix}.{name} must be >= {low}, got {value}")


def _positive(section, prefix: str, **values) -> None:
    """ValueError naming ``prefix.field`` unless the float is finite and > 0."""
    for name, value in values.items():
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{prefix}.{name} must be a finite number > 0, got {value!r}")


def _model_sections():
    from loupe_core.model.config import ModelConfig
    from loupe_core.objective.config import LossConfig

    return ModelConfig, LossConfig


@dataclass
class RunConfig:
    """The whole run: ``name`` plus the five sections."""

    name: str = "default"
    model: Any = None
    loss: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        model_cls, loss_cls = _model_sections()
        if self.model is None:
            self.model = model_cls()
        if self.loss is None:
            self.loss = loss_cls()

    def to_dict(self) -> dict:
        return {"name": self.name, **{s: schema.to_plain(getattr(self, s)) for s in SECTIONS}}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return _build(cls, d, "")


SECTIONS = ("model", "loss", "data", "train", "eval")


def _section_classes() -> dict:
    model_cls, loss_cls = _model_sections()
    return {"model": model_cls, "loss": loss_cls, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def _field_types(cls) -> dict:
    if cls is RunConfig:
        return {"name": str, **_section_classes()}
    return schema.field_types(cls)


def _build(cls, d: dict, prefix: str):
    return schema.build(cls, d, prefix, _field_types)


def _convert(value, hint, key: str):
    return schema.convert(value, hint, key, _field_types)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def list_configs() -> list[str]:
    """Names of the configs shipped in ``loupe_core/configs``."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def _read_config_dict(name_or_path: str, seen: tuple = ()) -> dict:
    is_path = name_or_path.endswith(".json") or os.sep in name_or_path
    path = name_or_path if is_path else os.path.join(CONFIG_DIR, name_or_path + ".json")
    if not os.path.isfile(path):
        raise ConfigError(f"config {name_or_path!r}: no such file or named config (named configs: {list_configs()})")
    if path in seen:
        raise ConfigError(f"config {name_or_path!r}: 'extends' loops through {list(seen)}")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path!r}: not a JSON text file (byte {exc.start} is not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {path!r}: invalid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config {path!r}: the top level must be a JSON object")
    parent = d.pop("extends", None)
    d.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    if parent is not None:
        d = _merge(_read_config_dict(parent, seen + (path,)), d)
    return d


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> (``"a.b"``, value converted to that field's type)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    cls = RunConfig
    for i, part in enumerate(parts):
        types_ = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in types_:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"unknown config key {key!r}: {where} has no field {part!r} (valid: {sorted(types_)})")
        hint = types_[part]
        cls = hint
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"config key {key!r} is a section; set its fields (e.g. {key}.<field>=...)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as schedule=constant
    try:
        return key, _convert(value, hint, key)
    except ValueError:
        if not isinstance(value, str):  # e.g. name=123 for a str field: keep the text
            return key, _convert(raw, hint, key)
        raise


def apply_overrides(cfg: RunConfig, overrides) -> RunConfig:
    """A new config with the ``key=value`` strings applied (type-checked; unknown key: ValueError)."""
    d = cfg.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        node = d
        *head, last = key.split(".")
        for part in head:
            node = node[part]
        node[last] = schema.to_plain(value)
    return RunConfig.from_dict(d)


def load_config(name_or_path: str = "default", overrides=()) -> RunConfig:
    """The named config (``loupe_core/configs/<name>.json``) or a JSON file, with overrides."""
    return apply_overrides(RunConfig.from_dict(_read_config_dict(name_or_path)), overrides)


def save_config(cfg: RunConfig, path: str) -> None:
    """Write the resolved config (every field) as JSON."""
    with open(path, "w") as fh:
        json.dump(cfg.to_dict(), fh, indent=2, sort_keys=False)
        fh.write("\n")
