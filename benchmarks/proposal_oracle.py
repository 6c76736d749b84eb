"""Proposal oracle of anchor layouts, no training needed (issue 31 item 3).

    python benchmarks/proposal_oracle.py [--data-root runs/data] [--image-size 32] [--patch-size 4]
                                         [--num-hard 200] [--ks 4 6 9]

For each candidate layout (anchor shapes, sub-cell centres, box mode ``model.region_boxes``)
the percent of objects that some candidate box hits at IoU >= 0.5 and >= 0.7
(``diagnostics.oracle_recall``), over every object of the ShapesWorld ``test`` split and of the
hard splits ``odd_sizes`` / ``crowded`` / ``shape_decides`` (docs/CONTRACTS.md s6), and the
candidate count P. Fitted anchors come from the ``train`` split's boxes only
(``model.anchor_fit.fit_anchors``, shapes in cells). Load-independent: no timing.
Prints one markdown table.
"""
import argparse
import json
import os

import numpy as np
import torch

from loupe_core.data import prepare_shapesworld
from loupe_core.data.shapesworld_hard import prepare_hard_splits
from loupe_core.eval.diagnostics import oracle_recall
from loupe_core.model.anchor_fit import fit_anchors, mean_best_iou
from loupe_core.model.config import _default_anchors
from loupe_core.model.region_head import RegionHead, with_offsets

SPLITS = ("test", "odd_sizes", "crowded", "shape_decides")


def object_boxes(annotation_path: str):
    """(float[B, n, 4] xyxy pixels, bool[B, n]) of every object of every image."""
    with open(annotation_path) as f:
        records = json.load(f)
    n = max(len(r["objects"]) for r in records)
    boxes, mask = torch.zeros(len(records), n, 4), torch.zeros(len(records), n, dtype=torch.bool)
    for i, r in enumerate(records):
        for k, o in enumerate(r["objects"]):
            boxes[i, k] = torch.tensor(o["box"], dtype=torch.float32)
            mask[i, k] = True
    return boxes, mask


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="runs/data")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--num-hard", type=int, default=200)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 6, 9])
    args = parser.parse_args(argv)
    paths = prepare_shapesworld(args.data_root, image_size=args.image_size, progress=False)
    hard = prepare_hard_splits(paths, args.num_hard, SPLITS[1:])
    objects = {"test": object_boxes(paths.test.annotations)}
    for name in SPLITS[1:]:
        objects[name] = object_boxes(os.path.join(os.path.dirname(hard[name]["grounding"]), "annotations.json"))
    train_boxes, train_mask = object_boxes(paths.train.annotations)
    wh = ((train_boxes[..., 2:] - train_boxes[..., :2])[train_mask] / args.patch_size).double()
    grid, cell = (args.image_size // args.patch_size,) * 2, float(args.patch_size)

    layouts = [("default anchors", _default_anchors(), "cells"), ("default anchors", _default_anchors(), "anchors")]
    for k in args.ks:
        fitted = fit_anchors(wh, k)
        layouts += [(f"fitted k={k}", fitted, "cells"), (f"fitted k={k}", fitted, "anchors"),
                    (f"fitted k={k}, 2x2 sub-cell centres", with_offsets(fitted, 2), "anchors")]
        print(f"fitted k={k}: {[[round(v, 3) for v in a] for a in fitted]} (mean best shape IoU on train "
              f"{mean_best_iou(wh, fitted):.3f}; default anchors {mean_best_iou(wh, _default_anchors()):.3f})")
    header = " | ".join(f"{s} @0.5 | {s} @0.7" for s in SPLITS)
    print(f"\n| layout | boxes | P | {header} |\n|---|---|---|" + "---|" * (2 * len(SPLITS)))
    for name, anchors, mode in layouts:
        geometry = RegionHead(8, anchors, boxes=mode).geometry(grid, cell, "cpu", torch.float32)
        cells = []
        for split in SPLITS:
            boxes, mask = objects[split]
            cells += [f"{oracle_recall(geometry.boxes, boxes, mask, t):.1f}" for t in (0.5, 0.7)]
        print(f"| {name} | {mode} | {geometry.boxes.shape[0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
