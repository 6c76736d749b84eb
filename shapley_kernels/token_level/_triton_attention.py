"""Flash-style Triton attention whose key mask is a per-row coalition bitmask (int64 words).

softmax(q k^T / sqrt(hd)) v over the keys whose bit is set: bit j of word w of row r allows key
64 w + j. The bits are expanded on chip block by block (no [c, L] bool mask in memory), with an
online softmax (running max and sum) so no [L, L] score matrix is stored. Forward only (the
towers use it for inference); ``towers.sdpa_attention`` (SDPA with the equivalent boolean
mask) is the reference and the CPU path. Runs on a CUDA device, or anywhere under
TRITON_INTERPRET=1 (slow: tests use tiny shapes). Triton API kept to what 3.6 has.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .packing import pack_bits


@triton.jit
def _bitmask_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, bits_ptr, L, HD, HEADS, WORDS, scale,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_rh = tl.program_id(1)  # row * HEADS + head
    row = pid_rh // HEADS
    base = pid_rh.to(tl.int64) * L * HD
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HD
    q = tl.load(q_ptr + base + offs_m[:, None] * HD + offs_d[None, :],
                mask=(offs_m[:, None] < L) & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        words = tl.load(bits_ptr + row * WORDS + offs_n // 64, mask=n_ok, other=0)
        allowed = (((words >> (offs_n % 64).to(tl.int64)) & 1) != 0) & n_ok
        kv_off = base + offs_n[:, None] * HD + offs_d[None, :]
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_ok, other=0.0)
        v = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
        s = tl.where(allowed[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + base + offs_m[:, None] * HD + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < L) & d_ok[None, :])


def launch_config(L: int, hd: int, dtype: torch.dtype) -> dict:
    """The kernel's constexprs for keys of length L, head width hd and inputs of ``dtype``:
    BLOCK_M = BLOCK_N (16 for L <= 16, else 64), BLOCK_D (hd rounded up to a power of two, at
    least 16, tl.dot's smallest) and PRECISION ("ieee" for float32, so no TF32; "tf32" otherwise,
    where the half-precision dots ignore it)."""
    block = 16 if L <= 16 else 64
    return {"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": max(16, triton.next_power_of_2(hd)),
            "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}


def bitmask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Masked attention with the mask sent to the kernel as packed bits.

    q, k, v: float[c, heads, L, hd] (float16, bfloat16 or float32); key_mask: bool[c, L]
    (True = key may be attended) or None (all keys). Returns float[c, heads, L, hd]; a row with
    no allowed key gets zeros. Forward only (no autograd). float32 products are exact IEEE
    (no TF32), so results match SDPA in float32.
    """
    if q.requires_grad or k.requires_grad or v.requires_grad:
        raise ValueError("attention='triton' is forward-only (inference); use attention='sdpa' to train")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q must be float16, bfloat16 or float32 for the Triton kernel, got {q.dtype}")
    c, heads, L, hd = q.shape
    if key_mask is None:
        key_mask = torch.ones(c, L, dtype=torch.bool, device=q.device)
    bits = pack_bits(key_mask).contiguous()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    config = launch_config(L, hd, q.dtype)
    grid = (triton.cdiv(L, config["BLOCK_M"]), c * heads)
    _bitmask_attention_kernel[grid](q, k, v, out, bits, L, hd, heads, bits.shape[1],
                                    1.0 / math.sqrt(hd), **config)
    return out

