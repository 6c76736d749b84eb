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

from shapley_kernels.checks import check_count

from .config import RunConfig, list_configs, load_config
from .data import Tokenizer, prepare_shapesworld
from .data.images import normalize_image, resize_center_crop
from .data.tokenizer import MAX_TOKENS
from .errors import CheckpointError, ConfigError, DataError
from .eval.classification import class_embeddings
from .eval.encode import encode_text_list, image_tensor, tokenize
from .eval.grounding import expression_embeddings, ground_expressions
from .model import LoupeModel, ModelConfig
from .model.export import (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, is_export_folder, load_export_weights,
                           read_export_config, write_export)
from .objective.loupe_objective import model_state_dict
from .model.pretrained import (hf_tokenizer_file, load_image_weights, load_pretrained_towers, load_text_weights,
                               pretrained_tower_fields)
from .train import checkpoint as ckpt


def list_models() -> list[str]:
    """Names ``create_model`` takes: the configs shipped in ``loupe_core/configs``."""
    return list_configs()


def _run_config_file(path: str) -> Optional[RunConfig]:
    """The RunConfig in ``path`` when it is a run's (or ``--config``'s) config.json, else None (a
    tokenizer.json, an export's or a Hugging Face config.json)."""
    try:
        with open(path, "rb") as fh:
            d = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("data"), dict) or not isinstance(d.get("model"), dict):
        return None
    try:
        return RunConfig.from_dict(d)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"source: {path!r} is a run config that does not load ({exc})") from None


def get_tokenizer(source="default", max_length: Optional[int] = None):
    """A ``loupe_core.data.Tokenizer`` (callable: ``tok(["a dog"])`` -> ids LongTensor[B, L]) from
    ``source``: a config name of ``list_models()`` (its data tokenizer, as ``create_model`` takes
    the name), a ``vocab.txt`` / ``tokenizer.json`` file, a run's ``config.json``, a folder holding
    one of these (an export folder, a Hugging Face model folder, a run directory), or a
    ``RunConfig`` (its ``data.tokenizer``, or ShapesWorld's own vocabulary, generated into the
    cache if missing). ``max_length``: at most this many tokens per text (default 60, the
    tokenizer's limit). A file that is no tokenizer is a DataError naming it."""
    length = MAX_TOKENS if max_length is None else min(max_length, MAX_TOKENS)
    if isinstance(source, str) and source in list_configs():
        source = load_config(source)
    if isinstance(source, RunConfig):
        if source.data.dataset != "shapesworld" or source.data.tokenizer is not None:
            if source.data.tokenizer is None:
                raise ConfigError("data.tokenizer: the run config sets no tokenizer (source)")
            return Tokenizer.from_file(source.data.tokenizer, max_length=length)
        d = source.data
        paths = prepare_shapesworld(d.root, image_size=source.model.image_size, num_train=d.train_size,
                                    num_val=d.eval_size, num_test=d.eval_size, num_heldout=d.eval_size,
                                    seed=d.seed, progress=False)
        return Tokenizer.from_file(paths.tokenizer, max_length=length)
    if isinstance(source, str) and os.path.isdir(source):
        for name in (TOKENIZER_FILE, "vocab.txt", CONFIG_FILE):
            path = os.path.join(source, name)
            if os.path.isfile(path) and (name != CONFIG_FILE or _run_config_file(path) is not None):
                return get_tokenizer(path, length)
        raise DataError(f"source: no tokenizer.json, vocab.txt or run config.json in {source!r}")
    if isinstance(source, str) and os.path.isfile(source) and source.endswith(".json"):
        run = _run_config_file(source)
        if run is not None:
            return get_tokenizer(run, length)
    if isinstance(source, str):
        if not os.path.exists(source):
            raise DataError(f"source: {source!r} is neither a file, a folder nor a config name "
                            f"(named configs: {list_configs()})")
        return Tokenizer.from_file(source, max_length=length)
    raise DataError(f"source must be a config name, a file, a folder or a RunConfig, got {type(source).__name__}")


def build_zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence,
                               *, batch_size: int = 64) -> torch.Tensor:
    """OpenCLIP's zero-shot head: float[d, C], column c the L2-normalised mean of the
    L2-normalised text embeddings of class c in every template (a str with ``{}`` or a
    callable ``name -> str``), so ``model.encode_image(images) @ head`` gives float[B, C] cosines."""
    if isinstance(classnames, str) or not classnames or not all(isinstance(c, str) for c in classnames):
        raise DataError("classnames must be a non-empty list of strings")
    if isinstance(templates, str) or not templates or not all(isinstance(t, str) or callable(t) for t in templates):
        raise DataError("templates must be a non-empty list of format strings ('a photo of a {}.') or callables")
    if tokenizer is None:
        raise DataError("tokenizer: the class prompts need one (loupe_core.get_tokenizer(...))")
    prompts = [t(c) if callable(t) else t.format(c) for c in classnames for t in templates]
    emb = encode_text_list(model, tokenizer, prompts, device=model.logit_scale.device,
                           batch_size=check_count("batch_size", batch_size), progress=False, desc="class prompts")
    return class_embeddings(emb.reshape(len(classnames), len(templates), -1)).T.contiguous()


class Loupe(LoupeModel):
    """``LoupeModel`` with a tokenizer and OpenCLIP-style ``encode_image`` / ``encode_text`` / ``ground``.

    ``Loupe(model_config, tokenizer=None)``; ``tokenizer`` (a ``loupe_core.data.Tokenizer``) is
    needed only to encode strings. ``card``: where the weights come from (``{"config": run
    config, "step", "total_steps", "metrics"}``, set by ``load_checkpoint`` of a run), written
    into the model card of ``save_pretrained``.
    """

    def __init__(self, model_config=None, tokenizer=None):
        super().__init__(model_config)
        self.tokenizer = tokenizer
        self.card = {}

    @classmethod
    def from_pretrained(cls, path: str, device="cpu") -> "Loupe":
        """``load_checkpoint(path, device)``: an export folder, a run directory or a checkpoint, in eval mode."""
        return load_checkpoint(path, device)

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def _images(self, images) -> torch.Tensor:
        """The model input float[B, 3, S, S] of ``images``: normalised float[B, 3, S, S], uint8
        [B, S, S, 3] (array or tensor), one PIL image or a list of them. NaN / inf pixels, bool,
        complex or integer (other than uint8) values and a list entry that is no image are a
        DataError naming ``images``."""
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            if not images:
                raise DataError("images: an empty list; give at least one image")
            for i, im in enumerate(images):
                if not isinstance(im, Image.Image):
                    raise DataError(f"images[{i}] must be a PIL image, got {type(im).__name__}")
            size = self.config.image_size
            images = np.stack([resize_center_crop(im, size) for im in images])
            return normalize_image(images).to(self._device())
        if isinstance(images, np.ndarray):
            if images.dtype.kind not in "uf" or images.dtype.kind == "u" and images.dtype != np.uint8:
                raise DataError(f"images: an array of {images.dtype}; give uint8 [B, S, S, 3] or float [B, 3, S, S]")
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise DataError(f"images must be a tensor, an array, a PIL image or a list of PIL images, "
                            f"got {type(images).__name__}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DataError(f"images: a {images.dtype} tensor; give uint8 [B, S, S, 3] or float [B, 3, S, S]")
        if images.device.type == "meta":
            raise DataError("images is a meta tensor: it holds no pixels")
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            bad = "NaN" if bool(torch.isnan(images).any()) else "inf"
            raise DataError(f"images contain {bad} pixels")
        if images.dim() == 0 or images.shape[0] == 0:
            raise DataError(f"images: no image in a tensor of shape {list(images.shape)}")
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

    def ground(self, images, expressions, top_k: Optional[int] = None):
        """The box (xyxy, model-input pixels) of the region that best matches each expression, by
        the protocol of ``loupe_core.eval.grounding``: among the region head's ``top_k`` regions
        of its image (default ``config.ground_top_k`` or ``config.top_k``), the best by
        ``ground_scores`` against the expression's [CLS] or first noun phrase
        (``config.ground_query``). ``expressions``: one entry per image, a string (returns
        float[B, 4]) or, for several expressions of one image, lists of strings (returns a list
        of B tensors float[E_b, 4], one row per expression of image b)."""
        x = self._images(images)
        if isinstance(expressions, str):
            expressions = [expressions]
        if not isinstance(expressions, (list, tuple)) or len(expressions) != x.shape[0]:
            got = len(expressions) if isinstance(expressions, (list, tuple)) else type(expressions).__name__
            raise DataError(f"expressions must hold one entry per image ({x.shape[0]}): a string or a list "
                            f"of strings, got {got}")
        nested = any(isinstance(e, (list, tuple)) for e in expressions)
        per_image = [list(e) if isinstance(e, (list, tuple)) else [e] for e in expressions]
        for b, exprs in enumerate(per_image):
            if not exprs or not all(isinstance(e, str) for e in exprs):
                raise DataError(f"expressions[{b}] must be a string or a non-empty list of strings")
        if self.tokenizer is None:
            raise DataError("expressions need a tokenizer (create_model(..., tokenizer=...) or "
                            "model.tokenizer = loupe_core.get_tokenizer(...))")
        k = (self.config.ground_top_k or self.config.top_k) if top_k is None else check_count("top_k", top_k)
        flat = [e for exprs in per_image for e in exprs]
        owner = [b for b, exprs in enumerate(per_image) for _ in exprs]
        query = expression_embeddings(self, self.tokenizer, flat, device=self._device(),
                                      batch_size=len(flat), progress=False)
        boxes, scores = ground_expressions(self, x, owner, query, top_k=k, device=self._device(),
                                           batch_size=x.shape[0], progress=False)
        best = boxes[torch.arange(len(flat)), scores.argmax(dim=1)].to(x.device)
        return list(best.split([len(e) for e in per_image])) if nested else best

    def save_pretrained(self, folder: str) -> str:
        """Write ``folder``/model.safetensors, config.json (the model section, the files' sha256
        digests, ``card``), with a tokenizer tokenizer.json, and README.md, the model card
        (``loupe_core.model.export``); ``load_checkpoint(folder)`` reads and checks them. Returns ``folder``."""
        return write_export(self, folder, self.tokenizer, self.card)


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
                 image_timm_model: Optional[str] = None, tokenizer=None) -> Loupe:
    """A ``Loupe`` model from a config (name of ``list_models()``, JSON path, RunConfig, ModelConfig
    or dict), in train mode; with ``pretrained`` in eval mode, as ``load_checkpoint`` returns it.

    ``pretrained``: the whole model's weights (anything ``load_checkpoint`` reads); its config
    must be the same architecture. Pretrained towers (the config keys of the same names, which
    these arguments set; ``loupe_core.model.pretrained``): ``image_weights`` a timm checkpoint
    file (ViT with a class token for image_tower "vit", its sizes read from the file and its
    heads from ``image_timm_model`` or timm's 64-wide heads; Swin for "swin"); ``text_weights`` a
    Hugging Face BERT-family folder (config.json + model.safetensors): the text tower takes its
    sizes and the folder's tokenizer. With ``pretrained``, tower files named only in the config
    are not loaded (the whole model's weights supersede them).
    """
    model_fields = _model_section(model)
    given = {"image_weights": image_weights, "text_weights": text_weights, "image_timm_model": image_timm_model}
    model_fields.update({k: v for k, v in given.items() if v is not None})
    model_fields = pretrained_tower_fields(model_fields)
    if model_fields.get("text_weights") is not None:
        tokenizer = tokenizer or get_tokenizer(model_fields["text_weights"], model_fields["text_max_tokens"])
    net = Loupe(model_fields, tokenizer)
    if pretrained is not None:
        source = load_checkpoint(pretrained)
        try:
            net.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"pretrained {pretrained!r} does not fit this config: {exc}") from exc
        net.tokenizer = net.tokenizer or source.tokenizer
        net.card = source.card
        if image_weights is not None:
            load_image_weights(net, image_weights)
        if text_weights is not None:
            load_text_weights(net, text_weights, tokenizer)
        return net.eval()
    load_pretrained_towers(net, tokenizer)
    return net


def with_pretrained_towers(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the model sizes its pretrained towers imply (``model.image_weights``,
    ``model.image_timm_model``, ``model.text_weights``) and, for a text tower from a Hugging Face
    folder, that folder's tokenizer as ``data.tokenizer`` unless one is set (``loupe pretrain``)."""
    fields = pretrained_tower_fields(cfg.model.to_dict())
    d = cfg.to_dict()
    d["model"] = fields
    if fields.get("text_weights") is not None and d["data"].get("tokenizer") is None:
        d["data"]["tokenizer"] = hf_tokenizer_file(fields["text_weights"])
    return RunConfig.from_dict(d)


def _run_card(checkpoint_path: str, state: dict) -> dict:
    """Provenance of a training checkpoint for the model card: run config, steps and the final
    metrics of the run's summary.json (when the checkpoint lies in ``<run>/checkpoints``)."""
    card = {"config": state.get("config"), "step": state.get("step"), "total_steps": state.get("total_steps")}
    summary = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_path))), "summary.json")
    try:
        with open(summary) as fh:
            done = json.load(fh)
        if done.get("steps") == state.get("step"):
            card["metrics"] = done.get("metrics") or {}
    except (OSError, ValueError, AttributeError):
        pass  # no summary (run not finished, or not in a run directory): no metrics to report
    return card


def load_checkpoint(path: str, device="cpu") -> Loupe:
    """A ``Loupe`` model in eval mode from ``path``: a ``save_pretrained`` folder (or its
    model.safetensors), a run directory (its newest checkpoint) or a checkpoint file; the
    tokenizer comes along (the export's tokenizer.json, the run's data tokenizer). An export's
    files are checked (``loupe_core.model.export``): a damaged one is a CheckpointError naming it."""
    if not isinstance(path, str) or not os.path.exists(path):
        raise CheckpointError(f"path: nothing at {path!r}")
    folder = os.path.dirname(path) or "." if path.endswith(".safetensors") else path
    if is_export_folder(folder):
        cfg = read_export_config(folder)
        tok = os.path.join(folder, TOKENIZER_FILE)
        net = Loupe(cfg["model"], get_tokenizer(tok, cfg["model"].get("text_max_tokens")) if os.path.isfile(tok) else None)
        load_export_weights(net, folder)
        net.card = cfg.get("card") or {}
        return net.to(device).eval()
    if path.endswith(".safetensors"):
        raise CheckpointError(f"path: {path!r} is not the model.safetensors of an export folder "
                              f"(save_pretrained writes model.safetensors and {CONFIG_FILE})")
    checkpoint = ckpt.resolve_resume(path, None, flag="path")
    state = ckpt.load_model_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    net = Loupe(cfg.model, get_tokenizer(cfg, cfg.model.text_max_tokens))
    net.load_state_dict(model_state_dict(state["model"]))
    net.card = _run_card(checkpoint, state)
    return net.to(device).eval()
