"""Triton kernels of the late-interaction op (contract: ``_torch_backend``'s module docstring).

Only Triton APIs present in Triton 3.6; every kernel runs under ``TRITON_INTERPRET=1`` (fixed
block sizes, no autotuning). Inputs are float32 or float64 (the dispatcher upcasts float16 /
bfloat16 to float32, so they accumulate in float32); each kernel computes in its inputs' dtype.
Layouts: queries [Bt, Q, D], query_mask uint8 [Bt, Q], patches [Bi, P, D], argmax int32 [Bt, Bi, Q],
all contiguous; offsets are int64 (Bt Bi Q and Bi P D may pass 2^31).
"""
import triton
import triton.language as tl


@triton.jit
def forward_kernel(q_ptr, mask_ptr, p_ptr, sim_ptr, best_ptr, arg_ptr, Bi, Q, P, D,
                   QP: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr, WRITE_BEST: tl.constexpr):
    """One program per (caption t, image i): each query's max over patches, in blocks of BP patches
    and BD dims ([QP, BP, BD] products per step), the running argmax updated only on a strictly
    larger block max, and inside a block the lowest index of the max: ties keep the lowest patch.
    Writes similarity[t, i], argmax[t, i, :] and, if WRITE_BEST, best[t, i, :]."""
    t = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    qs = tl.arange(0, QP)
    live = qs < Q
    present = live & (tl.load(mask_ptr + t * Q + qs, mask=live, other=0) != 0)
    acc_type = q_ptr.dtype.element_ty
    top = tl.full((QP,), float("-inf"), acc_type)
    where = tl.zeros((QP,), tl.int32)
    for p0 in range(0, P, BP):
        ps = p0 + tl.arange(0, BP)
        acc = tl.zeros((QP, BP), acc_type)
        for d0 in range(0, D, BD):
            ks = d0 + tl.arange(0, BD)
            qv = tl.load(q_ptr + (t * Q + qs)[:, None] * D + ks[None, :], mask=live[:, None] & (ks < D)[None, :],
                         other=0.0)
            pv = tl.load(p_ptr + (i * P + ps)[:, None] * D + ks[None, :], mask=(ps < P)[:, None] & (ks < D)[None, :],
                         other=0.0)
            acc += tl.sum(qv[:, None, :] * pv[None, :, :], axis=2)
        acc = tl.where((ps < P)[None, :], acc, float("-inf"))
        block_max = tl.max(acc, axis=1)
        block_arg = tl.min(tl.where(acc == block_max[:, None], ps[None, :], 2147483647), axis=1).to(tl.int32)
        better = block_max > top
        top = tl.where(better, block_max, top)
        where = tl.where(better, block_arg, where)
    top = tl.where(present, top, 0.0)
    count = tl.sum(present.to(tl.int32), axis=0)
    similarity = tl.sum(top, axis=0) / tl.maximum(count, 1).to(acc_type)
    tl.store(sim_ptr + t * Bi + i, similarity.to(sim_ptr.dtype.element_ty))
    out = (t * Bi + i) * Q + qs
    tl.store(arg_ptr + out, tl.where(present, where, -1), mask=live)
    if WRITE_BEST:
        tl.store(best_ptr + out, top.to(best_ptr.dtype.element_ty), mask=live)


@triton.jit
def grad_queries_kernel(grad_ptr, weight_ptr, p_ptr, arg_ptr, gq_ptr, Bi, Q, P, D,
                        QP: tl.constexpr, BD: tl.constexpr):
    """One program per (caption t, block of BD dims): grad_queries[t, q] = sum_i grad[t, i] *
    weight[t, q] * patches[i, argmax[t, i, q]], the images summed in order (deterministic)."""
    t = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BD + tl.arange(0, BD)
    qs = tl.arange(0, QP)
    live = qs < Q
    weight = tl.load(weight_ptr + t * Q + qs, mask=live, other=0.0)
    acc = tl.zeros((QP, BD), weight.dtype)
    for i in range(0, Bi):
        arg = tl.load(arg_ptr + (t * Bi + i) * Q + qs, mask=live, other=-1)
        share = tl.where(arg >= 0, tl.load(grad_ptr + t * Bi + i) * weight, 0.0)
        rows = i * P + tl.maximum(arg, 0).to(tl.int64)
        pv = tl.load(p_ptr + rows[:, None] * D + ks[None, :], mask=(arg >= 0)[:, None] & (ks < D)[None, :], other=0.0)
        acc += share[:, None] * pv
    tl.store(gq_ptr + (t * Q + qs)[:, None] * D + ks[None, :], acc, mask=live[:, None] & (ks < D)[None, :])


@triton.jit
def grad_patches_kernel(grad_ptr, weight_ptr, q_ptr, arg_ptr, gp_ptr, Bt, Bi, Q, P, D, BD: tl.constexpr):
    """One program per (image i, block of BD dims), owning those entries of grad_patches[i] (zeroed
    by the caller): for every caption t and query q in order, grad_patches[i, argmax[t, i, q]] +=
    grad[t, i] * weight[t, q] * queries[t, q] (a load and a store of one program: no atomics,
    deterministic)."""
    i = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BD + tl.arange(0, BD)
    dims = ks < D
    for t in range(0, Bt):
        g = tl.load(grad_ptr + t * Bi + i)
        for q in range(0, Q):
            arg = tl.load(arg_ptr + (t * Bi + i) * Q + q)
            if arg >= 0:
                share = g * tl.load(weight_ptr + t * Q + q)
                qv = tl.load(q_ptr + (t * Q + q) * D + ks, mask=dims, other=0.0)
                target = gp_ptr + (i * P + arg.to(tl.int64)) * D + ks
                tl.store(target, tl.load(target, mask=dims, other=0.0) + share * qv, mask=dims)
