"""Reading weight and JSON files that users name (exports, timm and Hugging Face towers): each
failure is one ``CheckpointError`` naming the setting and the file, never a library's raw error."""
from __future__ import annotations

import json

import torch

from loupe_core.errors import CheckpointError


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def read_weights(path: str, what: str):
    """The content of the weights file ``path``: a ``.safetensors`` file's dict of tensors, or what
    a torch file holds, loaded with ``weights_only=True`` (a pickled payload never runs).
    ``what``: the setting that named the file, for the message."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base
        raise CheckpointError(f"{what} {path!r} could not be read as a weights file ({_first_line(exc)})") from None


def read_json(path: str, what: str):
    """The JSON value in the UTF-8 file ``path``; ``what``: the setting that named the file."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {path!r} is not UTF-8 JSON ({_first_line(exc)})") from None
