"""The public model API, in OpenCLIP's terms (README, "Python API").

    import loupe_core
    loupe_core.list_models()                                  # the shipped configs
    model = loupe_core.create_model("tiny", text_weights=HF_FOLDER, image_weights=TIMM_FILE)
    model = loupe_core.load_checkpoint("runs/mine")           # run dir, checkpoint, export folder
    img = model.encode_image(images)                          # float[B, d], L2-normalised
    txt = model.encode_text(["a red circle", ...])            # float[T, d]
    boxes = model.ground(images, expressions)                 # float[B, 4] xyxy pixels
    model.save_pretrained(folder)                             # model.safetensors + config + tokenizer

``Loupe`` is a ``LoupeModel`` (same parameters; training wraps it in a
``loupe_core.objective.LoupeObjective``) with a tokenizer and these methods. Nothing here downloads: every weight comes from a local file.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .config import RunConfig, list_configs, load_config
from .data import Tokenizer, prepare_shapesworld
from .data.images import normalize_image, resize_center_crop
from .data.tokenizer import MAX_TOKENS
from .eval.encode import image_tensor, tokenize
from .eval.grounding import expression_embeddings, ground_expressions
from .model import LoupeModel, ModelConfig
from .objective.loupe_objective import model_state_dict
from .model.towers import (HF_TEXT_FIELDS, SwinImageTower, hf_text_config, load_hf_text_weights,
                           load_timm_vit_weights)
from .train import checkpoint as ckpt

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def list_models() -> list[str]:
    """Names ``create_model`` takes: the configs shipped in ``loupe_core/configs``."""
    return list_configs()


def get_tokenizer(source, max_length: Optional[int] = None):
    """A ``loupe_core.data.Tokenizer`` from ``source``: a ``vocab.txt`` / ``tokenizer.json`` file, a
    folder holding one (an export folder, a Hugging Face model folder), or a ``RunConfig`` (its
    ``data.tokenizer``, or ShapesWorld's own vocabulary, generated into the cache if missing).
    ``max_length``: at most this many tokens per text (default 60, the tokenizer's limit)."""
    length = MAX_TOKENS if max_length is None else min(max_length, MAX_TOKENS)
    if isinstance(source, RunConfig):
        if source.data.dataset != "shapesworld":
            if source.data.tokenizer is None:
                raise ValueError("source: the run config sets no data.tokenizer")
            return Tokenizer.from_file(source.data.tokenizer, max_length=length)
        d = source.data
        paths = prepare_shapesworld(d.root, image_size=source.model.image_size, num_train=d.train_size,
                                    num_val=d.eval_size, num_test=d.eval_size, num_heldout=d.eval_size,
                                    seed=d.seed, progress=False)
        return Tokenizer.from_file(paths.tokenizer, max_length=length)
    if isinstance(source, str) and os.path.isdir(source):
        for name in (TOKENIZER_FILE, "vocab.txt"):
            if os.path.isfile(os.path.join(source, name)):
                return Tokenizer.from_file(os.path.join(source, name), max_length=length)
        raise ValueError(f"source: no tokenizer.json or vocab.txt in {source!r}")
    if isinstance(source, str):
        return Tokenizer.from_file(source, max_length=length)
    raise ValueError(f"source must be a file, a folder or a RunConfig, got {type(source).__name__}")


class Loupe(LoupeModel):
    """``LoupeModel`` with a tokenizer and OpenCLIP-style ``encode_image`` / ``encode_text`` / ``ground``.

    ``Loupe(model_config, tokenizer=None)``; ``tokenizer`` (a ``loupe_core.data.Tokenizer``) is
    needed only to encode strings.
    """

    def __init__(self, model_config=None, tokenizer=None):
        super().__init__(model_config)
        self.tokenizer = tokenizer

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def _images(self, images) -> torch.Tensor:
        """float[B, 3, S, S] (normalised), uint8 [B, S, S, 3] (array or tensor) or a list of PIL images."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images must hold at least one image")
            size = self.config.image_size
            images = np.stack([resize_center_crop(im, size) for im in images])
            return normalize_image(images).to(self._device())
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            raise ValueError(f"images must be a tensor, an array or a list of PIL images, got {type(images).__name__}")
        return image_tensor(images, self._device())

    def encode_image(self, images) -> torch.Tensor:
        """Global image embeddings float[B, d], L2-normalised (see ``_images`` for the inputs)."""
        return self.encode_images(self._images(images)).global_emb

    def _text_ids(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, torch.Tensor):
            if texts.dtype != torch.long or texts.dim() != 2:
                raise ValueError(f"texts: ids must be a LongTensor[B, L] (0 = padding), got {texts.dtype} "
                                 f"{list(texts.shape)}")
            return texts.to(self._device()), (texts != 0).to(self._device())
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings or a LongTensor[B, L] of ids")
        if self.tokenizer is None:
            raise ValueError("texts: strings need a tokenizer (create_model(..., tokenizer=...) or "
                             "model.tokenizer = loupe_core.get_tokenizer(...)); or pass ids")
        ids, mask = tokenize(self.tokenizer, list(texts), self.config.text_max_tokens)
        return ids.to(self._device()), mask.to(self._device())

    def encode_text(self, texts) -> torch.Tensor:
        """Global text embeddings float[T, d], L2-normalised, of strings or ids LongTensor[T, L] (0 = padding)."""
        return self.encode_texts(*self._text_ids(texts)).global_emb

    def ground(self, images, expressions: Sequence[str], top_k: Optional[int] = None) -> torch.Tensor:
        """The box float[B, 4] (xyxy, model-input pixels) of each image's region that best matches
        its expression, by the protocol of ``loupe_core.eval.grounding``: among the region head's
        ``top_k`` regions (default ``config.ground_top_k`` or ``config.top_k``), the best by
        ``ground_scores`` against the expression's [CLS] or first noun phrase
        (``config.ground_query``). ``expressions``: one string per image."""
        x = self._images(images)
        if isinstance(expressions, str):
            expressions = [expressions]
        if len(expressions) != x.shape[0]:
            raise ValueError(f"expressions must hold one expression per image ({x.shape[0]}), got {len(expressions)}")
        if self.tokenizer is None:
            raise ValueError("expressions need a tokenizer (create_model(..., tokenizer=...) or "
                             "model.tokenizer = loupe_core.get_tokenizer(...))")
        query = expression_embeddings(self, self.tokenizer, list(expressions), device=self._device(),
                                      batch_size=x.shape[0], progress=False)
        k = top_k or self.config.ground_top_k or self.config.top_k
        boxes, scores = ground_expressions(self, x, list(range(x.shape[0])),
                                           query, top_k=k, device=self._device(), batch_size=x.shape[0],
                                           progress=False)
        return boxes[torch.arange(x.shape[0]), scores.argmax(dim=1)].to(x.device)

    def save_pretrained(self, folder: str) -> str:
        """Write ``folder``/model.safetensors, config.json (the model section) and, with a
        tokenizer, tokenizer.json; ``load_checkpoint(folder)`` reads them back. Returns ``folder``."""
        from safetensors.torch import save_model

        os.makedirs(folder, exist_ok=True)
        save_model(self, os.path.join(folder, WEIGHTS_FILE))
        with open(os.path.join(folder, CONFIG_FILE), "w") as fh:
            json.dump({"model": self.config.to_dict()}, fh, indent=2)
        if self.tokenizer is not None:
            self.tokenizer.save(os.path.join(folder, TOKENIZER_FILE))
        return folder


def _model_section(model) -> dict:
    """ModelConfig fields of a config name, JSON path, RunConfig, ModelConfig or dict."""
    if isinstance(model, str):
        model = load_config(model)
    if isinstance(model, RunConfig):
        return model.model.to_dict()
    if isinstance(model, ModelConfig):
        return model.to_dict()
    if isinstance(model, dict):
        return ModelConfig.from_dict(model).to_dict()
    raise ValueError(f"model must be a config name, a JSON path, a RunConfig, a ModelConfig or a dict, "
                     f"got {type(model).__name__}")


def create_model(model: Union[str, object] = "default", pretrained: Optional[str] = None, *,
                 image_weights: Optional[str] = None, text_weights: Optional[str] = None,
                 tokenizer=None) -> Loupe:
    """A ``Loupe`` model from a config (name of ``list_models()``, JSON path, RunConfig, ModelConfig or dict).

    ``pretrained``: the whole model's weights (anything ``load_checkpoint`` reads); its config
    must be the same architecture. ``image_weights``: a timm checkpoint file (ViT with a class
    token for image_tower "vit", heads from the config; Swin for "swin"). ``text_weights``: a
    Hugging Face BERT-family folder (config.json + model.safetensors); the text tower takes its
    sizes and the folder's tokenizer.
    """
    model_fields = _model_section(model)
    cls_id = None
    if text_weights is not None:
        hf = hf_text_config(text_weights)
        model_fields.update({k: hf[k] for k in HF_TEXT_FIELDS.values()})
        tokenizer = tokenizer or get_tokenizer(text_weights, model_fields["text_max_tokens"])
        cls_id = tokenizer._tok.token_to_id("[CLS]")
        if cls_id is None:
            raise ValueError(f"text_weights: the tokenizer in {text_weights!r} has no [CLS] token")
    net = Loupe(model_fields, tokenizer)
    if pretrained is not None:
        source = load_checkpoint(pretrained)
        try:
            net.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"pretrained {pretrained!r} does not fit this config: {exc}") from exc
        net.tokenizer = net.tokenizer or source.tokenizer
    if image_weights is not None:
        if isinstance(net.image_tower, SwinImageTower):
            net.image_tower.load_timm_weights(image_weights)
        else:
            load_timm_vit_weights(net.image_tower, image_weights, net.config.image_heads)
    if text_weights is not None:
        load_hf_text_weights(net.text_tower, text_weights, cls_id)
    return net


def load_checkpoint(path: str, device="cpu") -> Loupe:
    """A ``Loupe`` model in eval mode from ``path``: a ``save_pretrained`` folder (or its
    model.safetensors), a run directory (its newest checkpoint) or a checkpoint file; the
    tokenizer comes along (the export's tokenizer.json, the run's data tokenizer)."""
    if not isinstance(path, str) or not os.path.exists(path):
        raise ValueError(f"path: nothing at {path!r}")
    folder = os.path.dirname(path) if path.endswith(".safetensors") else path
    if os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        from safetensors.torch import load_model

        with open(os.path.join(folder, CONFIG_FILE)) as fh:
            cfg = json.load(fh)
        tok = os.path.join(folder, TOKENIZER_FILE)
        net = Loupe(cfg["model"], get_tokenizer(tok, cfg["model"]["text_max_tokens"]) if os.path.isfile(tok) else None)
        load_model(net, os.path.join(folder, WEIGHTS_FILE), strict=True)
        return net.to(device).eval()
    state = ckpt.load_model_checkpoint(ckpt.resolve_resume(path, None, flag="path"))
    cfg = RunConfig.from_dict(state["config"])
    net = Loupe(cfg.model, get_tokenizer(cfg, cfg.model.text_max_tokens))
    net.load_state_dict(model_state_dict(state["model"]))
    return net.to(device).eval()
