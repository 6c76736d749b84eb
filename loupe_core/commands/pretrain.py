"""``loupe pretrain``: LOUPE pretraining, then zero-shot evaluation on the held-out split.

    loupe pretrain [--config NAME_OR_PATH] [--out DIR] [--resume latest|PATH] [key=value ...]

``--config``: a named config (``loupe pretrain --list-configs``) or a JSON file; default
``default`` (ShapesWorld, full LOUPE, minutes on a CPU). ``key=value``: dotted overrides such
as ``train.steps=100 loss.fsa=false``. ``--out``: the run directory (default
``runs/<config>-<timestamp>``). ``--resume latest`` continues the newest checkpoint of ``--out``
(or of the newest ``runs/<config>-*`` run); ``--resume PATH`` a checkpoint file or run
directory. Under ``torchrun --nproc_per_node=N -m loupe_core.cli pretrain ...`` the N
processes share the global batch (DDP; gloo on the CPU, nccl on GPUs).
"""
from __future__ import annotations

import argparse
import json
import sys

from loupe_core.commands.options import run_directory
from loupe_core.config import list_configs
from loupe_core.errors import DivergenceError, LoupeError


def add_subcommands(subparsers) -> None:
    """Add ``pretrain`` to the ``loupe`` command's subparsers."""
    p = subparsers.add_parser("pretrain", help="LOUPE pretraining, then zero-shot evaluation on the held-out split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="named config or JSON path (default: 'default'; when "
                                                   "resuming, the checkpoint's own config)")
    p.add_argument("--out", type=run_directory, default=None, help="run directory (default runs/<config>-<timestamp>)")
    p.add_argument("--resume", default=None, metavar="latest|PATH", help="continue from a checkpoint")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after this many completed steps, with a checkpoint (time-limited jobs)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--list-configs", action="store_true", help="list the named configs and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run_pretrain_command)


def run_pretrain_command(args) -> int:
    """``loupe pretrain``: returns the exit status, with the reason on stderr: 1 when training
    diverged (``DivergenceError``), 2 on a bad argument, data, checkpoint or setting (a
    ``ValueError`` of the arguments' resolution, a ``LoupeError`` of the run). Any other exception
    of the run is a programming error and surfaces with its traceback."""
    if args.list_configs:
        print("\n".join(list_configs()))
        return 0
    from loupe_core.pipeline import pretrain, resolve_run

    try:
        cfg, run_dir, resume = resolve_run(args.config, args.overrides, args.out, args.resume)
    except ValueError as exc:
        print(f"loupe pretrain: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        pretrain(cfg, run_dir, resume=resume, stop_at=args.stop_at)
    except DivergenceError as exc:
        print(f"loupe pretrain: {exc}", file=sys.stderr)
        return 1
    except LoupeError as exc:  # bad data, checkpoint or setting: the message names it
        print(f"loupe pretrain: error: {exc}", file=sys.stderr)
        return 2
    return 0
