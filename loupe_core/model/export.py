"""Export folders of a LOUPE model (``Loupe.save_pretrained`` / ``load_checkpoint(folder)``).

A folder holds ``model.safetensors`` (the weights), ``config.json`` (``{"model": ModelConfig
fields, "sha256": {file name: hex digest of its bytes}, "card": provenance}``), with a
tokenizer ``tokenizer.json``, and ``README.md``, the model card (config, data, steps, metrics).
Reading checks every file as a checkpoint is checked (``train.checkpoint``): the digests that
``config.json`` holds of the weights, the tokenizer and its own sections (a flipped bit is named), JSON that parses into a valid ``ModelConfig``, weights
that fit it and are finite. Each failure is a ``CheckpointError`` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import torch

from loupe_core.errors import CheckpointError

from .config import ModelConfig
from .files import read_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"
DIGESTED = (WEIGHTS_FILE, TOKENIZER_FILE)
logger = logging.getLogger("loupe_core.export")


def file_sha256(path: str) -> str:
    """sha256 (hex) of the bytes of ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(content: dict) -> str:
    """sha256 (hex) of config.json's "model" and "card" sections, as canonical JSON."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def is_export_folder(path: str) -> bool:
    """True when ``path`` is a folder holding ``model.safetensors`` (an export)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def model_card(config: dict, card: Optional[dict]) -> str:
    """The model card (Markdown) of an export: its ModelConfig fields ``config`` and the
    provenance ``card`` (``{"config": run config, "step", "total_steps", "metrics"}``, None: unknown)."""
    card = card or {}
    run = card.get("config") or {}
    lines = ["# LOUPE model", "", "Written by `loupe_core` (`Loupe.save_pretrained`); load it with "
             "`loupe_core.load_checkpoint(folder)` or `loupe_core.Loupe.from_pretrained(folder)`.", ""]
    lines += ["## Training", ""]
    if "step" in card:
        lines.append(f"- steps: {card['step']} of {card.get('total_steps', '?')}")
    else:
        lines.append("- steps: unknown (not exported from a training run)")
    data = run.get("data") or {}
    keys = ("dataset", "train_shards", "train_csv", "tokenizer", "eval_paths", "train_size", "seed")
    described = {k: data[k] for k in keys if data.get(k) not in (None, [], "")}
    lines.append(f"- data: {json.dumps(described) if described else 'unknown'}")
    if run.get("loss"):
        lines.append(f"- loss: `{json.dumps(run['loss'], sort_keys=True)}`")
    lines += ["", "## Metrics", ""]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("none recorded")
    lines += ["", "## Model config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_export(model: torch.nn.Module, folder: str, tokenizer=None, card: Optional[dict] = None) -> str:
    """Write ``model`` (a LoupeModel; ``model.config`` its ModelConfig) into ``folder``: weights,
    tokenizer, config.json with the files' digests, and the model card. Returns ``folder``."""
    from safetensors.torch import save_model

    os.makedirs(folder, exist_ok=True)
    save_model(model, os.path.join(folder, WEIGHTS_FILE))
    if tokenizer is not None:
        tokenizer.save(os.path.join(folder, TOKENIZER_FILE))
    digests = {name: file_sha256(os.path.join(folder, name)) for name in DIGESTED
               if os.path.isfile(os.path.join(folder, name)) and (name != TOKENIZER_FILE or tokenizer is not None)}
    config = model.config.to_dict()
    content = {"model": config, "card": card or {}}
    digests[CONFIG_FILE] = content_sha256(content)
    with open(os.path.join(folder, CONFIG_FILE), "w") as fh:
        json.dump({**content, "sha256": digests}, fh, indent=2)
    with open(os.path.join(folder, CARD_FILE), "w") as fh:
        fh.write(model_card(config, card))
    return folder


def read_export_config(folder: str) -> dict:
    """config.json of the export ``folder`` after checking it and the digests of the files it
    lists: ``{"model": ModelConfig fields, "sha256": ..., "card": ...}``; CheckpointError naming
    the file that is missing, not JSON, not a config of this project, or changed since export."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"export {folder!r}: {CONFIG_FILE} is missing (save_pretrained writes it)")
    cfg = read_json(path, "export config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"export config {path!r} has no 'model' section: it is not a LOUPE export")
    try:
        ModelConfig.from_dict(cfg["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"export config {path!r}: its model section is invalid ({exc})") from None
    digests = cfg.get("sha256")
    if digests is None:
        logger.warning("export %s has no sha256 digests in %s: its files cannot be verified", folder, CONFIG_FILE)
        return cfg
    if not isinstance(digests, dict):
        raise CheckpointError(f"export config {path!r}: 'sha256' must map file names to digests")
    for name, want in digests.items():
        if name == CONFIG_FILE:
            if content_sha256({"model": cfg["model"], "card": cfg.get("card") or {}}) != want:
                raise CheckpointError(f"export config {path!r} is damaged: its content does not match its "
                                      f"sha256 digest")
            continue
        file = os.path.join(folder, os.path.basename(str(name)))
        if not os.path.isfile(file):
            raise CheckpointError(f"export {folder!r}: {name} is missing (its digest is in {CONFIG_FILE})")
        if file_sha256(file) != want:
            raise CheckpointError(f"export file {file!r} is damaged: its bytes do not match the sha256 "
                                  f"digest in {CONFIG_FILE}")
    return cfg


def load_export_weights(model: torch.nn.Module, folder: str) -> torch.nn.Module:
    """Load ``folder``/model.safetensors into ``model`` (strict); CheckpointError naming the file
    when it is not a safetensors file, does not fit the model, or holds NaN / inf."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = os.path.join(folder, WEIGHTS_FILE)
    try:
        load_model(model, path, strict=True)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"export weights {path!r} could not be read ({type(exc).__name__}: {exc})") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"export weights {path!r} do not fit the model of {CONFIG_FILE} ({first})") from None
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"export weights {path!r} hold non-finite values in {name!r}")
    return model
