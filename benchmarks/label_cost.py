"""Dense token-level labels: the FLOPs one step's Eq. 7 labels need, and how close to them the engine runs.

    python benchmarks/label_cost.py --checkpoint RUN [--pairs 64] [--regions 6] [--samples 16]
                                    [--estimator antithetic] [--baseline zero|drop] [--repeats 3]
                                    [--device cpu]

Issue 13, item 4 ("count the FLOPs a step needs and say how close to them the engine runs").
The workload is what one training step of dense labels asks for: ``region_interaction`` (Eq. 7
and phi([R]), the run's token baseline, float32 as in training) on the first ``pairs`` test
images with their first referring expression and the head's top ``regions`` candidates each.
Forward pre-hooks on both towers record every half the engine encodes (its rows and the tokens
each keeps); ``gpu_token_bench.tower_flops`` turns them into the forward FLOPs those halves need
(kept tokens + [CLS]; with the ``zero`` baseline every real token is kept and zeroed). The same
rows (the same keep masks) are then run through each tower in calls of the engine's own chunk size: the
rate the towers reach on these shapes without the engine's bookkeeping (deduplication, masks,
the estimator's arithmetic). A float32 matmul of the towers' width gives the machine's rate on
the towers' biggest GEMM, and the encoders' FLOPs of one contrastive step over the same pairs
(forward + backward, taken as 3x the forward of every full row) put the labels' FLOPs in scale.
Prints one markdown table; timing is the median of ``repeats`` calls.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from estimator_bench import real_workload  # noqa: E402
from gpu_token_bench import tower_flops  # noqa: E402

from shapley_kernels.token_level import region_interaction  # noqa: E402
from shapley_kernels.defaults import default_tokens_per_call  # noqa: E402


class HalfRecorder:
    """Forward pre-hook of a tower: the keep mask bool[rows, N] of every call, concatenated."""

    def __init__(self, tower):
        self.keeps = []
        self.handle = tower.register_forward_pre_hook(self)

    def __call__(self, module, args):
        tokens, keep = args[0], args[1] if len(args) > 1 else None
        self.keeps.append(keep.clone() if keep is not None else torch.ones(tokens.shape[:2], dtype=torch.bool))

    def total(self) -> torch.Tensor:
        return torch.cat(self.keeps)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def towers_alone(tower, tokens: torch.Tensor, keep: torch.Tensor, repeats: int) -> float:
    """Seconds to run the rows ``keep`` bool[C, N] (the halves the engine encoded) over ``tokens``
    (float[R, N, D], cycled) through ``tower`` in chunks of the engine's size (default_tokens_per_call // N)."""
    rows, N = keep.shape
    chunk = max(1, default_tokens_per_call(keep.device) // N)
    x = tokens[torch.arange(rows) % tokens.shape[0]]

    def run():
        with torch.no_grad():
            for lo in range(0, rows, chunk):
                tower(x[lo:lo + chunk], keep[lo:lo + chunk])
    return median_seconds(run, repeats)


def matmul_gflops(dim: int, rows: int, repeats: int, device) -> float:
    a = torch.randn(rows, dim, device=device)
    b = torch.randn(dim, 4 * dim, device=device)
    return 2 * rows * dim * 4 * dim / median_seconds(lambda: a @ b, repeats) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained run (its towers and head's candidates)")
    parser.add_argument("--pairs", type=int, default=64, help="pairs labelled per step (dense: the batch)")
    parser.add_argument("--regions", type=int, default=6, help="candidates per pair (top_k + num_random)")
    parser.add_argument("--samples", type=int, default=16, help="num_samples (loss.token_num_samples)")
    parser.add_argument("--estimator", default="antithetic")
    parser.add_argument("--baseline", default=None, choices=("zero", "drop"),
                        help="the token baseline (default: the run's loss.token_baseline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    (img, txt), x_img, x_txt, text_mask, regions, baseline = real_workload(args.checkpoint, device, args.pairs,
                                                                             args.regions)
    baseline = args.baseline or baseline
    img, txt, x_img, x_txt = img.float().eval(), txt.float().eval(), x_img.float(), x_txt.float()
    P = x_img.shape[0]

    def label():
        with torch.no_grad():
            return region_interaction(img, txt, x_img, x_txt, regions, text_mask=text_mask, baseline=baseline,
                                      method="sampling", num_samples=args.samples, seed=0,
                                      estimator=args.estimator, score=("interaction", "phi"))

    recorders = HalfRecorder(img), HalfRecorder(txt)
    evaluations = int(label()["interaction"].evaluations.sum())
    keep_img, keep_txt = (r.total() for r in recorders)
    for r in recorders:
        r.handle.remove()
    kept_img, kept_txt = keep_img.sum(dim=1), keep_txt.sum(dim=1)
    seconds = median_seconds(label, args.repeats)
    core = {name: getattr(t, "tower", t) for name, t in (("image", img), ("text", txt))}  # loupe_core wraps it
    flops = {name: tower_flops(core[name].dim, len(core[name].blocks), kept) for name, kept in
             (("image", kept_img), ("text", kept_txt))}
    dense = towers_alone(img, x_img, keep_img, args.repeats) + towers_alone(txt, x_txt, keep_txt, args.repeats)
    needed = sum(flops.values())
    # a contrastive step's encoders: forward + backward (~2x forward) of the P pairs' full rows
    step = 3 * (tower_flops(core["image"].dim, len(core["image"].blocks), torch.full((P,), x_img.shape[1]))
                + tower_flops(core["text"].dim, len(core["text"].blocks), text_mask.sum(dim=1)))
    width = core["image"].dim
    gemm_rows = default_tokens_per_call(device)
    gemm = matmul_gflops(width, gemm_rows, args.repeats, device)
    print(f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; {P} pairs x {regions.shape[1]} candidates, "
          f"num_samples {args.samples}, estimator {args.estimator!r}, baseline {baseline!r}, float32\n")
    print("| quantity | value |\n|---|---|")
    for key, value in (("game evaluations (v1 values)", f"{evaluations:,}"),
                       ("image halves encoded (distinct)", f"{kept_img.numel():,}"),
                       ("text halves encoded (distinct)", f"{kept_txt.numel():,}"),
                       ("needed forward GFLOP, image / text", f"{flops['image'] / 1e9:.1f} / {flops['text'] / 1e9:.1f}"),
                       ("labels' FLOPs / a contrastive step's encoder FLOPs (3x forward)", f"{needed / step:.0f}"),
                       ("engine: s per step of labels", f"{seconds:.3f}"),
                       ("engine: GFLOP/s of the needed FLOPs", f"{needed / seconds / 1e9:.1f}"),
                       ("towers alone, same rows in the engine's chunks: s", f"{dense:.3f}"),
                       ("towers alone: GFLOP/s", f"{needed / dense / 1e9:.1f}"),
                       (f"float32 matmul [{gemm_rows} x {width}] x [{width} x {4 * width}]: GFLOP/s",
                        f"{gemm:.1f}"),
                       ("engine time / towers-alone time", f"{seconds / dense:.2f}")):
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
