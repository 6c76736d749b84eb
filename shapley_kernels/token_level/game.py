"""The token-level game v1 of a dual encoder (spec section 3): batched, deduplicated, chunked.

v1(S) = cos(f_I(S n X_I), f_T(S n X_T)). The two halves of a coalition are encoded
independently, so every distinct image half and every distinct text half in a call is encoded
once (``torch.unique`` over the packed bitmask of (pair, half)) and the encoder sees at most
``max_batch`` rows at a time (default: as many rows as fit ``defaults.default_tokens_per_call``
tokens: 2^13 on the CPU, the knee of rows per call against coalitions per second, and 2^16 on
CUDA, which bounds activation memory: 2^16 tokens of a ViT-S MLP are 400 MB in float32).

Baselines (the two are different games):
  "zero": absent tokens' embeddings are replaced by zeros (before the encoder adds position
          embeddings); the encoder gets keep all True (False only on padding), so attention
          still sees the zeroed tokens. A side with no present token is its all-zero input
          ([CLS] plus position embeddings): finite and defined.
  "drop": tokens unchanged, the encoder gets the keep mask and computes as if absent tokens did
          not exist; a side with no present token is the [CLS]-only embedding. Encoders with
          ``supports_drop = False`` (windowed ones such as Swin) raise ValueError.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..checks import (check_choice, check_finite, check_has_values, check_max_batch, check_shape, check_tensor,
                       result_dtype)
from ..defaults import default_tokens_per_call
from .packing import pack_bits

BASELINES = ("zero", "drop")


def resolve_max_batch(max_batch) -> Optional[int]:
    """None stays None (rows per call then follow ``default_tokens_per_call``); otherwise a checked positive int."""
    return None if max_batch is None else check_max_batch(max_batch)


def check_encoders(image_encoder, text_encoder, baseline: str) -> None:
    """Raise TypeError for a non-callable encoder, ValueError for an unknown or unsupported baseline."""
    check_choice("baseline", baseline, BASELINES)
    for name, enc in (("image_encoder", image_encoder), ("text_encoder", text_encoder)):
        if not callable(enc):
            raise TypeError(f"{name} must be callable (the coalition-encoder protocol), got {type(enc).__name__}")
        if baseline == "drop" and not getattr(enc, "supports_drop", True):
            raise ValueError(
                f"baseline='drop' is not defined for {name} ({type(enc).__name__} has supports_drop=False, "
                "e.g. windowed attention); use baseline='zero'"
            )


def check_encoder_output(name: str, out, rows: int, dim: Optional[int]) -> torch.Tensor:
    """The output of one encoder call on ``rows`` coalition rows: float[rows, d] (d = ``dim`` when
    an earlier call fixed it), else ValueError (TypeError for a non-tensor) naming the encoder."""
    want = f"[{rows}, {'d' if dim is None else dim}]"
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape {want}, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != rows or (dim is not None and out.shape[1] != dim):
        raise ValueError(f"{name} must return shape {want} (one embedding per coalition row) for tokens of "
                         f"{rows} rows, got {list(out.shape)}")
    if not out.is_floating_point():
        raise ValueError(f"{name} must return floating-point embeddings, got {out.dtype}")
    return out


def encode_halves(encoder, tokens: torch.Tensor, pair: torch.Tensor, keep: torch.Tensor, *,
                  baseline: str, max_batch: Optional[int],
                  token_mask: Optional[torch.Tensor] = None, name: Optional[str] = None) -> torch.Tensor:
    """Global embeddings of many coalition halves, each distinct half encoded once.

    tokens float[B, N, D] (B pairs), pair LongTensor[C] (which pair each row belongs to),
    keep bool[C, N] (present tokens), token_mask bool[B, N] or None (padding: never present,
    always dropped), max_batch: rows per encoder call (None: ``default_tokens_per_call(tokens.device)`` // N). Returns
    float[C, d], rows in the order of ``keep``. Every call's output is checked
    (``check_encoder_output``; ``name`` names the encoder, default its type).
    """
    name = name or f"encoder {type(encoder).__name__}"
    C, N = keep.shape
    rows_per_call = (max(1, default_tokens_per_call(tokens.device) // max(N, 1)) if max_batch is None
                     else max_batch)
    if token_mask is not None:
        keep = keep & token_mask[pair]
    key = torch.cat([pair[:, None], pack_bits(keep)], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    U = distinct.shape[0]
    first = torch.full((U,), C, dtype=torch.long, device=keep.device)
    first.scatter_reduce_(0, inverse, torch.arange(C, device=keep.device), reduce="amin")
    outs = []
    for lo in range(0, U, rows_per_call):
        rows = first[lo:lo + rows_per_call]
        x, k, p = tokens[pair[rows]], keep[rows], pair[rows]
        if baseline == "zero":
            x = x * k[..., None].to(x.dtype)
            k = token_mask[p] if token_mask is not None else torch.ones_like(k)
        outs.append(check_encoder_output(name, encoder(x, k), x.shape[0], outs[0].shape[1] if outs else None))
    emb = torch.cat(outs) if outs else tokens.new_zeros(0, 1)
    return emb[inverse]


def cosine(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row-wise cosine similarity float[C, d] x float[C, d] -> float[C] (0 for a zero vector, never NaN)."""
    return F.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1, eps=1e-12)


def check_tokens(name: str, tokens: torch.Tensor, dims: int) -> torch.Tensor:
    """Float tensor with ``dims`` dimensions and only finite values."""
    check_tensor(name, tokens, dims=dims, dtype_kind="float")
    return check_finite(name, check_has_values(name, tokens))


def dual_encoder_game(image_encoder, text_encoder, image_tokens: torch.Tensor,
                      text_tokens: torch.Tensor, *, baseline: str = "zero",
                      max_batch: Optional[int] = None, image_mask: Optional[torch.Tensor] = None,
                      text_mask: Optional[torch.Tensor] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The batched game v1 of one image-text pair (api.md "Token-level games").

    image_tokens float[N_I, D_I], text_tokens float[N_T, D_T]: token embeddings before position
    embeddings. image_mask bool[N_I] / text_mask bool[N_T] (optional padding): padded tokens are
    never players and never present (the encoder always gets keep False for them), so the
    players are the real tokens only: 0..n_I-1 the real image tokens, n_I..n_I+n_T-1 the real
    text tokens (in their order; they keep their original sequence positions). Returns ``game(coalitions bool[C, n]) -> float[C]`` (float64 when the
    tokens are float64, else float32), evaluated under ``torch.inference_mode``.
    """
    check_encoders(image_encoder, text_encoder, baseline)
    check_tokens("image_tokens", image_tokens, 2)
    check_tokens("text_tokens", text_tokens, 2)
    max_batch = resolve_max_batch(max_batch)
    masks = []
    for name, mask, tokens in (("image_mask", image_mask, image_tokens), ("text_mask", text_mask, text_tokens)):
        if mask is None:
            mask = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        check_tensor(name, mask, dims=1, dtype_kind="bool")
        check_shape(name, check_has_values(name, mask), (tokens.shape[0],))
        masks.append(mask.to(tokens.device))
    img, txt = image_tokens[None], text_tokens[None]
    img_mask, txt_mask = masks[0][None], masks[1][None]
    img_players, txt_players = masks[0].nonzero().flatten(), masks[1].nonzero().flatten()
    n_img, n = len(img_players), len(img_players) + len(txt_players)
    dtype = result_dtype(image_tokens)

    def game(coalitions: torch.Tensor) -> torch.Tensor:
        check_tensor("coalitions", coalitions, dims=2, dtype_kind="bool")
        check_shape("coalitions", coalitions, (None, n))
        coalitions = coalitions.to(image_tokens.device)
        C = coalitions.shape[0]
        pair = torch.zeros(C, dtype=torch.long, device=coalitions.device)
        keep_img = coalitions.new_zeros(C, img.shape[1])
        keep_img[:, img_players] = coalitions[:, :n_img]
        keep_txt = coalitions.new_zeros(C, txt.shape[1])
        keep_txt[:, txt_players] = coalitions[:, n_img:]
        with torch.inference_mode():
            e_img = encode_halves(image_encoder, img, pair, keep_img, baseline=baseline,
                                  max_batch=max_batch, token_mask=img_mask, name="image_encoder")
            e_txt = encode_halves(text_encoder, txt, pair, keep_txt, baseline=baseline,
                                  max_batch=max_batch, token_mask=txt_mask, name="text_encoder")
            return cosine(e_img, e_txt, dtype)

    game.n_players = n
    return game
