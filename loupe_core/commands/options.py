"""argparse value types shared by the ``loupe`` subcommands: each refuses a bad value with
argparse's usage error (exit status 2) naming the flag, before any work starts."""
from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    """An int >= 1 (``--batch-size``, ``--num``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_directory(text: str) -> str:
    """A folder that exists or can be made (``--out``): not an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text
