"""Transformer towers that follow the coalition-encoder protocol (api.md, CONTRACTS.md section 2).

``TransformerTower`` is a ViT-style (pre-LN) or BERT-style (post-LN) encoder over token
embeddings. It owns a learned [CLS] token and learned position embeddings (max_tokens + 1
positions: [CLS] at 0, sequence position i at i + 1). Absent tokens (``keep`` False) are never
attended ("drop" semantics, also the padding mask during training), and by default they are
not computed at all: kept tokens are packed into dense buckets (``packing.py``) so the cost
follows the number of tokens kept.

Implementations, chosen at construction (``TransformerTower(drop_impl=, attention=)``; None takes
the process-wide default of ``shapley_kernels.defaults``, which the environment may set):
  drop_impl = "pack" (default) | "mask": "mask" runs every token with a key mask (the
      reference the packed path is tested against).
  attention = "auto" (default) | "sdpa" | "triton": "auto" uses the Triton bitmask kernel for
      masked inference on a CUDA device when triton is importable, SDPA otherwise; if the kernel
      fails there (compile error, unsupported GPU) "auto" warns, records the error in the tower's
      ``triton_failures`` under the input's (device, dtype, head dim) and uses SDPA for inputs of
      that kind from then on (other towers and other kinds of input still try the kernel).
      "triton" always uses the kernel.
"""
from typing import Dict, Optional, Tuple

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_shape, check_tensor
from ..defaults import ATTENTION_IMPLS, DROP_IMPLS, default_attention, default_drop_impl
from .packing import gather_tokens, plan_buckets, scatter_tokens


def _input_kind(q: torch.Tensor) -> tuple:
    """The key of ``triton_failures``: (device, dtype, head dim) of q float[c, heads, L, hd]."""
    return str(q.device), str(q.dtype), int(q.shape[-1])


def _triton_ready(q: torch.Tensor, failures: Dict[tuple, str]) -> bool:
    """Whether the "auto" attention may use the Triton kernel for ``q`` (CUDA, no grad, 16/32-bit,
    no earlier failure on inputs of its kind in ``failures``)."""
    if q.device.type != "cuda" or q.requires_grad or q.dtype == torch.float64 or _input_kind(q) in failures:
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def sdpa_attention(q, k, v, key_mask: Optional[torch.Tensor], dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over the keys ``key_mask`` allows, with PyTorch SDPA.

    q, k, v: float[c, heads, L, hd]; key_mask: bool[c, L] (True = may be attended) or None.
    Returns float[c, heads, L, hd]. The reference for the Triton kernel.
    """
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


def attend(q, k, v, key_mask: Optional[torch.Tensor], dropout_p: float, impl: str,
           failures: Dict[tuple, str]) -> torch.Tensor:
    """Attention with the implementation ``impl`` ("sdpa", "triton" or "auto", module docstring);
    ``failures``: the calling tower's record of Triton failures, which "auto" reads and extends.

    Shapes as ``sdpa_attention``.
    """
    if impl == "triton":
        from ._triton_attention import bitmask_attention

        return bitmask_attention(q, k, v, key_mask)
    if impl == "auto" and key_mask is not None and dropout_p == 0.0 and _triton_ready(q, failures):
        try:
            from ._triton_attention import bitmask_attention

            return bitmask_attention(q, k, v, key_mask)
        except Exception as exc:  # degrade, don't crash: SDPA computes the same thing
            kind = _input_kind(q)
            failures[kind] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"Triton attention failed on {kind} (device, dtype, head dim) inputs, using SDPA "
                          f"for them from now on: {failures[kind]}")
    return sdpa_attention(q, k, v, key_mask, dropout_p)


class _Block(nn.Module):
    """One transformer layer: multi-head self-attention and an MLP, pre- or post-LN."""

    def __init__(self, dim, heads, mlp_dim, norm_first, dropout, layer_norm_eps):
        super().__init__()
        self.heads = heads
        self.norm_first = norm_first
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.drop = nn.Dropout(dropout)

    def _attention(self, x, key_mask, impl, failures):
        c, L, dim = x.shape
        q, k, v = self.qkv(x).view(c, L, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        h = attend(q, k, v, key_mask, p, impl, failures)
        return self.drop(self.out(h.transpose(1, 2).reshape(c, L, dim)))

    def _mlp(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor], impl: str,
                failures: Dict[tuple, str]) -> torch.Tensor:
        """x float[c, L, dim], key_mask bool[c, L] or None -> float[c, L, dim]."""
        if self.norm_first:
            x = x + self._attention(self.norm1(x), key_mask, impl, failures)
            return x + self._mlp(self.norm2(x))
        x = self.norm1(x + self._attention(x, key_mask, impl, failures))
        return self.norm2(x + self._mlp(x))


class TransformerTower(nn.Module):
    """Coalition encoder: float[C, N, dim] token embeddings (+ keep mask) -> float[C, out_dim].

    norm_first=True: ViT-style pre-LN with a final LayerNorm. norm_first=False: BERT-style
    post-LN with an embedding LayerNorm (the last layer's output is already normalised).
    mlp_dim defaults to 4 * dim; activation GELU. ``drop_impl`` / ``attention``: module docstring
    (None: ``shapley_kernels.defaults``).
    """

    supports_drop = True

    def __init__(self, *, dim, depth, heads, max_tokens, out_dim, mlp_dim=None, norm_first=True,
                 dropout=0.0, layer_norm_eps=1e-6, init_std=0.02, drop_impl: Optional[str] = None,
                 attention: Optional[str] = None):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads),
                            ("max_tokens", max_tokens), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
        self.dim, self.max_tokens, self.out_dim = dim, max_tokens, out_dim
        self.norm_first = norm_first
        self.drop_impl = check_choice("drop_impl", default_drop_impl() if drop_impl is None else drop_impl,
                                      DROP_IMPLS)
        self.attention = check_choice("attention", default_attention() if attention is None else attention,
                                      ATTENTION_IMPLS)
        self.triton_failures: Dict[tuple, str] = {}   # (device, dtype, head dim) -> error of "auto"'s kernel
        self._compiled_run = None                     # compile_dense's torch.compile of _run, or None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens + 1, dim))
        self.embed_norm = nn.Identity() if norm_first else nn.LayerNorm(dim, eps=layer_norm_eps)
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, mlp_dim, norm_first, dropout, layer_norm_eps) for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim, eps=layer_norm_eps) if norm_first else nn.Identity()
        self.proj = nn.Linear(dim, out_dim, bias=False)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=std, a=-2 * std, b=2 * std)
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)

    # -- pieces -------------------------------------------------------------------------
    def _check(self, tokens, keep):
        check_tensor("tokens", tokens, dims=3, dtype_kind="float")
        C, N, dim = tokens.shape
        if dim != self.dim:
            raise ValueError(f"tokens must have last dimension dim={self.dim}, got {dim}")
        if N > self.max_tokens:
            raise ValueError(f"tokens has {N} tokens, more than max_tokens={self.max_tokens}")
        if keep is not None:
            check_tensor("keep", keep, dims=2, dtype_kind="bool")
            check_shape("keep", keep, (C, N))
        check_choice("drop_impl", self.drop_impl, DROP_IMPLS)
        check_choice("attention", self.attention, ATTENTION_IMPLS)

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor,
             key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Encode [CLS] + tokens. tokens float[c, n, dim], positions Long[c, n] or Long[n]
        (sequence positions, 0-based), key_mask bool[c, n] or None -> float[c, 1 + n, dim]."""
        c = tokens.shape[0]
        x = tokens + self.pos_embed[1 + positions]
        cls = (self.cls_token + self.pos_embed[0]).expand(c, 1, self.dim).to(x.dtype)
        x = self.embed_drop(self.embed_norm(torch.cat([cls, x], dim=1)))
        if key_mask is not None:
            key_mask = torch.cat([key_mask.new_ones(c, 1), key_mask], dim=1)
        for block in self.blocks:
            x = block(x, key_mask, self.attention, self.triton_failures)
        return self.final_norm(x)

    def _dense_pass(self):
        """``_run``, or its compiled form (``compile_dense``) while autograd records (grad enabled)."""
        if self._compiled_run is not None and torch.is_grad_enabled():
            return self._compiled_run
        return self._run

    # -- public -------------------------------------------------------------------------
    def compile_dense(self, **options) -> None:
        """Run the dense transformer pass through ``torch.compile(**options)`` from now on, where
        autograd records (grad enabled: a training forward).

        The compiled part is the pass over one dense batch of tokens (position embeddings,
        [CLS], the layers, the final norm): tensor code without host synchronisation. The
        packing of kept tokens (``plan_buckets``, host-side) stays eager around it, and so do
        calls under ``torch.no_grad`` / ``torch.inference_mode`` (coalition games, evaluation),
        whose many bucket shapes would only add compilations. The buckets' rows and lengths
        are marked dynamic (one graph for every bucket shape); other dimensions follow
        ``dynamic`` (default None: compiled dynamic once they have changed). The state dict is unchanged (no
        ``_orig_mod.`` keys). ``compile_dense(disable=True)``: back to eager.
        """
        if options.get("disable"):
            self._compiled_run = None
            return
        self._compiled_run = torch.compile(self._run, **{"dynamic": None, **options})

    def encode(self, tokens: torch.Tensor,
               keep: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states after the final norm, before projection.

        tokens float[C, N, dim] (before position embeddings), keep bool[C, N] or None (all
        present). Returns (cls_out float[C, dim], token_out float[C, N, dim]); rows of dropped
        tokens in token_out are 0.
        """
        return self._encode(tokens, keep, with_tokens=True)

    def _encode(self, tokens, keep, with_tokens: bool):
        """encode(); with_tokens=False skips the token outputs (returns None for them)."""
        self._check(tokens, keep)
        C, N, _ = tokens.shape
        positions = torch.arange(N, device=tokens.device)
        run = self._dense_pass()
        if keep is None or bool(keep.all()):
            h = run(tokens, positions, None)
            return h[:, 0], h[:, 1:]
        if self.drop_impl == "mask":
            h = run(tokens, positions, keep)
            return h[:, 0], h[:, 1:].masked_fill(~keep[..., None], 0.0)
        cls_out = token_out = None
        for bucket in plan_buckets(keep):
            packed = gather_tokens(tokens, bucket), bucket.index, bucket.valid
            if run is not self._run:  # bucket shapes change from call to call: one dynamic graph for all
                for x in packed:
                    if x is not None:  # valid: None where no row of the bucket is padded
                        torch._dynamo.maybe_mark_dynamic(x, (0, 1))
            h = run(*packed)
            if cls_out is None:  # the dtype the layers produce (autocast may change it)
                cls_out = h.new_zeros(C, self.dim)
                token_out = h.new_zeros(C, N, self.dim) if with_tokens else None
            cls_out[bucket.rows] = h[:, 0]
            if with_tokens:
                scatter_tokens(h[:, 1:], bucket, token_out)
        return cls_out, token_out

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """float[..., dim] -> float[..., out_dim] (linear, no bias)."""
        return self.proj(h)

    def forward(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Global embedding project(final [CLS]): tokens float[C, N, dim], keep bool[C, N] or
        None -> float[C, out_dim] (not normalised)."""
        return self.project(self._encode(tokens, keep, with_tokens=False)[0])
