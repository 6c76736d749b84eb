"""Seconds per training step, eager vs ``train.compile=towers`` (CPU or GPU), one mode per process.

Run: OMP_NUM_THREADS=2 python benchmarks/bench_compile.py --compile none   --steps 30
     OMP_NUM_THREADS=2 python benchmarks/bench_compile.py --compile towers --steps 30

The real training loop (``loupe_core.train.train``) on the named config (default: ``default``,
batch 64) and its ShapesWorld data (generated into --root on first use), no evaluation,
checkpoint or TensorBoard. A step's time is the trainer's own (``train/samples_per_s`` in
metrics.jsonl: data, forward, backward, optimiser step). Printed: the first step (with the
compilation), the median and mean of the steps after --skip, the losses' last value and the
number of dynamo compilations of the towers' dense pass. Extra ``key=value`` overrides follow.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default")
    p.add_argument("--compile", choices=("none", "towers"), default="none")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=6, help="steps left out of the steady figures")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "loupe_bench_compile_data"))
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.pipeline import build_data, seed_everything
    from loupe_core.train import train
    from loupe_core.train.distributed import DistContext

    cfg = load_config(a.config, [f"data.root={a.root}", f"train.steps={a.steps}", f"train.compile={a.compile}",
                                 "train.log_every=1", "train.ckpt_every=0", "train.tensorboard=false",
                                 "train.progress=false", "eval.final=false", *a.overrides])
    seed_everything(cfg.train.seed)
    data = build_data(cfg, DistContext())
    objective = LoupeObjective(cfg.model, cfg.loss)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, run_dir, objective, data.train, data.collate)
        rows = [json.loads(line) for line in open(result.history_path)]
    secs = [cfg.train.batch_size / r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    steady = secs[a.skip:]
    from torch._dynamo.utils import counters

    print(json.dumps({"config": a.config, "compile": a.compile, "steps": len(secs), "batch": cfg.train.batch_size,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "first_step_s": round(secs[0], 3), "steady_median_s": round(statistics.median(steady), 4),
                      "steady_mean_s": round(statistics.mean(steady), 4),
                      "max_after_first_s": round(max(secs[1:]), 3),
                      "last_loss": round(result.losses[-1], 5),
                      "dynamo_frames": int(counters["stats"].get("unique_graphs", 0)),
                      "step_s": [round(s, 3) for s in secs]}))


if __name__ == "__main__":
    sys.exit(main())
