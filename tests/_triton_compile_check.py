"""Compile every Triton kernel of the package to sm_90 cubins without a GPU: the alignment
game's three kernels, the token-level towers' bitmask attention and the late-interaction op's
three kernels (a script: run with
TRITON_INTERPRET unset; tests/test_triton_compile.py does so in a subprocess).

The interpreter runs kernels as Python and misses what only the compiler checks (non-constexpr
globals, type promotion, layouts, register spills are not errors). Each case is compiled with
the constexprs and warps the backend launches with; prints one line per kernel and exits
non-zero on the first failure.
"""
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from shapley_kernels.alignment import _triton_backend as backend
from shapley_kernels.alignment import _triton_kernels as kernels
from shapley_kernels.late_interaction import _triton_backend as li_backend
from shapley_kernels.late_interaction import _triton_kernels as li_kernels
from shapley_kernels.token_level import _triton_attention as attention

# (dtype, keys L, head width hd): both block sizes, a head width rounded up, the three dtypes
ATTENTION_CASES = ((torch.float32, 65, 16), (torch.float16, 16, 12), (torch.bfloat16, 197, 64))
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _cases():
    """(kernel, signature, constexprs, options) at the launch configurations of the launchers
    (the alignment backend's NUM_WARPS; the attention launcher keeps Triton's default warps)."""
    warps = {"num_warps": backend.NUM_WARPS}
    for K, M, dt in ((8, 6, "fp32"), (20, 20, "fp64")):   # game and exact, both dtypes
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.game_kernel, dict(
            A="*" + dt, region_mask="*u8", phrase_mask="*u8", coal="*u8", out="*" + dt, C="i32", K="i32",
            M="i32", coal_per_prog="i32", KP="constexpr", MP="constexpr", BC="constexpr"), \
            dict(KP=KP, MP=MP, BC=backend._block(KP, MP)), warps
    for K, M, dt in ((20, 20, "fp32"), (20, 20, "fp64")):
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.exact_direction_kernel, dict(
            A="*" + dt, rows="*i32", cols="*i32", coef="*" + dt, out="*" + dt, R="i32", C="i32",
            subsets_per_prog="i32", RP="constexpr", CP="constexpr", BS="constexpr"), \
            dict(RP=KP, CP=MP, BS=backend._block(KP, MP)), warps
    for K, M, dt in ((64, 64, "fp32"), (8, 6, "fp64")):
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.sampling_kernel, dict(
            A="*" + dt, rows="*i32", cols="*i32", out_sum="*fp64", out_sq="*fp64", R="i32", C="i32",
            num_samples="i32", k0="i64", k1="i32", RP="constexpr", CP="constexpr", BN="constexpr"), \
            dict(RP=KP, CP=MP, BN=backend._block(KP, MP)), warps
    for dtype, L, hd in ATTENTION_CASES:
        tensor = "*" + TRITON_DTYPES[dtype]
        yield attention._bitmask_attention_kernel, dict(
            q_ptr=tensor, k_ptr=tensor, v_ptr=tensor, o_ptr=tensor, bits_ptr="*i64", L="i32", HD="i32",
            HEADS="i32", WORDS="i32", scale="fp32", BLOCK_M="constexpr", BLOCK_N="constexpr",
            BLOCK_D="constexpr", PRECISION="constexpr"), attention.launch_config(L, hd, dtype), {}
    li_warps = {"num_warps": li_backend.NUM_WARPS}
    for (Q, P, D), dt, write_best in (((8, 64, 64), "fp32", False), ((3, 196, 130), "fp64", True)):
        QP, BP, BD = li_backend.launch_blocks(Q, P, D)
        yield li_kernels.forward_kernel, dict(
            q_ptr="*" + dt, mask_ptr="*u8", p_ptr="*" + dt, sim_ptr="*" + dt, best_ptr="*" + dt, arg_ptr="*i32",
            Bi="i32", Q="i32", P="i32", D="i32", QP="constexpr", BP="constexpr", BD="constexpr",
            WRITE_BEST="constexpr"), dict(QP=QP, BP=BP, BD=BD, WRITE_BEST=write_best), li_warps
    yield li_kernels.grad_queries_kernel, dict(
        grad_ptr="*fp32", weight_ptr="*fp32", p_ptr="*fp32", arg_ptr="*i32", gq_ptr="*fp32", Bi="i32", Q="i32",
        P="i32", D="i32", QP="constexpr", BD="constexpr"), dict(QP=8, BD=64), li_warps
    yield li_kernels.grad_patches_kernel, dict(
        grad_ptr="*fp32", weight_ptr="*fp32", q_ptr="*fp32", arg_ptr="*i32", gp_ptr="*fp32", Bt="i32", Bi="i32",
        Q="i32", P="i32", D="i32", BD="constexpr"), dict(BD=64), li_warps


def main():
    target = GPUTarget("cuda", 90, 32)
    for fn, signature, constexprs, options in _cases():
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                  options=options)
        pointer = next(iter(signature.values()))
        print(f"{fn.__name__} {pointer} {constexprs}: {len(compiled.asm['cubin'])} bytes of cubin")


if __name__ == "__main__":
    main()
