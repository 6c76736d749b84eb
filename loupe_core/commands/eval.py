"""``loupe eval``: score a trained run's checkpoint, print a metrics table, write metrics and pictures.

    loupe eval --checkpoint PATH [--task TASK ...] [--data ROOT|FILES.json] [--split SPLIT]
               [--out DIR] [--batch-size N] [--device cpu|cuda|auto] [--no-pictures]
               [--hard-splits all|NAME,...] [--num-hard 200]

``--checkpoint``: a checkpoint file or a run directory (its newest checkpoint). The model is
rebuilt from the checkpoint's resolved config; the tokenizer and, by default, the evaluation
data are the run's own ShapesWorld (found in the cache, generated there if missing, as
``loupe pretrain`` does). ``--task``: retrieval, classification, detection, grounding,
linear_probe, diagnostics (the alignment diagnostics on the grounding file:
``loupe_core.eval.diagnostics``), fewshot (Tip-Adapter and CoOp from K-shot support sets of the
``val`` split's shape classification, K = 1, 2, 4, 8, 16, 3 support seeds:
``loupe_core.eval.fewshot``) or all (default: every task but the diagnostics and fewshot).
``--data``: a ShapesWorld root folder, or a JSON file ``{task: path}`` naming evaluation files
of CONTRACTS s4 (real data); default: the run's own data (its ShapesWorld, or the
``data.eval_paths`` and ``data.tokenizer`` of a CSV or webdataset run). ``--split``: the
ShapesWorld split scored (default: the config's ``eval.split``). ``--out``: where
``metrics.json`` and the pictures (``report/index.html``) go (default ``<run_dir>/eval-step<N>``).
``--hard-splits``: also score the harder ShapesWorld grounding splits (docs/CONTRACTS.md s6,
``--num-hard`` images each) beside the ShapesWorld data: grounding and the cheap diagnostics,
keys ``hard_<split>/...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from loupe_core.commands.options import positive_int, run_directory


def add_subcommands(subparsers) -> None:
    """Add ``eval`` to the ``loupe`` command's subparsers."""
    p = subparsers.add_parser("eval", help="zero-shot evaluation of a checkpoint, with pictures",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--task", nargs="+", default=["all"], metavar="TASK",
                   help="tasks, as listed above (default all: every task but diagnostics and fewshot)")
    p.add_argument("--data", default=None, help="ShapesWorld root, or JSON file {task: path} (default: the run's data)")
    p.add_argument("--split", default=None, help="ShapesWorld split to score (default: the config's eval.split)")
    p.add_argument("--out", type=run_directory, default=None, help="output folder (default <run_dir>/eval-step<N>)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch (default: the config's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-pictures", action="store_true", help="metrics only, no report")
    p.add_argument("--hard-splits", default=None,
                   help="also score harder grounding splits: 'all' or comma-separated names (docs/CONTRACTS.md s6)")
    p.add_argument("--num-hard", type=positive_int, default=200, help="images in each hard split")
    p.set_defaults(func=run_eval_command)


def format_table(metrics: dict) -> str:
    """The metrics as an aligned two-column text table."""
    width = max([len("metric")] + [len(k) for k in metrics])
    lines = [f"{'metric':<{width}}  {'value':>8}", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{name:<{width}}  {value:8.2f}" for name, value in sorted(metrics.items())]
    return "\n".join(lines)


def run_eval_command(args) -> int:
    """``loupe eval``: returns the exit status (2 on a bad argument, with the reason on stderr)."""
    from loupe_core.data.shapesworld_hard import HARD_SPLITS
    from loupe_core.eval import check_tasks, evaluate
    from loupe_core.eval.hard_splits import evaluate_hard_splits
    from loupe_core.pipeline import load_run, resolve_data, resolve_hard_files
    from loupe_core.train.distributed import resolve_device
    from loupe_core.viz import write_run_report

    try:
        tasks = check_tasks(args.task)
        device = resolve_device(args.device)
        objective, cfg, run_dir, step = load_run(args.checkpoint, device)
        tokenizer, files = resolve_data(cfg, args.data, args.split)
        batch_size = cfg.eval.batch_size if args.batch_size is None else args.batch_size
        metrics = evaluate(objective.model, files, tokenizer, tasks=tasks, device=device, batch_size=batch_size,
                           objective=objective)
        if args.hard_splits:
            names = HARD_SPLITS if args.hard_splits == "all" else tuple(args.hard_splits.split(","))
            hard = resolve_hard_files(cfg, args.data, names, args.num_hard)
            metrics.update(evaluate_hard_splits(objective.model, hard, tokenizer, device=device,
                                                batch_size=batch_size, objective=objective))
    except ValueError as exc:
        print(f"loupe eval: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(run_dir, f"eval-step{step}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump({"checkpoint": os.path.abspath(args.checkpoint), "step": step, "tasks": list(tasks),
                   "metrics": metrics}, fh, indent=2)
    print(format_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')}")
    if not args.no_pictures:
        history = os.path.join(run_dir, "metrics.jsonl")
        index = write_run_report(out, model=objective.model, tokenizer=tokenizer, eval_paths=files, metrics=metrics,
                                 history_path=history if os.path.isfile(history) else None,
                                 token_baseline=cfg.loss.token_baseline)
        print(f"pictures: {index}")
    return 0
