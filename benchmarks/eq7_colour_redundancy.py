"""Eq. 7's sign and colour redundancy (issue 31 item 4): label AUCs on flat vs patchwork objects.

    python benchmarks/eq7_colour_redundancy.py --runs runs/default_s0 [runs/default_s1 ...]
           [--data-root runs/data] [--num-images 60] [--label-images 12] [--seed 0] [--skip-untrained]

The same scenes (test distribution, training colour-shape pairs, no stripes, from the stream
``SeedSequence([data seed, 2000])``, disjoint from every split) rendered twice: flat (every
patch of an object shows its one colour: the colour is redundant across the object's patches)
and patchwork (``data.shapesworld_patchwork``: one random palette colour per (object, patch
cell), so no two patches of an object need share a colour). One expression per object, "the
<shape>" (no colour word, true in both renderings). For an untrained ``default`` model
(seeded) and each trained run, part 3 of the diagnostics (``evaluate_diagnostics`` with
``num_label_images``: Eq. 7's interaction I([R]) and the region's own Shapley value phi([R]),
object candidates vs background candidates, ROC AUC; 0.5 = no preference) on both renderings.
Load-independent: AUCs at equal samples; no timing. Prints one markdown table.
"""
import argparse

import numpy as np
import torch

from loupe_core.config import load_config
from loupe_core.data import GroundingSplit, Tokenizer, prepare_shapesworld
from loupe_core.data.shapesworld_patchwork import patchwork
from loupe_core.data.shapesworld_scenes import ALL_PAIRS, render, sample_scene
from loupe_core.eval.diagnostics import evaluate_diagnostics
from loupe_core.objective import LoupeObjective
from loupe_core.pipeline import load_run

KEYS = ("diag_label_auc_interaction", "diag_label_auc_phi", "diag_truebox_phrase")


def scenes_and_splits(paths, num: int, cell: int):
    """(flat GroundingSplit, patchwork GroundingSplit) of the same ``num`` scenes."""
    meta = paths.load_metadata()
    held = {tuple(p) for p in meta["heldout_pairs"]}
    size, seed = meta["params"]["image_size"], meta["params"]["seed"]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2000]))
    scenes = [sample_scene(rng, size, [p for p in ALL_PAIRS if p not in held]) for _ in range(num)]
    for scene in scenes:
        for obj in scene["objects"]:
            obj["striped"] = False
    flat = render(rng, scenes, size)
    patched = patchwork(flat, scenes, cell, rng)
    expressions, owner, boxes = [], [], []
    for i, scene in enumerate(scenes):
        for obj in scene["objects"]:
            expressions.append(f"the {obj['shape']}")
            owner.append(i)
            boxes.append([float(b) for b in obj["box"]])
    common = dict(image_ids=list(range(1, num + 1)), scales=np.ones((num, 2)), expressions=expressions,
                  expression_image=owner, boxes=np.asarray(boxes, dtype=np.float32))
    return GroundingSplit(images=flat, **common), GroundingSplit(images=patched, **common)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--data-root", default="runs/data")
    parser.add_argument("--num-images", type=int, default=60)
    parser.add_argument("--label-images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-untrained", action="store_true", help="only the runs, not the untrained model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config("default")
    paths = prepare_shapesworld(args.data_root, image_size=cfg.model.image_size, progress=False)
    tokenizer = Tokenizer.from_file(paths.tokenizer, max_length=min(cfg.model.text_max_tokens, 60))
    torch.manual_seed(args.seed)
    models = [] if args.skip_untrained else [("untrained default", LoupeObjective(cfg.model, cfg.loss).eval())]
    models += [(run, load_run(run, "cpu")[0]) for run in args.runs]
    flat, patched = scenes_and_splits(paths, args.num_images, cfg.model.patch_size)
    print(f"{args.num_images} scenes, {len(flat.expressions)} objects; label images {args.label_images}, "
          f"seed {args.seed}\n")
    print("| model | " + " | ".join(f"{k} flat | {k} patchwork" for k in KEYS) + " |")
    print("|---|" + "---|" * (2 * len(KEYS)))
    for name, objective in models:
        with torch.no_grad():
            out = [evaluate_diagnostics(objective, split, tokenizer, num_label_images=args.label_images,
                                        seed=args.seed, progress=False) for split in (flat, patched)]
        cells = [f"{o.get(k, float('nan')):.2f}" for k in KEYS for o in out]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
