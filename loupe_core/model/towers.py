"""Image and text towers of the LOUPE dual encoder.

Each tower splits into ``embed_tokens`` (raw input -> token embeddings before position
embeddings: the players of the token-level game, ``image_tokens`` / ``text_tokens`` of
``shapley_kernels.region_interaction``) and the coalition-encoder protocol of api.md
(``forward(tokens, keep) -> float[C, embed_dim]``), so the towers themselves are the encoders
handed to the token-level engine.

- ``VitImageTower``: convolutional patch embedding + pre-LN ``TransformerTower``.
- ``SwinImageTower``: timm's Swin (optional dependency, imported lazily); no [CLS] token, the
  global representation is the mean of the final tokens; zero baseline only.
- ``TextTower``: word embedding + BERT-style post-LN ``TransformerTower`` (eps 1e-12).
"""
import os
from typing import Optional, Tuple

import torch
from torch import nn

from shapley_kernels.token_level import TransformerTower

from loupe_core.errors import CheckpointError, ConfigError

from .files import read_json, read_weights


def _check_images(images: torch.Tensor, size: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != size or images.shape[3] != size:
        raise ValueError(f"images must have shape [B, 3, {size}, {size}], got {list(images.shape)}")


class _TransformerTowerDelegate(nn.Module):
    """``encode`` / ``project`` / ``forward`` of a tower held in ``self.tower`` (a TransformerTower)."""

    supports_drop = True

    def encode(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens float[C, N, dim], keep bool[C, N] or None -> (cls float[C, dim], tokens float[C, N, dim])."""
        return self.tower.encode(tokens, keep)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """float[..., dim] -> float[..., embed_dim]."""
        return self.tower.project(h)

    def forward(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Coalition encoder: float[C, N, dim], keep bool[C, N] -> float[C, embed_dim]."""
        return self.tower(tokens, keep)


class VitImageTower(_TransformerTowerDelegate):
    """Patches -> pre-LN transformer. Token grid = final grid = (S/p, S/p) cells of p pixels."""

    def __init__(self, cfg):
        super().__init__()
        self.image_size = cfg.image_size
        side = cfg.image_size // cfg.patch_size
        self.token_grid = self.final_grid = (side, side)
        self.token_cell = self.final_cell = float(cfg.patch_size)
        self.patch_embed = nn.Conv2d(3, cfg.image_dim, cfg.patch_size, stride=cfg.patch_size)
        self.tower = TransformerTower(dim=cfg.image_dim, depth=cfg.image_depth, heads=cfg.image_heads,
                                      max_tokens=side * side, out_dim=cfg.embed_dim, norm_first=True,
                                      dropout=cfg.image_dropout, layer_norm_eps=1e-6)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images float[B, 3, S, S] -> patch tokens float[B, N_I, image_dim] (row-major cells)."""
        _check_images(images, self.image_size)
        return self.patch_embed(images).flatten(2).transpose(1, 2)



def import_timm():
    """``import timm``, or a ValueError saying how to install it.

    timm imports torchvision at import time. PyPI's torchvision wheel is built against CUDA
    torch: beside the CPU wheel of torch its compiled ops do not load, and its Python part then
    fails on one line, registering fake kernels for ``torchvision::nms`` / ``qnms``, ops it never
    defined (``RuntimeError: operator torchvision::nms does not exist``). In that case only,
    those two schemas are defined here without kernels (calling them raises torchvision's own
    "Couldn't load custom C++ ops" error) and the import is retried: timm's models need only
    torchvision's Python part. A torchvision whose ops load is left alone.
    """
    try:
        import timm
        return timm
    except ImportError as exc:
        raise ConfigError("image_tower='swin' and timm weights need the optional package timm: "
                          "pip install --no-deps timm==1.0.31 torchvision==0.28.0 (README, 'Swin and timm')"
                          ) from exc
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm"))]:
        del sys.modules[name]
    global _TORCHVISION_SCHEMAS
    _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _TORCHVISION_SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm
    return timm


_TORCHVISION_SCHEMAS = None  # the torch.library.Library of import_timm's two schemas (kept alive)


def load_timm_state_dict(path: str) -> dict:
    """The state dict in a timm checkpoint file: ``.safetensors``, or a torch file holding the
    dict itself or under "state_dict" / "model" ("module." prefixes removed, as timm's
    ``load_state_dict`` does). Torch files load with ``weights_only=True``, so a pickled payload
    never runs; a file that is no state dict is a CheckpointError naming it."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise CheckpointError(f"image_weights: no checkpoint file at {path!r}")
    state = read_weights(path, "image_weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"image_weights {path!r} holds no state dict of tensors (got {type(state).__name__})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _timm_filter(filter_fn, state: dict, model: nn.Module, path: str) -> dict:
    """timm's ``checkpoint_filter_fn(state, model)``; the KeyError / shape error it raises on a
    state dict of another architecture is a CheckpointError naming ``path``."""
    try:
        return filter_fn(state, model)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"image_weights {path!r} is not a checkpoint of this timm architecture "
                              f"({type(exc).__name__}: {exc})") from None


def _load_strict(module: nn.Module, state: dict, what: str) -> None:
    """module.load_state_dict(state, strict=True); a mismatch is a ValueError naming ``what``."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} does not fit the model: {exc}") from exc


class SwinImageTower(nn.Module):
    """timm Swin: token grid = patch-embedding grid; final grid = the last stage's (coarser) grid.

    ``encode`` runs timm's ``forward_features`` after the patch embedding (``layers`` then
    ``norm``; timm >= 0.9 has no absolute position embedding or ``pos_drop`` in Swin v1).
    Windowed attention cannot drop tokens: ``supports_drop = False`` and a keep mask with an
    absent token is a ValueError (the engine's zero baseline passes all-True masks).
    """

    supports_drop = False

    def __init__(self, cfg):
        super().__init__()
        timm = import_timm()
        self.image_size = cfg.image_size
        self.swin = timm.create_model(cfg.swin_name, pretrained=False, num_classes=0, img_size=cfg.image_size)
        with torch.no_grad():
            probe = self.swin.patch_embed(torch.zeros(1, 3, cfg.image_size, cfg.image_size))  # NHWC
        side = probe.shape[1]
        self.token_grid, self.token_cell = (side, side), float(cfg.image_size / side)
        with torch.no_grad():  # the final grid, read off a probe run (stage layouts differ across timm versions)
            final = int(round(self.encode(probe.flatten(1, 2))[1].shape[1] ** 0.5))
        self.final_grid, self.final_cell = (final, final), float(cfg.image_size / final)
        self.proj = nn.Linear(self.swin.num_features, cfg.embed_dim, bias=False)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images float[B, 3, S, S] -> patch-embedding tokens float[B, N_tok, C0] (row-major cells)."""
        _check_images(images, self.image_size)
        return self.swin.patch_embed(images).flatten(1, 2)

    def encode(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens float[C, N_tok, C0] -> (mean of final tokens float[C, Cf], final tokens float[C, N_f, Cf])."""
        if keep is not None and not bool(keep.all()):
            raise ValueError("the Swin image tower cannot drop tokens (keep must be all True); "
                             "use the zero baseline")
        x = self.swin.norm(self.swin.layers(tokens.reshape(tokens.shape[0], *self.token_grid, -1)))
        x = x.flatten(1, -2)
        return x.mean(dim=1), x

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """float[..., Cf] -> float[..., embed_dim]."""
        return self.proj(h)

    def forward(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Coalition encoder: float[C, N_tok, C0], keep bool[C, N_tok] (all True) -> float[C, embed_dim]."""
        return self.project(self.encode(tokens, keep)[0])

    def load_timm_weights(self, path: str) -> None:
        """Load a timm Swin checkpoint file into ``self.swin`` (timm's own filter: relative
        position tables and the like are adapted to this image size; the classifier is left out)."""
        from timm.models.swin_transformer import checkpoint_filter_fn

        state = _timm_filter(checkpoint_filter_fn, load_timm_state_dict(path), self.swin, path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        _load_strict(self.swin, state, f"image_weights {path!r}")


class TextTower(_TransformerTowerDelegate):
    """WordPiece ids -> BERT-style post-LN transformer (the tower owns [CLS] and positions)."""

    def __init__(self, cfg):
        super().__init__()
        self.max_tokens = cfg.text_max_tokens
        self.word_embed = nn.Embedding(cfg.text_vocab_size, cfg.text_dim, padding_idx=0)
        nn.init.trunc_normal_(self.word_embed.weight, std=0.02, a=-0.04, b=0.04)
        with torch.no_grad():
            self.word_embed.weight[0].zero_()
        self.tower = TransformerTower(dim=cfg.text_dim, depth=cfg.text_depth, heads=cfg.text_heads,
                                      max_tokens=cfg.text_max_tokens, out_dim=cfg.embed_dim, norm_first=False,
                                      dropout=cfg.text_dropout, layer_norm_eps=1e-12)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids long[B, L] (L <= text_max_tokens) -> word embeddings float[B, L, text_dim]."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
            raise TypeError("input_ids must be a LongTensor[B, L]")
        if input_ids.shape[1] > self.max_tokens:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, more than text_max_tokens={self.max_tokens}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.word_embed.num_embeddings):
            raise ValueError(f"input_ids must lie in [0, {self.word_embed.num_embeddings})")
        return self.word_embed(input_ids)



def build_image_tower(cfg) -> nn.Module:
    """The image tower named by ``cfg.image_tower`` ("vit" or "swin")."""
    return VitImageTower(cfg) if cfg.image_tower == "vit" else SwinImageTower(cfg)


def load_timm_vit_weights(tower: VitImageTower, path: str, heads: int) -> None:
    """Load a timm ViT checkpoint file (``VisionTransformer`` with a class token, pre-LN) into ``tower``.

    The file is read and adapted by timm itself: a reference ``VisionTransformer`` of the
    tower's size (``heads`` attention heads) takes it through timm's ``checkpoint_filter_fn``
    (position embeddings resampled to this image size) and a strict load, and its weights are
    then copied by name (timm ``blocks.i.attn.qkv`` -> ``tower.blocks.i.qkv`` and so on).
    """
    import_timm()
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    t = tower.tower
    ref = VisionTransformer(img_size=tower.image_size, patch_size=tower.patch_embed.kernel_size[0],
                            embed_dim=t.dim, depth=len(t.blocks), num_heads=heads, num_classes=0)
    state = _timm_filter(checkpoint_filter_fn, load_timm_state_dict(path), ref, path)
    _load_strict(ref, {k: v for k, v in state.items() if not k.startswith("head.")}, f"image_weights {path!r}")
    names = {"patch_embed.proj": "patch_embed", "norm": "tower.final_norm", "attn.qkv": "qkv", "attn.proj": "out",
             "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
    mapped = {"tower.cls_token": ref.cls_token, "tower.pos_embed": ref.pos_embed[0]}
    for key, value in ref.state_dict().items():
        if key in ("cls_token", "pos_embed"):
            continue
        module, leaf = key.rsplit(".", 1)
        if module.startswith("blocks."):
            _, i, rest = module.split(".", 2)
            module = f"tower.blocks.{i}.{names.get(rest, rest)}"
        else:
            module = names[module]
        mapped[f"{module}.{leaf}"] = value
    mapped["tower.proj.weight"] = tower.tower.proj.weight  # LOUPE's own projection stays
    _load_strict(tower, mapped, f"image_weights {path!r}")


HF_TEXT_FIELDS = {"vocab_size": "text_vocab_size", "hidden_size": "text_dim",
                  "num_hidden_layers": "text_depth", "num_attention_heads": "text_heads"}


def hf_text_config(folder: str) -> dict:
    """ModelConfig fields (text_vocab_size, text_dim, text_depth, text_heads) of the Hugging Face
    BERT-family model in ``folder`` (its config.json); a model the text tower cannot hold is a
    ValueError naming ``text_weights``."""
    path = os.path.join(folder, "config.json") if isinstance(folder, str) else None
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f"text_weights: {folder!r} is not a folder with a config.json")
    hf = read_json(path, "text_weights: Hugging Face config")
    if not isinstance(hf, dict):
        raise CheckpointError(f"text_weights: {path} is not a Hugging Face config (a JSON object)")
    checks = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
              "layer_norm_eps": 1e-12}
    for key, want in checks.items():
        if hf.get(key, want) != want:
            raise CheckpointError(f"text_weights: {key}={hf.get(key)!r} in {path}, the text tower needs {want!r}")
    if hf.get("intermediate_size") != 4 * hf.get("hidden_size", 0):
        raise CheckpointError(f"text_weights: intermediate_size must be 4 * hidden_size in {path}")
    missing = [k for k in HF_TEXT_FIELDS if not isinstance(hf.get(k), int)]
    if missing:
        raise CheckpointError(f"text_weights: {path} lacks the integer sizes {missing}")
    return {ours: int(hf[theirs]) for theirs, ours in HF_TEXT_FIELDS.items()} | {
        "max_positions": int(hf.get("max_position_embeddings", 512))}


def _hf_weights(folder: str) -> dict:
    """The tensors of ``folder``/model.safetensors (or pytorch_model.bin), "bert." prefix removed."""
    st, pt = os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin")
    path = st if os.path.isfile(st) else pt
    if not os.path.isfile(path):
        raise CheckpointError(f"text_weights: no model.safetensors or pytorch_model.bin in {folder!r}")
    state = read_weights(path, "text_weights")
    if not isinstance(state, dict):
        raise CheckpointError(f"text_weights {path!r} holds no state dict (got {type(state).__name__})")
    return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}


def load_hf_text_weights(tower: TextTower, folder: str, cls_id: int) -> None:
    """Load a Hugging Face BERT-family model (``folder`` with config.json and weights) into ``tower``.

    BERT's embedding sum word + position + token type 0 maps onto the tower's [CLS] token
    (word embedding of ``cls_id``) and position table (BERT positions 0..max_tokens plus the
    token-type-0 vector); layer i's query/key/value become one ``qkv``. The tower's projection
    to the joint space is LOUPE's own and keeps its initialisation. The tower then computes
    BertModel's last hidden states of ``[CLS] + ids`` (tests/test_pretrained.py).
    """
    hf = hf_text_config(folder)
    t = tower.tower
    mine = {"text_vocab_size": tower.word_embed.num_embeddings, "text_dim": t.dim, "text_depth": len(t.blocks),
            "text_heads": t.blocks[0].heads}
    for key, value in mine.items():
        if hf[key] != value:
            raise CheckpointError(f"text_weights: {key} is {hf[key]} in {folder!r}, the model has {value}")
    if hf["max_positions"] < t.max_tokens + 1:
        raise CheckpointError(f"text_weights: {hf['max_positions']} positions, text_max_tokens + 1 = {t.max_tokens + 1}")
    w = _hf_weights(folder)
    e = "embeddings."
    try:
        mapped = {"word_embed.weight": w[e + "word_embeddings.weight"],
                  "tower.cls_token": w[e + "word_embeddings.weight"][cls_id].view(1, 1, -1),
                  "tower.pos_embed": w[e + "position_embeddings.weight"][: t.max_tokens + 1]
                  + w[e + "token_type_embeddings.weight"][0],
                  "tower.embed_norm.weight": w[e + "LayerNorm.weight"], "tower.embed_norm.bias": w[e + "LayerNorm.bias"],
                  "tower.proj.weight": t.proj.weight}
        parts = {"qkv": None, "out": "attention.output.dense", "norm1": "attention.output.LayerNorm",
                 "fc1": "intermediate.dense", "fc2": "output.dense", "norm2": "output.LayerNorm"}
        for i in range(len(t.blocks)):
            layer = f"encoder.layer.{i}."
            for leaf in ("weight", "bias"):
                mapped[f"tower.blocks.{i}.qkv.{leaf}"] = torch.cat(
                    [w[f"{layer}attention.self.{n}.{leaf}"] for n in ("query", "key", "value")])
                for ours, theirs in parts.items():
                    if theirs is not None:
                        mapped[f"tower.blocks.{i}.{ours}.{leaf}"] = w[f"{layer}{theirs}.{leaf}"]
    except KeyError as exc:
        raise CheckpointError(f"text_weights {folder!r}: the weights lack {exc.args[0]!r} (not a BERT-family model)") from None
    _load_strict(tower, mapped, f"text_weights {folder!r}")
