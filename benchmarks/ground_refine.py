"""Grounding with and without box refinement (``model.ground_refine``) on finished runs (issue 31).

    python benchmarks/ground_refine.py RUN_DIR [RUN_DIR ...] [--num-hard 200]

Eval only (no retraining): each run's checkpoint scored on its ShapesWorld ``test`` split and the
hard splits (docs/CONTRACTS.md s6) by ``evaluate_grounding``, once as trained and once with
``ground_refine`` switched on (boxes moved to the centroid of the query's cell evidence,
``eval.grounding.refined_boxes``; the ranking is unchanged). Prints acc@0.5 / acc@0.7 per
split, one markdown row per (run, setting). No timing.
"""
import argparse
import os

import torch

from loupe_core.data import ShapesWorldPaths
from loupe_core.data.shapesworld_hard import HARD_SPLITS, prepare_hard_splits
from loupe_core.eval import splits
from loupe_core.eval.grounding import evaluate_grounding
from loupe_core.pipeline import build_data, load_run
from loupe_core.train.distributed import DistContext


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--num-hard", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | refine | " + " | ".join(f"{s} @0.5 | {s} @0.7" for s in ("test",) + HARD_SPLITS) + " |")
    print("|---|---|" + "---|" * (2 * (1 + len(HARD_SPLITS))))
    for run in args.runs:
        objective, cfg, _, _ = load_run(run, "cpu")
        data = build_data(cfg, DistContext())
        root = ShapesWorldPaths.at(os.path.dirname(os.path.dirname(data.eval_paths["grounding"])))
        files = {"test": data.eval_paths["grounding"]}
        files.update({n: f["grounding"] for n, f in prepare_hard_splits(root, args.num_hard).items()})
        loaded = {n: splits.load("grounding", path, cfg.model.image_size) for n, path in files.items()}
        model = objective.model
        for refine in (False, True):
            model.config.ground_refine = refine
            cells = []
            with torch.no_grad():
                for split in loaded.values():
                    m = evaluate_grounding(model, split, data.tokenizer, top_k=model.config.top_k, progress=False)
                    cells += [f"{m['acc@0.5']:.1f}", f"{m['acc@0.7']:.1f}"]
            print(f"| {run} | {'on' if refine else 'off'} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
