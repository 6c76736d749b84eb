"""The paper's ablation (spec section 8, Table 4) on ShapesWorld under one fixed budget.

Every row trains the same encoders (``paper`` config) for the same number of optimiser steps,
with the same batch size and the same data order (the order is a function of ``train.seed``
alone), and differs only in its loss section (row 5, the project's ``default``, also in its
region head and grounding score: docs/fine_grained_alignment.md):

  row1  table4_row1_backbone  L_CMC only
  row2  table4_row2_tsa       + L_TSA, token-level labels by sampling (500 samples per region)
  row3  table4_row3_tsa_fsa   + L_TSA + L_FSA, both levels by sampling (500 per target)
  row4  table4_row4_unsil     + L_TSA + L_FSA with UNSIL's hybrid strategy at both levels
  row5  table4_row5_ours      the project's recipe: L_CMC + fine-grained contrast + L_TSA on exact
                              alignment-game labels of every candidate (the ``default`` config)

Each (row, seed) run is ``loupe_core.pipeline.pretrain`` followed by its zero-shot evaluation on
the config's evaluation split: retrieval R@1 both ways, grounding acc@0.5, detection mAP@0.3 and
mAP@0.5, and three of the alignment diagnostics (``loupe_core.eval.diagnostics``: true-box
grounding with the first noun phrase, proposal recall@4, the AUC of the row's L_TSA label). Seconds per iteration come from the same run's log (``train/samples_per_s`` of every
step, so s/iter = batch_size / samples_per_s), averaged over the steps after ``--warmup``
timing warm-up steps (every step is logged for that, so UNSIL's diagnostic probe, fresh samples
that only feed a log, is switched off: ``loss.probe_size=0``). Rows are reported as mean and
sample standard deviation over the seeds.

    python benchmarks/table4.py --steps N --seeds 0 1 [--rows row1 row3 ...] [--set key=value ...]
                                [--out DIR] [--write-results]

``--set`` applies the same config override to every row (e.g. ``train.batch_size=16
data.train_size=512`` for a small budget). ``--write-results`` appends the table with steps,
seeds, machine and date to benchmarks/RESULTS.md; the JSON of every run goes to
``<out>/table4.json`` and the markdown to ``<out>/table4.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from typing import Dict, List, Sequence

ROWS = {
    "row1": ("table4_row1_backbone", "backbone (L_CMC only)"),
    "row2": ("table4_row2_tsa", "+ L_TSA (sampling)"),
    "row3": ("table4_row3_tsa_fsa", "+ L_TSA + L_FSA (sampling)"),
    "row4": ("table4_row4_unsil", "+ L_TSA + L_FSA + UNSIL (hybrid)"),
    "row5": ("table4_row5_ours", "ours (fine contrast + dense exact alignment-game L_TSA)"),
}
COLUMNS = (("retrieval/i2t_r1", "I2T R@1"), ("retrieval/t2i_r1", "T2I R@1"), ("detection/map@0.3", "mAP@0.3"),
           ("detection/map@0.5", "mAP@0.5"), ("grounding/acc@0.5", "ground. acc@0.5"),
           ("diagnostics/diag_truebox_phrase", "true-box phrase"), ("diagnostics/diag_recall@4", "recall@4"),
           ("diagnostics/diag_label_auc", "label AUC"), ("s_per_iter", "s/iter"))
EVAL_TASKS = ("retrieval", "grounding", "detection", "diagnostics")
RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def seconds_per_iter(history_path: str, batch_size: int, warmup: int) -> float:
    """Mean seconds per optimiser step over the logged steps after the first ``warmup`` steps."""
    from loupe_core.viz import read_history

    times = {r["step"]: batch_size / r["train/samples_per_s"] for r in read_history(history_path)
             if r.get("train/samples_per_s")}
    kept = [t for step, t in sorted(times.items()) if step > warmup]
    if not kept:
        raise ValueError(f"{history_path}: no step after the {warmup} warm-up steps was logged "
                         f"(use more --steps or a smaller --warmup)")
    return sum(kept) / len(kept)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(runs: List[dict]) -> Dict[str, Dict[str, tuple]]:
    """{row: {column: (mean, std)}} over the seeds of each row (runs: dicts with row, seed, metrics)."""
    out: Dict[str, Dict[str, tuple]] = {}
    for row in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == row]
        out[row] = {key: mean_std([r["metrics"][key] for r in mine]) for key, _ in COLUMNS}
    return out


def markdown_table(summary: Dict[str, Dict[str, tuple]]) -> str:
    """Rows as in the paper's Table 4, ``mean ± std``, plus s/iter relative to row 1 when present."""
    head = "| row | setting | " + " | ".join(name for _, name in COLUMNS) + " | s/iter vs row 1 |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    base = summary.get("row1", {}).get("s_per_iter", (None,))[0]
    for row, cols in summary.items():
        cells = [f"{cols[k][0]:.2f} ± {cols[k][1]:.2f}" if k != "s_per_iter" else f"{cols[k][0]:.3f} ± {cols[k][1]:.3f}"
                 for k, _ in COLUMNS]
        ratio = f"{cols['s_per_iter'][0] / base:.2f}x" if base else "n/a"
        lines.append(f"| {row[3:]} | {ROWS[row][1]} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return (f"{device}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}")


def run_one(row: str, seed: int, steps: int, overrides: Sequence[str], out: str, warmup: int) -> dict:
    """Train and evaluate one (row, seed); returns {row, seed, run_dir, metrics}."""
    from loupe_core.config import load_config
    from loupe_core.pipeline import pretrain

    cfg = load_config(ROWS[row][0], [f"train.steps={steps}", f"train.seed={seed}", "train.log_every=1",
                                     "train.ckpt_every=0", "train.progress=false", "train.tensorboard=false",
                                     "eval.every=0", "eval.final=true", "eval.report=false", "loss.probe_size=0",
                                     f"eval.tasks={json.dumps(list(EVAL_TASKS))}", *overrides])
    run_dir = os.path.join(out, f"{row}-seed{seed}")
    summary = pretrain(cfg, run_dir, echo=lambda *_: None)
    if summary["steps"] != steps or not summary["metrics"]:
        raise RuntimeError(f"{row} seed {seed}: trained {summary['steps']}/{steps} steps without final metrics")
    # a diagnostic left out as undefined on its sample (e.g. an AUC of one class) reads as NaN
    metrics = {k: summary["metrics"].get(k, float("nan")) for k, _ in COLUMNS if k != "s_per_iter"}
    metrics["s_per_iter"] = seconds_per_iter(summary["logs"]["jsonl"], cfg.train.batch_size, warmup)
    return {"row": row, "seed": seed, "config": ROWS[row][0], "run_dir": run_dir, "metrics": metrics,
            "batch_size": cfg.train.batch_size}



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (>= 2 for a spread)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS), help="rows to run")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="override for every row")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of s/iter (timing warm-up)")
    parser.add_argument("--out", default=os.path.join("runs", "table4"), help="run folders, table4.json/.md")
    parser.add_argument("--write-results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for row in args.rows:
        for seed in args.seeds:
            print(f"[table4] {row} ({ROWS[row][0]}) seed {seed}: {args.steps} steps", flush=True)
            runs.append(run_one(row, seed, args.steps, args.set, args.out, args.warmup))
            print(f"[table4]   {json.dumps(runs[-1]['metrics'])}", flush=True)
    table = markdown_table(summarise(runs))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"### Table 4 ablation on ShapesWorld ({date})\n\n"
              f"Machine: {machine()}. Budget: {args.steps} optimiser steps per run, seeds {args.seeds} "
              f"(mean ± sample std), s/iter averaged after {args.warmup} warm-up step(s), same data order and "
              f"batch for every row. Overrides: {' '.join(args.set) or 'none'}. "
              f"Command: `python benchmarks/table4.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n")
    with open(os.path.join(args.out, "table4.json"), "w") as fh:
        json.dump({"date": date, "machine": machine(), "steps": args.steps, "seeds": args.seeds,
                   "overrides": args.set, "warmup": args.warmup, "runs": runs}, fh, indent=2)
    with open(os.path.join(args.out, "table4.md"), "w") as fh:
        fh.write(header + table + "\n")
    print(header + table)
    if args.write_results:
        with open(RESULTS_MD, "a") as fh:
            fh.write("\n" + header + table + "\n")
        print(f"appended to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
