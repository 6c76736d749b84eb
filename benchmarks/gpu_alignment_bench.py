"""GPU benchmark of the alignment-game backends (standalone; run on a lent CUDA machine).

    python benchmarks/gpu_alignment_bench.py [--samples 500] [--quick]

1. Builds ``shapley_kernels._cuda`` with torch.utils.cpp_extension.load (JIT, ninja) when the
   installed package has no CUDA extension, so the script works from a plain checkout.
2. Checks every GPU backend against the torch backend on a small padded batch: exact (max abs
   difference, float64) and sampling (largest |estimate - exact| / stderr, float32).
3. Times region_phrase_interaction per backend with triton.testing.do_bench (median of repeats)
   over exact and 500-sample cases, and, in the same run, a bf16 matmul peak (8192^3) and a
   device-to-device copy bandwidth (1 GiB) as context.
4. Prints one markdown table (ms per call, pairs per second, speed-up over torch on the GPU).
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (B, K, M) per method; "torch" is skipped where it would take minutes. The first case is the one
# --quick (benchmarks/gpu_suite.sh) times: for exact, the target shape (B = 512, K = M = 8: < 1 ms)
EXACT_CASES = [(512, 8, 8), (512, 8, 6), (64, 12, 12), (16, 16, 16), (4, 20, 20)]
SAMPLING_CASES = [(512, 8, 6), (64, 16, 12), (8, 64, 64)]
TORCH_LIMIT = {"exact": 16, "sampling": 16}  # largest K or M timed on the torch backend


def ensure_cuda_extension() -> str:
    """Import shapley_kernels._cuda, JIT-building it from csrc/ if needed; returns how it was found."""
    try:
        import shapley_kernels._cuda  # noqa: F401
        return "installed"
    except ImportError:
        pass
    from torch.utils.cpp_extension import load
    module = load(name="_cuda",
                  sources=[os.path.join(ROOT, "csrc", "alignment_cuda_binding.cpp"),
                           os.path.join(ROOT, "csrc", "alignment_cuda.cu")],
                  extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)
    sys.modules["shapley_kernels._cuda"] = module
    return "jit-built"


def logits(B, K, M, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return (3 * torch.randn(B, K, M, generator=gen, device="cuda")).to(dtype)


def check(backends):
    """Largest deviations of each GPU backend from the torch backend on a padded batch."""
    import shapley_kernels as sk
    A = logits(6, 7, 6, torch.float64, seed=1)
    rm = torch.rand(6, 7, device="cuda") < 0.8
    pm = torch.rand(6, 6, device="cuda") < 0.8
    rm[:, 0] = pm[:, 0] = True
    want = sk.region_phrase_interaction(A, rm, pm, method="exact", backend="torch")
    rows = []
    for name in backends:
        got = sk.region_phrase_interaction(A, rm, pm, method="exact", backend=name)
        est = sk.region_phrase_interaction(A.float(), rm, pm, method="sampling", num_samples=2000, seed=7,
                                           backend=name, return_stderr=True)
        present = rm[:, :, None] & pm[:, None, :]
        z = ((est.value.double() - want).abs() / est.stderr.double().clamp_min(1e-12))[present]
        rows.append((name, float((got - want).abs().max()), float(z.max())))
    return rows


def bench(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def matmul_tflops():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / (bench(lambda: a @ b) * 1e-3) / 1e12


def copy_gbps():
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500, help="samples per pair (sampling rows)")
    parser.add_argument("--quick", action="store_true", help="first case of each method only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_alignment_bench.py needs a CUDA device")
    how = ensure_cuda_extension()
    import shapley_kernels as sk
    backends = [b for b in ("cuda", "triton") if b in sk.available_backends()]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  cuda extension: {how}  "
          f"backends: {sk.available_backends()}")
    print(f"status: {sk.backend_status()}")
    for name, exact_err, z in check(backends):
        print(f"check {name}: exact max |diff| vs torch = {exact_err:.2e} (float64); "
              f"sampling max |z| vs exact = {z:.2f} (2000 samples)")
    print(f"bf16 matmul 8192^3: {matmul_tflops():.0f} TFLOP/s;  device copy: {copy_gbps():.0f} GB/s\n")
    print("| method | B x K x M | backend | ms (median) | pairs/s | vs torch |")
    print("|---|---|---|---|---|---|")
    for method, cases in (("exact", EXACT_CASES), ("sampling", SAMPLING_CASES)):
        for B, K, M in cases[:1] if args.quick else cases:
            A = logits(B, K, M)
            kwargs = dict(method=method, num_samples=args.samples, seed=0)
            names = backends + (["torch"] if max(K, M) <= TORCH_LIMIT[method] else [])
            times = {n: bench(lambda n=n: sk.region_phrase_interaction(A, backend=n, **kwargs)) for n in names}
            for n in names:
                ratio = f"{times['torch'] / times[n]:.1f}x" if "torch" in times else "torch not timed"
                print(f"| {method}{f' {args.samples}' if method == 'sampling' else ''} | {B} x {K} x {M} | {n} | "
                      f"{times[n]:.3f} | {B * K * M / (times[n] * 1e-3):.3g} | {ratio} |")


if __name__ == "__main__":
    main()
