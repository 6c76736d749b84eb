"""``loupe data ...`` subcommands (added to the top-level parser by ``loupe_core.cli``).

    loupe data shapes  --out DIR --num N [--image-size 64] [--seed 0] [--split train] [--shard-size 1000]
    loupe data phrases --shards PATTERN --out DIR [--caption-key txt] [--backend pattern]
    loupe data prepare [--cache-dir DIR] [--num-train 4000] [--num-eval 200] [--image-size 64] [--seed 0]
                       [--hard-splits all|NAME,...] [--num-hard 200]

``shapes`` writes ShapesWorld webdataset shards; ``phrases`` copies shards with noun-phrase
spans precomputed into each sample's json; ``prepare`` generates (or finds) the embedded
ShapesWorld dataset and prints its root, with ``--hard-splits`` also the harder grounding
splits beside it (docs/CONTRACTS.md s6), one ``grounding.json`` path per line.
"""
from __future__ import annotations

import argparse
import sys

from loupe_core.data.shapesworld import prepare_shapesworld
from loupe_core.data.shapesworld_hard import HARD_SPLITS, prepare_hard_splits
from loupe_core.data.shards import add_phrases_to_shards, write_shapesworld_shards
from loupe_core.data.webdataset_loader import expand_shards


def _shapes(args) -> int:
    paths = write_shapesworld_shards(args.out, args.num, image_size=args.image_size, seed=args.seed,
                                     split=args.split, shard_size=args.shard_size)
    print(f"wrote {args.num} samples in {len(paths)} shards to {args.out}")
    return 0


def _phrases(args) -> int:
    counts = add_phrases_to_shards(expand_shards(args.shards), args.out, caption_key=args.caption_key,
                                   backend=args.backend)
    print(f"{counts['samples']} samples: {counts['with_phrases']} with noun phrases, "
          f"{counts['without_phrases']} without (kept: they still train the contrastive loss)")
    return 0


def _prepare(args) -> int:
    paths = prepare_shapesworld(args.cache_dir, image_size=args.image_size, num_train=args.num_train,
                                num_val=args.num_eval, num_test=args.num_eval, num_heldout=args.num_eval,
                                seed=args.seed)
    print(paths.root)
    if args.hard_splits:
        names = HARD_SPLITS if args.hard_splits == "all" else tuple(args.hard_splits.split(","))
        for name, files in prepare_hard_splits(paths, args.num_hard, names).items():
            print(f"{name}: {files['grounding']}")
    return 0


def _run(func):
    def run(args) -> int:
        try:
            return func(args)
        except (ValueError, TypeError) as exc:
            print(f"loupe data {args.data_command}: error: {exc}", file=sys.stderr)
            return 2
    return run


def add_subcommands(subparsers) -> None:
    """Add ``data`` with its own ``shapes`` / ``phrases`` / ``prepare`` subcommands."""
    data = subparsers.add_parser("data", help="datasets: ShapesWorld shards, phrase precomputation",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{shapes,phrases,prepare}")

    p = sub.add_parser("shapes", help="write ShapesWorld webdataset shards (png + txt + json)")
    p.add_argument("--out", required=True, help="output folder (shards shapes-000000.tar, ...)")
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "val", "test", "heldout"])
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.set_defaults(func=_run(_shapes))

    p = sub.add_parser("phrases", help="precompute noun-phrase spans into shards (json 'phrases')")
    p.add_argument("--shards", required=True, help="brace pattern, e.g. 'data/{000000..000009}.tar'")
    p.add_argument("--out", required=True, help="output folder (same shard names)")
    p.add_argument("--caption-key", default="txt", help="member holding the caption (txt, or json with 'caption')")
    p.add_argument("--backend", default="pattern", choices=["pattern", "spacy"])
    p.set_defaults(func=_run(_phrases))

    p = sub.add_parser("prepare", help="generate the embedded ShapesWorld dataset (or find it) and print its root")
    p.add_argument("--cache-dir", default=None, help="parent folder (default $LOUPE_CACHE or ~/.cache/loupe)")
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-eval", type=int, default=200, help="images in each of val, test, heldout")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-splits", default=None,
                   help=f"also write harder grounding splits: 'all' or names from {','.join(HARD_SPLITS)}")
    p.add_argument("--num-hard", type=int, default=200, help="images in each hard split")
    p.set_defaults(func=_run(_prepare))

