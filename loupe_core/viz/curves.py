"""Curves: estimator instability against the number of samples (paper Fig. 3a) and the run's
training history (``metrics.jsonl`` written by ``loupe_core.train.logging.MetricLogger``).
"""
from __future__ import annotations

import json
import math
from typing import Dict, Sequence

import torch

import shapley_kernels as sk

from .figures import new_figure, save_figure

SAMPLE_COUNTS = (10, 30, 100, 300, 1000)
SEEDS = (0, 1, 2, 3)


def instability_curve(A: torch.Tensor, region_mask: torch.Tensor, phrase_mask: torch.Tensor, *,
                      sample_counts: Sequence[int] = SAMPLE_COUNTS, seeds: Sequence[int] = SEEDS) -> Dict[int, float]:
    """{num_samples: instability} of the sampling estimator of I([H_ij]) (spec Eq. 10) on game v2.

    A float[B, K, M] alignment logits with masks bool[B, K] / bool[B, M]; for each sample count the
    estimate is repeated once per seed and ``shapley_kernels.instability`` compares the runs.
    """
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds, got {list(seeds)}")
    out = {}
    for n in sample_counts:
        runs = torch.stack([sk.region_phrase_interaction(A, region_mask, phrase_mask, method="sampling",
                                                         num_samples=int(n), seed=int(s)) for s in seeds])
        out[int(n)] = sk.instability(runs)
    return out


def plot_instability(curves: Dict[str, Dict[int, float]], path: str) -> str:
    """Log-log lines of instability against samples per target, one per named curve; PNG."""
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        counts = sorted(curve)
        ax.plot(counts, [curve[c] for c in counts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples per (region, phrase) pair")
    ax.set_ylabel("instability")
    ax.set_title("sampling estimator of I([H_ij]) (Fig. 3a)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def read_history(history_path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (one JSON object per line, each with ``step``)."""
    records = []
    with open(history_path) as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                record = json.loads(line)
                if "step" not in record:
                    raise ValueError(f"history_path {history_path!r} line {n}: record without 'step'")
                records.append(record)
    return records


def draw_training_curves(history_path: str, *, prefixes: Sequence[str] = ("loss", "eval/")):
    """The figure of ``plot_training_curves``: one panel per group, the legend to the right of
    its panel (outside it, so it covers no point: a run evaluated once has a single eval point),
    points marked where a line has few of them."""
    records = read_history(history_path)
    # sums of recalls (rsum) would flatten the percentages beside them
    groups = {p: sorted({k for r in records for k in r if k.startswith(p) and not k.endswith("rsum")})
              for p in prefixes}
    groups = {p: names for p, names in groups.items() if names}
    fig = new_figure(7.5, 3.0 * max(1, len(groups)))
    for row, (prefix, names) in enumerate(groups.items()):
        ax = fig.add_subplot(len(groups), 1, row + 1)
        for name in names:
            points = [(r["step"], r[name]) for r in records
                      if r.get(name) is not None and math.isfinite(r[name])]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 10 else "." if len(points) < 50 else None,
                        label=name)
        ax.set_xlabel("step")
        ax.set_title(prefix.rstrip("/"), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if not groups:
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, "no logged values", ha="center")
    return fig


def plot_training_curves(history_path: str, path: str, *, prefixes: Sequence[str] = ("loss", "eval/")) -> str:
    """One panel per group of logged names (``loss`` and ``loss/<term>``; ``eval/<metric>``); PNG.

    Values logged as null (non-finite) are left out of the lines.
    """
    return save_figure(draw_training_curves(history_path, prefixes=prefixes), path)
