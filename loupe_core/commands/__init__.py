"""The ``loupe`` subcommands, one module each: ``pretrain``, ``data``, ``eval``.

Each module has ``add_subcommands(subparsers)`` (its argparse parser, whose ``func`` runs the
command and returns the exit status); ``loupe_core.cli`` puts them under one parser. Commands
parse arguments, call the pipeline (``loupe_core.pipeline``) or a layer's functions and print;
they hold no training or evaluation logic (docs/ARCHITECTURE.md).
"""
from . import data, eval, pretrain

SUBCOMMANDS = (pretrain, data, eval)

__all__ = ["SUBCOMMANDS", "data", "eval", "pretrain"]
