"""``loupe data ...`` subcommands (added to the top-level parser by ``loupe_core.cli``).

    loupe data shapes  --out DIR --num N [--image-size 64] [--seed 0] [--split train] [--shard-size 1000]
    loupe data phrases --shards PATTERN --out DIR [--caption-key txt] [--backend pattern]
    loupe data prepare [--cache-dir DIR] [--num-train 4000] [--num-eval 200] [--image-size 64] [--seed 0]
                       [--hard-splits all|NAME,...] [--num-hard 200]
    loupe data tokenizer (--csv FILE [--sep TAB] | --shards PATTERN) --out tokenizer.json
                         [--caption-key KEY] [--vocab-size 8000]

``shapes`` writes ShapesWorld webdataset shards; ``phrases`` copies shards with noun-phrase
spans precomputed into each sample's json; ``prepare`` generates (or finds) the embedded
ShapesWorld dataset and prints its root, with ``--hard-splits`` also the harder grounding
splits beside it (docs/CONTRACTS.md s6), one ``grounding.json`` path per line; ``tokenizer``
builds a WordPiece vocabulary from the captions of a CSV (column ``--caption-key``, default
``title``) or of shards (member ``--caption-key``, default ``txt``) and writes the ``tokenizer.json`` that ``data.tokenizer``
names (``model.text_vocab_size`` must be at least its size, which it prints).
"""
from __future__ import annotations

import argparse
import os
import sys

from loupe_core.commands.options import positive_int


def _shapes(args) -> int:
    from loupe_core.data.shards import write_shapesworld_shards

    paths = write_shapesworld_shards(args.out, args.num, image_size=args.image_size, seed=args.seed,
                                     split=args.split, shard_size=args.shard_size)
    print(f"wrote {args.num} samples in {len(paths)} shards to {args.out}")
    return 0


def _phrases(args) -> int:
    from loupe_core.data.shards import add_phrases_to_shards
    from loupe_core.data.webdataset_loader import expand_shards

    counts = add_phrases_to_shards(expand_shards(args.shards), args.out, caption_key=args.caption_key,
                                   backend=args.backend)
    print(f"{counts['samples']} samples: {counts['with_phrases']} with noun phrases, "
          f"{counts['without_phrases']} without (kept: they still train the contrastive loss)")
    return 0


def _prepare(args) -> int:
    from loupe_core.data.shapesworld import prepare_shapesworld

    paths = prepare_shapesworld(args.cache_dir, image_size=args.image_size, num_train=args.num_train,
                                num_val=args.num_eval, num_test=args.num_eval, num_heldout=args.num_eval,
                                seed=args.seed)
    print(paths.root)
    if args.hard_splits:
        from loupe_core.data.shapesworld_hard import HARD_SPLITS, prepare_hard_splits

        names = HARD_SPLITS if args.hard_splits == "all" else tuple(args.hard_splits.split(","))
        for name, files in prepare_hard_splits(paths, args.num_hard, names).items():
            print(f"{name}: {files['grounding']}")
    return 0


def _tokenizer(args) -> int:
    from loupe_core.data.csv_loader import csv_captions
    from loupe_core.data.shards import shard_captions
    from loupe_core.data.tokenizer import Tokenizer
    from loupe_core.data.webdataset_loader import expand_shards

    if args.csv is not None:
        captions = list(csv_captions(args.csv, args.caption_key or "title", args.sep))
        source = args.csv
    else:
        captions = list(shard_captions(expand_shards(args.shards), args.caption_key or "txt"))
        source = args.shards
    if not captions:
        raise ValueError(f"{source}: no caption to build a vocabulary from (--caption-key "
                         f"{args.caption_key or ('title' if args.csv else 'txt')!r})")
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a folder; name the tokenizer.json file to write")
    tokenizer = Tokenizer.train(captions, vocab_size=args.vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tokenizer.save(args.out)
    print(f"wrote {args.out}: {tokenizer.vocab_size} tokens from {len(captions)} captions of {source} "
          f"(set data.tokenizer={args.out}; model.text_vocab_size must be >= {tokenizer.vocab_size})")
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
    """Add ``data`` with its own ``shapes`` / ``phrases`` / ``prepare`` / ``tokenizer`` subcommands."""
    data = subparsers.add_parser("data", help="datasets: ShapesWorld shards, phrase precomputation, a tokenizer "
                                              "for your captions",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{shapes,phrases,prepare,tokenizer}")

    p = sub.add_parser("shapes", help="write ShapesWorld webdataset shards (png + txt + json)")
    p.add_argument("--out", required=True, help="output folder (shards shapes-000000.tar, ...)")
    p.add_argument("--num", type=positive_int, required=True, help="number of samples")
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
                   help="also write harder grounding splits: 'all' or comma-separated names "
                        "(docs/CONTRACTS.md s6)")
    p.add_argument("--num-hard", type=positive_int, default=200, help="images in each hard split")
    p.set_defaults(func=_run(_prepare))

    p = sub.add_parser("tokenizer", help="build a tokenizer.json from your captions (CSV or shards)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", default=None, help="CSV/TSV of (image path, caption) rows")
    source.add_argument("--shards", default=None, help="brace pattern of webdataset shards")
    p.add_argument("--caption-key", default=None, help="caption column (CSV, default title) or member (shards, "
                                                       "default txt; json: its 'caption')")
    p.add_argument("--sep", default="\t", help="CSV separator (default tab)")
    p.add_argument("--vocab-size", type=positive_int, default=8000,
                   help="entries at most: special tokens, characters, then the most frequent words")
    p.add_argument("--out", required=True, help="the tokenizer.json to write")
    p.set_defaults(func=_run(_tokenizer))

