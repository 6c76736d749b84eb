"""The ``loupe`` command line: ``loupe pretrain``, ``loupe data ...``, ``loupe eval ...``.

The entry point of the ``loupe`` console script (also ``python -m loupe_core`` and
``python -m loupe_core.cli``, as torchrun needs); the subcommands are in ``loupe_core.commands``.
Building the parser loads no torch: each command imports what it runs when it runs, so
``loupe --help`` and ``loupe --version`` answer at once.
"""
from __future__ import annotations

import argparse
import sys

from loupe_core import __version__
from loupe_core.commands import SUBCOMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loupe", description="LOUPE pretraining on the shapley_kernels engine")
    parser.add_argument("--version", action="version", version=f"loupe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pretrain,data,eval}")
    for command in SUBCOMMANDS:
        command.add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``loupe`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
