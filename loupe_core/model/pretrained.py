"""Pretrained towers from local files (``ModelConfig.image_weights`` / ``image_timm_model`` /
``text_weights``): the config sizes they imply and their loading into a ``LoupeModel``.

- timm ViT: ``image_dim``, ``patch_size`` and ``image_depth`` are read from the checkpoint's
  tensors (``patch_embed.proj.weight`` [dim, 3, p, p], the ``blocks.<i>`` it holds); the heads,
  which no tensor shape holds, from ``image_timm_model`` (the timm model built on the meta
  device, no weights, no download), else the config's ``image_heads`` when its ``image_dim``
  already matches, else timm's convention of 64-wide heads. ``image_timm_model`` alone sets the
  sizes of that timm model (a randomly initialised tower of its shape). For ``image_tower="swin"``
  the timm name is ``swin_name``.
- Hugging Face BERT folder: ``text_vocab_size``, ``text_dim``, ``text_depth``, ``text_heads`` from
  its config.json, its tokenizer (``tokenizer.json`` or ``vocab.txt``) for the [CLS] id.
Nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from loupe_core.data.tokenizer import Tokenizer
from loupe_core.errors import CheckpointError, ConfigError

from .towers import (HF_TEXT_FIELDS, SwinImageTower, hf_text_config, import_timm, load_hf_text_weights,
                     load_timm_state_dict, load_timm_vit_weights)

TIMM_HEAD_DIM = 64  # every ViT timm ships below "huge" has 64-wide heads


def timm_model_sizes(name: str) -> dict:
    """{image_dim, image_depth, image_heads, patch_size} of the timm ViT ``name`` (built on the
    meta device: no weights, no download); ConfigError naming ``model.image_timm_model``."""
    timm = import_timm()
    try:
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"model.image_timm_model={name!r} is not a timm model ({exc})") from None
    blocks = getattr(net, "blocks", None)
    if blocks is None or not hasattr(net, "patch_embed") or not hasattr(blocks[0], "attn"):
        raise ConfigError(f"model.image_timm_model={name!r} is not a timm VisionTransformer")
    return {"image_dim": int(net.embed_dim), "image_depth": len(blocks), "image_heads": int(blocks[0].attn.num_heads),
            "patch_size": int(net.patch_embed.patch_size[0])}


def timm_checkpoint_sizes(path: str) -> dict:
    """{image_dim, image_depth, patch_size} read from the tensors of the timm ViT checkpoint ``path``."""
    state = load_timm_state_dict(path)
    weight = state.get("patch_embed.proj.weight")
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if weight is None or weight.dim() != 4 or not blocks:
        raise CheckpointError(f"image_weights {path!r} is not a timm ViT checkpoint (no patch_embed.proj.weight "
                              f"[dim, 3, p, p] and blocks.<i>)")
    return {"image_dim": int(weight.shape[0]), "image_depth": max(blocks) + 1, "patch_size": int(weight.shape[2])}


def hf_tokenizer_file(folder: str) -> str:
    """The tokenizer file (``tokenizer.json`` or ``vocab.txt``) of the Hugging Face folder ``folder``."""
    for name in ("tokenizer.json", "vocab.txt"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise CheckpointError(f"text_weights: no tokenizer.json or vocab.txt in {folder!r}")


def pretrained_tower_fields(fields: dict) -> dict:
    """ModelConfig ``fields`` (a dict) with the sizes its pretrained towers imply (module docstring)."""
    out = dict(fields)
    if out.get("text_weights") is not None:
        hf = hf_text_config(out["text_weights"])
        out.update({k: hf[k] for k in HF_TEXT_FIELDS.values()})
    name, path = out.get("image_timm_model"), out.get("image_weights")
    if out.get("image_tower", "vit") == "swin":
        if name is not None:
            out["swin_name"] = name
        return out
    sizes = timm_model_sizes(name) if name is not None else {}
    if path is not None:
        found = timm_checkpoint_sizes(path)
        differ = {k: (sizes[k], v) for k, v in found.items() if k in sizes and sizes[k] != v}
        if differ:
            raise ConfigError(f"model.image_timm_model={name!r} does not match image_weights {path!r}: "
                              + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items()))
        if "image_heads" not in sizes:
            same = found["image_dim"] == out.get("image_dim")
            if not same and found["image_dim"] % TIMM_HEAD_DIM:
                raise ConfigError(f"image_weights {path!r}: image_dim {found['image_dim']} is no multiple of "
                                  f"{TIMM_HEAD_DIM}; name the timm model (model.image_timm_model) for its heads")
            sizes["image_heads"] = out["image_heads"] if same else found["image_dim"] // TIMM_HEAD_DIM
        sizes.update(found)
    out.update(sizes)
    return out


def load_image_weights(model, path: str) -> None:
    """Load the timm checkpoint file ``path`` into ``model.image_tower`` (ViT or Swin)."""
    if isinstance(model.image_tower, SwinImageTower):
        model.image_tower.load_timm_weights(path)
    else:
        load_timm_vit_weights(model.image_tower, path, model.config.image_heads)


def load_text_weights(model, folder: str, tokenizer: Optional[Tokenizer] = None) -> None:
    """Load the Hugging Face BERT folder ``folder`` into ``model.text_tower``; ``tokenizer``: the
    folder's (for its [CLS] id; default read from the folder)."""
    tokenizer = tokenizer or Tokenizer.from_file(hf_tokenizer_file(folder))
    cls_id = tokenizer._tok.token_to_id("[CLS]")
    if cls_id is None:
        raise CheckpointError(f"text_weights: the tokenizer in {folder!r} has no [CLS] token")
    load_hf_text_weights(model.text_tower, folder, cls_id)


def load_pretrained_towers(model, tokenizer: Optional[Tokenizer] = None) -> None:
    """Load ``model.config.image_weights`` / ``text_weights`` (when set) into the towers of
    ``model``, a LoupeModel built from ``pretrained_tower_fields``; ``tokenizer`` as for
    ``load_text_weights``."""
    if model.config.image_weights is not None:
        load_image_weights(model, model.config.image_weights)
    if model.config.text_weights is not None:
        load_text_weights(model, model.config.text_weights, tokenizer)
