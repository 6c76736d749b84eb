"""Compile the alignment Triton kernels to sm_90 cubins without a GPU (a script: run with
TRITON_INTERPRET unset; tests/test_alignment_triton.py does so in a subprocess).

The interpreter runs kernels as Python and misses what only the compiler checks (non-constexpr
globals, type promotion, layouts, register spills are not errors). Each case is compiled with
the constexprs and warps the backend launches with; prints one line per kernel and exits
non-zero on the first failure.
"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from shapley_kernels.alignment import _triton_backend as backend
from shapley_kernels.alignment import _triton_kernels as kernels


def _cases():
    """(kernel, signature, constexprs) at the launch configurations of the backend."""
    for K, M, dt in ((8, 6, "fp32"), (20, 20, "fp64")):   # game and exact, both dtypes
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.game_kernel, dict(
            A="*" + dt, region_mask="*u8", phrase_mask="*u8", coal="*u8", out="*" + dt, C="i32", K="i32",
            M="i32", coal_per_prog="i32", KP="constexpr", MP="constexpr", BC="constexpr"), \
            dict(KP=KP, MP=MP, BC=backend._block(KP, MP))
    for K, M, dt in ((20, 20, "fp32"), (20, 20, "fp64")):
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.exact_direction_kernel, dict(
            A="*" + dt, rows="*i32", cols="*i32", coef="*" + dt, out="*" + dt, R="i32", C="i32",
            subsets_per_prog="i32", RP="constexpr", CP="constexpr", BS="constexpr"), \
            dict(RP=KP, CP=MP, BS=backend._block(KP, MP))
    for K, M, dt in ((64, 64, "fp32"), (8, 6, "fp64")):
        KP, MP = backend._pow2(K), backend._pow2(M)
        yield kernels.sampling_kernel, dict(
            A="*" + dt, rows="*i32", cols="*i32", out_sum="*fp64", out_sq="*fp64", R="i32", C="i32",
            num_samples="i32", k0="i64", k1="i32", RP="constexpr", CP="constexpr", BN="constexpr"), \
            dict(RP=KP, CP=MP, BN=backend._block(KP, MP))


def main():
    target = GPUTarget("cuda", 90, 32)
    for fn, signature, constexprs in _cases():
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                  options={"num_warps": backend.NUM_WARPS})
        print(f"{fn.__name__} {signature['A']} {constexprs}: {len(compiled.asm['cubin'])} bytes of cubin")


if __name__ == "__main__":
    main()
