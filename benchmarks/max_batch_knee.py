"""Rows per game call against coalitions per second on the CPU: where the default max_batch sits (issue 29 item 4).

    PYTHONPATH=. python benchmarks/max_batch_knee.py [--repeats 3] [--coalitions 4096]

Two workloads, each row count run once per repeat in turn (interleaved, so machine load hits
every setting alike; 1 thread; report the best of the repeats and say the machine was shared):
  token   the ViT patch game of ``vit_patch_peers`` (64 patches, dim 64, depth 2):
          ``dual_encoder_game(..., max_batch=rows)`` on ``--coalitions`` random coalitions
  deepmlp the expensive game of ``estimator_peers`` (``deepmlp14``): ``shapley_values(...,
          estimator="permutation", budget=--coalitions, max_batch=rows)``
  mlp     the same on the cheap game ``mlp14`` (per-call overhead dominates: more rows help)
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import shapley_kernels as sk  # noqa: E402
from shapley_kernels.token_level import TransformerTower, dual_encoder_game  # noqa: E402

from estimator_peers import deep_mlp_game, mlp_game  # noqa: E402
from vit_patch_peers import PATCHES, TEXT_TOKENS  # noqa: E402

ROWS = (16, 32, 64, 128, 256, 512, 1024, 4096)


def token_workload(coalitions: int):
    """rows -> seconds of one call of the patch game on ``coalitions`` random coalitions."""
    torch.manual_seed(0)
    image = TransformerTower(dim=64, depth=2, heads=4, max_tokens=PATCHES, out_dim=32).eval()
    text = TransformerTower(dim=64, depth=2, heads=4, max_tokens=TEXT_TOKENS, out_dim=32).eval()
    patches, words = torch.randn(PATCHES, 64), torch.randn(TEXT_TOKENS, 64)
    z = torch.rand(coalitions, PATCHES + TEXT_TOKENS) < 0.5
    z[:, PATCHES:] = True

    def run(rows):
        game = dual_encoder_game(image, text, patches, words, max_batch=rows)
        start = time.perf_counter()
        game(z)
        return time.perf_counter() - start
    return run


def mlp_workload(coalitions: int, make_game=deep_mlp_game):
    game = make_game(14, 0)

    def run(rows):
        start = time.perf_counter()
        sk.shapley_values(game, 14, method="sampling", estimator="permutation", budget=coalitions, seed=0,
                          max_batch=rows)
        return time.perf_counter() - start
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--coalitions", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workloads = (("token", token_workload(args.coalitions)), ("deepmlp", mlp_workload(args.coalitions)),
                 ("mlp", mlp_workload(args.coalitions, mlp_game)))
    for name, run in workloads:
        best = {rows: float("inf") for rows in ROWS}
        for _ in range(args.repeats):
            for rows in ROWS:
                best[rows] = min(best[rows], run(rows))
        print(f"{name}: " + ", ".join(f"{rows}: {args.coalitions / sec:.0f}/s" for rows, sec in best.items()), flush=True)


if __name__ == "__main__":
    main()
