"""Per-split table of finished pretraining runs (issue 31): test split and every hard split.

    python benchmarks/hard_splits_table.py NAME=RUN_DIR[,RUN_DIR...] [NAME=...]

Reads each run's ``summary.json`` and prints, per config name, one markdown row per split:
grounding acc@0.5 / acc@0.7, true-box phrase grounding (chance), recall@4, anchor oracle at
IoU 0.5 / 0.7, as mean ± sample std over the runs with the per-run values after it; image-to-text
R@1 of the test split below. No timing.
"""
import json
import os
import statistics
import sys

SPLITS = ("test", "fresh", "shape_decides", "crowded", "relational", "odd_sizes")
COLUMNS = (("ground@0.5", "grounding/acc@0.5"), ("ground@0.7", "grounding/acc@0.7"),
           ("true-box phrase", "diagnostics/diag_truebox_phrase"), ("chance", "diagnostics/diag_truebox_chance"),
           ("recall@4", "diagnostics/diag_recall@4"), ("oracle@0.5", "diagnostics/diag_recall_oracle"),
           ("oracle@0.7", "diagnostics/diag_recall_oracle_strict"))


def cell(values):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{mean:.1f}{spread} ({' / '.join(f'{v:.1f}' for v in values)})"


def main(argv):
    for arg in argv:
        name, dirs = arg.split("=", 1)
        metrics = []
        for run in dirs.split(","):
            with open(os.path.join(run, "summary.json")) as f:
                metrics.append(json.load(f)["metrics"])
        print(f"\n{name} ({len(metrics)} runs: {dirs})\n")
        print("| split | " + " | ".join(c for c, _ in COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
        for split in SPLITS:
            prefix = "" if split == "test" else f"hard_{split}/"
            row = [cell([m[prefix + key] for m in metrics if prefix + key in m]) for _, key in COLUMNS]
            print(f"| {split} | " + " | ".join(row) + " |")
        print(f"\nimage-to-text R@1 (test): {cell([m['retrieval/i2t_r1'] for m in metrics])}")


if __name__ == "__main__":
    main(sys.argv[1:])
