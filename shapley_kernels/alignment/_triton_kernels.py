"""Triton kernels of the alignment game (spec section 4): game values, exact and sampled SII.

Only Triton APIs present in Triton 3.6 are used; nothing queries a device at import time, and
every kernel runs under ``TRITON_INTERPRET=1`` (fixed block sizes, no autotuning, no bf16).

Layouts (all contiguous): a matrix ``A`` float[B, R, C] whose present rows / columns come first
(``rows`` / ``cols`` int32[B] give the present counts; see ``_device_driver.compact``), except for
``game_kernel`` which takes the original A and masks.

Numerics: the max of a softmax row over a set P is 1 / sum_{j in P} exp(a_j - max_P a), computed
from a (max, sum of exp) pair: stable for logits of any finite size (1e4 and beyond).
"""
import triton
import triton.language as tl

# Philox4x32-10 constants (Salmon et al., Random123); csrc/alignment_cuda.cu uses the same.
# Globals read by @triton.jit code must be tl.constexpr when compiled (not only interpreted).
_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def philox4x32(k0, k1, c0, c1, c2):
    """Philox4x32-10 (Salmon et al., Random123) of key (k0, k1) and counter (c0, c1, c2, 0).

    k0, k1: uint32 scalars or tensors broadcastable to c0; c0, c1, c2: uint32 tensors of one
    common shape. Returns the 4 output words (uint32 tensors of that shape).
    """
    zero = c0 * 0
    x0 = c0
    x1 = c1 + zero
    x2 = c2 + zero
    x3 = zero
    key0 = zero + k0
    key1 = zero + k1
    m0 = tl.full(c0.shape, _PHILOX_M0, tl.uint32)
    m1 = tl.full(c0.shape, _PHILOX_M1, tl.uint32)
    w0 = tl.full(c0.shape, _PHILOX_W0, tl.uint32)
    w1 = tl.full(c0.shape, _PHILOX_W1, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(m0, x0)
        lo0 = m0 * x0
        hi1 = tl.umulhi(m1, x2)
        lo1 = m1 * x2
        x0, x1, x2, x3 = hi1 ^ x1 ^ key0, lo1, hi0 ^ x3 ^ key1, lo0
        key0 = key0 + w0
        key1 = key1 + w1
    return x0, x1, x2, x3


@triton.jit
def uniform01(word):
    """A uint32 word as a float32 in [0, 1): (word >> 8) * 2^-24 (exact; identical in CUDA)."""
    return (word >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _inverse_max_softmax(a, member, axis: tl.constexpr):
    """(max softmax, any member) along ``axis`` of ``a`` restricted to ``member`` (broadcastable).

    Returns r = 1 / sum exp(a - max) over the members (0 where there is none) and the has-member flag.
    """
    masked = tl.where(member, a, float("-inf"))
    top = tl.max(masked, axis=axis)
    has = top > float("-inf")
    top = tl.where(has, top, 0.0)
    total = tl.sum(tl.where(member, tl.exp(masked - tl.expand_dims(top, axis)), 0.0), axis=axis)
    r = tl.where(has, 1.0 / tl.where(has, total, 1.0), 0.0)
    return r, has


@triton.jit
def game_kernel(A, region_mask, phrase_mask, coal, out, C, K, M, coal_per_prog,
                KP: tl.constexpr, MP: tl.constexpr, BC: tl.constexpr):
    """v2(S) for coalitions [pid1 * coal_per_prog, ...) of matrix pid0.

    A float[B, K, M]; region_mask / phrase_mask uint8[B, K] / [B, M]; coal uint8[B, C, K + M];
    out float[B, C]. One program: one matrix tile in registers, BC coalitions per step.
    """
    b = tl.program_id(0)
    c_begin = tl.program_id(1) * coal_per_prog
    c_end = tl.minimum(c_begin + coal_per_prog, C)
    rk = tl.arange(0, KP)
    pm = tl.arange(0, MP)
    rmask = (rk < K) & (tl.load(region_mask + b * K + rk, mask=rk < K, other=0) != 0)
    pmask = (pm < M) & (tl.load(phrase_mask + b * M + pm, mask=pm < M, other=0) != 0)
    a = tl.load(A + b * K * M + rk[:, None] * M + pm[None, :], mask=(rk < K)[:, None] & (pm < M)[None, :], other=0.0)
    a3 = a[None, :, :]
    for c0 in range(c_begin, c_end, BC):
        cc = c0 + tl.arange(0, BC)
        live = cc < c_end
        base = coal + b.to(tl.int64) * C * (K + M) + cc.to(tl.int64)[:, None] * (K + M)
        in_r = (tl.load(base + rk[None, :], mask=live[:, None] & (rk < K)[None, :], other=0) != 0) & rmask[None, :]
        in_p = (tl.load(base + K + pm[None, :], mask=live[:, None] & (pm < M)[None, :], other=0) != 0) & pmask[None, :]
        member = in_r[:, :, None] & in_p[:, None, :]                      # [BC, KP, MP]
        r_row, _ = _inverse_max_softmax(a3, member, 2)                     # [BC, KP]
        r_col, _ = _inverse_max_softmax(a3, member, 1)                     # [BC, MP]
        n_r = tl.sum(in_r.to(tl.int32), axis=1)
        n_p = tl.sum(in_p.to(tl.int32), axis=1)
        both = (n_r > 0) & (n_p > 0)
        s1 = tl.sum(r_row, axis=1) / tl.maximum(n_r, 1).to(a.dtype)
        s2 = tl.sum(r_col, axis=1) / tl.maximum(n_p, 1).to(a.dtype)
        value = tl.where(both, (s1 + s2) * 0.5, 0.0)
        tl.store(out + b.to(tl.int64) * C + cc, value.to(out.dtype.element_ty), mask=live)


@triton.jit
def exact_direction_kernel(A, rows, cols, coef, out, R, C, subsets_per_prog,
                           RP: tl.constexpr, CP: tl.constexpr, BS: tl.constexpr):
    """One direction of the factorised exact SII, partial sums over one chunk of column subsets.

    A float[B, R, C] compacted (rows = owners whose softmax is taken, columns = elements);
    rows / cols int32[B]; coef float[B, 2, C + 1] (``direction_coefficients``: c(u), b(u));
    out acc[B, n_chunks, R, C]: program (b, chunk) writes sum over its subsets U of
    sign(U, j) * (r_i(U) c(u) - Tot(U) b(u)). The subsets U of the present columns are enumerated
    as bitmasks, BS per step; nothing per-subset is written to global memory.
    """
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    n_rows = tl.load(rows + b)
    n_cols = tl.load(cols + b)
    n_sub = tl.where(n_rows > 0, 1 << n_cols, 0)
    u_begin = chunk * subsets_per_prog
    u_end = tl.minimum(u_begin + subsets_per_prog, n_sub)
    ri = tl.arange(0, RP)
    cj = tl.arange(0, CP)
    row_ok = ri < n_rows
    col_ok = cj < n_cols
    a = tl.load(A + b.to(tl.int64) * R * C + ri[:, None] * C + cj[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    coef_b = coef + b.to(tl.int64) * 2 * (C + 1)
    acc = tl.zeros((RP, CP), dtype=coef.dtype.element_ty)
    a3 = a[None, :, :].to(coef.dtype.element_ty)
    for u0 in range(u_begin, u_end, BS):
        u = u0 + tl.arange(0, BS)
        live = u < u_end
        in_u = (((u[:, None] >> cj[None, :]) & 1) != 0) & col_ok[None, :] & live[:, None]   # [BS, CP]
        size = tl.sum(in_u.to(tl.int32), axis=1)                                             # [BS]
        r, _ = _inverse_max_softmax(a3, in_u[:, None, :], 2)                                # [BS, RP]
        r = tl.where(row_ok[None, :] & live[:, None], r, 0.0)
        tot = tl.sum(r, axis=1)                                                              # [BS]
        u_size = tl.where(in_u, size[:, None] - 1, size[:, None])                           # [BS, CP]
        use = live[:, None] & col_ok[None, :]
        sign = tl.where(in_u, 1.0, -1.0)
        wc = sign * tl.load(coef_b + u_size, mask=use, other=0.0)
        wb = sign * tl.load(coef_b + (C + 1) + u_size, mask=use, other=0.0)
        acc += tl.sum(r[:, :, None] * wc[:, None, :], axis=0) - tl.sum(tot[:, None] * wb, axis=0)[None, :]
    n_chunks = tl.num_programs(1)
    dst = out + (b.to(tl.int64) * n_chunks + chunk) * R * C + ri[:, None] * C + cj[None, :]
    tl.store(dst, acc, mask=(ri < R)[:, None] & (cj < C)[None, :])


@triton.jit
def _pair_delta(a3, elem3, axis: tl.constexpr, has_elem, has_own, in_own, is_pair_owner, n_own, a_extra):
    """g(T+o+e) - g(T+o) - g(T+e) + g(T) of one direction of v2 for a block of samples.

    The direction's owners take a softmax over its elements (rows over phrases for g1, columns
    over regions for g2); o is the pair's owner, e its element. a3: logits broadcastable to
    [BN, R, C]; elem3: member mask of T's elements broadcast along ``axis`` (the element axis);
    has_elem / has_own [BN]: T has an element / an owner; in_own [BN, owners]: T's owners;
    is_pair_owner [1, owners]: o; n_own [BN]: |T's owners|; a_extra [owners]: logits of e.
    One (max, sum-exp) pass over T's elements serves T and T+e (e folded in afterwards).
    """
    top = tl.max(tl.where(elem3, a3, float("-inf")), axis=axis)                    # [BN, owners]
    top0 = tl.where(has_elem[:, None], top, 0.0)
    z0 = tl.sum(tl.where(elem3, tl.exp(tl.minimum(a3 - tl.expand_dims(top0, axis), 0.0)), 0.0), axis=axis)
    top1 = tl.maximum(top, a_extra[None, :])
    z1 = tl.where(has_elem[:, None], z0 * tl.exp(tl.minimum(top0 - top1, 0.0)), 0.0) + tl.exp(a_extra[None, :] - top1)
    r0 = tl.where(has_elem[:, None], 1.0 / tl.where(has_elem[:, None], z0, 1.0), 0.0)   # 0: no element
    r1 = 1.0 / z1
    sum0 = tl.sum(tl.where(in_own, r0, 0.0), axis=1)
    sum1 = tl.sum(tl.where(in_own, r1, 0.0), axis=1)
    g = tl.where(has_own & has_elem, sum0 / tl.maximum(n_own, 1.0), 0.0)
    g_o = (sum0 + tl.sum(tl.where(is_pair_owner, r0, 0.0), axis=1)) / (n_own + 1.0)
    g_e = tl.where(has_own, sum1 / tl.maximum(n_own, 1.0), 0.0)
    g_oe = (sum1 + tl.sum(tl.where(is_pair_owner, r1, 0.0), axis=1)) / (n_own + 1.0)
    return g_oe - g_o - g_e + g


@triton.jit
def sampling_kernel(A, rows, cols, out_sum, out_sq, R, C, num_samples, k0, k1,
                    RP: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
    """Monte Carlo SII of one (region i, phrase j) pair of a compacted A float[B, R, C].

    Program p = (b * R + i) * C + j. With W(s, t) = philox4x32(key (k0, k1), counter (s, p, t, 0)),
    sample s draws q = uniform01(W(s, 0)[2]) and keeps region k when uniform01(W(s, k)[0]) < q and
    phrase m when uniform01(W(s, m)[1]) < q (i and j excluded). It evaluates the 4 coalitions T, T+i, T+j,
    T+ij sharing one (max, sum-exp) pass per row and column, and adds
    delta = v2(T+ij) - v2(T+i) - v2(T+j) + v2(T) to out_sum[p] and delta^2 to out_sq[p] (float64).
    """
    p = tl.program_id(0)
    b = p // (R * C)
    i = (p // C) % R
    j = p % C
    n_rows = tl.load(rows + b)
    n_cols = tl.load(cols + b)
    n_loop = tl.where((i < n_rows) & (j < n_cols), num_samples, 0)
    rk = tl.arange(0, RP)
    pm = tl.arange(0, CP)
    row_ok = rk < n_rows
    col_ok = pm < n_cols
    a = tl.load(A + b.to(tl.int64) * R * C + rk[:, None] * C + pm[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    a_col_j = tl.sum(tl.where(pm[None, :] == j, a, 0.0), axis=1)        # [RP] a[:, j]
    a_row_i = tl.sum(tl.where(rk[:, None] == i, a, 0.0), axis=0)        # [CP] a[i, :]
    a3 = a[None, :, :]
    pair = tl.full((BN, 1), 0, tl.uint32) + p.to(tl.uint32)
    key0 = (pair * 0 + k0).to(tl.uint32)        # k0, k1 may arrive as constexpr, int32 or int64
    key1 = (pair * 0 + k1).to(tl.uint32)
    acc = tl.zeros((BN,), dtype=tl.float64)
    acc_sq = tl.zeros((BN,), dtype=tl.float64)
    for s0 in range(0, n_loop, BN):
        s = s0 + tl.arange(0, BN)
        live = s < n_loop
        ctr = s.to(tl.uint32)[:, None]
        w_r, _, w_q, _ = philox4x32(key0, key1, ctr + rk[None, :] * 0, pair, rk[None, :].to(tl.uint32))
        _, w_p, _, _ = philox4x32(key0, key1, ctr + pm[None, :] * 0, pair, pm[None, :].to(tl.uint32))
        q = tl.sum(tl.where(rk[None, :] == 0, uniform01(w_q), 0.0), axis=1)            # [BN]
        u_r = uniform01(w_r)                                                            # [BN, RP]
        u_p = uniform01(w_p)                                                            # [BN, CP]
        in_r = (u_r < q[:, None]) & row_ok[None, :] & (rk[None, :] != i)               # [BN, RP] T_R
        in_p = (u_p < q[:, None]) & col_ok[None, :] & (pm[None, :] != j)               # [BN, CP] T_P
        n_r = tl.sum(in_r.to(tl.int32), axis=1).to(a.dtype)
        n_p = tl.sum(in_p.to(tl.int32), axis=1).to(a.dtype)
        has_r = n_r > 0
        has_p = n_p > 0
        # g1: rows (regions) over phrases T_P / T_P + j;  g2: columns (phrases) over regions T_R / T_R + i
        d1 = _pair_delta(a3, in_p[:, None, :], 2, has_p, has_r, in_r, (rk == i)[None, :], n_r, a_col_j)
        d2 = _pair_delta(a3, in_r[:, :, None], 1, has_r, has_p, in_p, (pm == j)[None, :], n_p, a_row_i)
        delta = 0.5 * (d1 + d2)
        delta = tl.where(live, delta, 0.0).to(tl.float64)
        acc += delta
        acc_sq += delta * delta
    tl.store(out_sum + p, tl.sum(acc, axis=0))
    tl.store(out_sq + p, tl.sum(acc_sq, axis=0))
