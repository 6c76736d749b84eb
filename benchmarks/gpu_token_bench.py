"""Full-size GPU benchmark of the token-level engine (standalone; run on a lent CUDA machine).

    python benchmarks/gpu_token_bench.py [--coalitions 512] [--keep 0.5] [--bf16] [--repeats 10]

Towers: ViT-S/16 (196 patches, dim 384, depth 12, heads 6) and BERT-Small (60 tokens, hidden
512, depth 4, heads 8). For each: coalition evaluations per second for "loop" (the naive way:
one zeroed coalition per forward, over the first LOOP_COALITIONS), "zero" (zeroed tokens, full
attention, all coalitions in one batch), "drop" (kept tokens packed) and "drop+triton" (bitmask
Triton attention), the achieved TFLOP/s counting only the FLOPs of the tokens each mode actually
needs (kept tokens + [CLS]; all tokens for loop and zero), and a measured bf16 matmul peak to
compare with. With --bf16 the towers run under torch.autocast(bfloat16) and the script prints the
largest error of the global embeddings against float32. Prints one markdown table row per
(tower, mode), then per tower the ratios the issue's targets name: batched zero / loop (>= 20x)
and drop / zero (>= 1.7x).
"""
import argparse
import time

import torch

from shapley_kernels.token_level import TransformerTower

TOWERS = {
    "ViT-S/16": dict(dim=384, depth=12, heads=6, tokens=196),
    "BERT-Small": dict(dim=512, depth=4, heads=8, tokens=60, norm_first=False, layer_norm_eps=1e-12),
}
LOOP_COALITIONS = 64  # the naive loop's coalitions per timed call (its rate does not depend on the count)


def tower_flops(dim: int, depth: int, kept: torch.Tensor) -> float:
    """Forward FLOPs for rows with ``kept`` tokens each (+ [CLS]): per layer 24 n d^2 (qkv, out,
    4x MLP) + 4 n^2 d (scores and weighted sum)."""
    n = kept.double() + 1
    return float((depth * (24 * n * dim ** 2 + 4 * n ** 2 * dim)).sum())


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def matmul_peak(repeats: int) -> float:
    """Measured bf16 TFLOP/s of an 8192^3 matmul."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / timed(lambda: a @ b, repeats) / 1e12


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coalitions", type=int, default=512)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of tokens kept per row")
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_token_bench.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    peak = matmul_peak(args.repeats)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"bf16 matmul peak (measured): {peak:.1f} TFLOP/s  bf16 autocast: {args.bf16}")
    print("| tower | mode | coalitions/s | TFLOP/s (needed FLOPs) | % of peak | max abs err bf16 vs fp32 |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, cfg in TOWERS.items():
        cfg = dict(cfg)
        N = cfg.pop("tokens")
        torch.manual_seed(0)
        tower = TransformerTower(max_tokens=N, out_dim=256, **cfg).cuda().eval()
        C = args.coalitions
        x = torch.randn(C, N, cfg["dim"], device="cuda", generator=gen)
        keep = torch.rand(C, N, device="cuda", generator=gen) < args.keep
        kept = keep.sum(1).cpu()
        L = min(C, LOOP_COALITIONS)
        modes = {  # mode: (call, tokens each row needs, attention)
            "loop": (lambda: torch.cat([tower(x[i:i + 1] * keep[i:i + 1, :, None]) for i in range(L)]),
                     torch.full((L,), N), "sdpa"),
            "zero": (lambda: tower(x * keep[..., None]), torch.full_like(kept, N), "sdpa"),
            "drop": (lambda: tower(x, keep), kept, "sdpa"),
            "drop+triton": (lambda: tower(x, keep), kept, "triton"),
        }
        rate = {}
        for mode, (fn, needed, attention) in modes.items():
            tower.attention = attention
            with torch.inference_mode():
                ref = fn().float()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
                    seconds = timed(fn, args.repeats)
                    out = fn().float()
            err = f"{(out - ref).abs().max().item():.2e}" if args.bf16 else "-"
            tflops = tower_flops(cfg["dim"], cfg["depth"], needed) / seconds / 1e12
            rate[mode] = len(needed) / seconds
            print(f"| {name} | {mode} | {rate[mode]:,.0f} | {tflops:.1f} | {100 * tflops / peak:.0f}% | {err} |")
        print(f"{name}: batched zero / loop {rate['zero'] / rate['loop']:.1f}x (target >= 20x), "
              f"drop / zero {rate['drop'] / rate['zero']:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
