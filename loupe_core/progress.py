"""Progress reports that reach a log: a tqdm bar on a terminal, whole lines everywhere else.

tqdm redraws one line with carriage returns, and ``tqdm.auto``'s ``disable=None`` turns the bar
off where stderr is not a terminal, so a run whose output is piped or sent to a file printed
nothing until it ended. :func:`progress` gives the bar when stderr is a terminal and otherwise
a ``LineProgress``: one line ``desc: n/total unit (p%), elapsed, ~left, postfix`` on stderr at
most every ``LINE_INTERVAL`` seconds, and the final state at the end when it printed any line
before, each flushed. Both take the same calls (iteration, ``update``, ``set_postfix``, ``close``).

This module imports nothing of the project: every layer may use it.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

LINE_INTERVAL = 30.0
"""Seconds between two progress lines where stderr is not a terminal."""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """Progress of ``total`` items (or of ``iterable``) as whole lines on ``file`` (default stderr),
    at most one every ``interval`` seconds; ``close`` (also at the end of an iteration) prints
    the last state when any line was printed and that state was not."""

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, initial: int = 0,
                 desc: str = "", unit: str = "it", interval: Optional[float] = None, file=None):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.interval = LINE_INTERVAL if interval is None else interval
        self.start = self.last = time.monotonic()
        self.postfix, self.printed, self.closed = "", None, False  # printed: (n, postfix) of the last line

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.printed is not None and self.printed != (self.n, self.postfix):
            self._line()
        self.closed = True

    def line(self) -> str:
        """The current state: ``desc: n/total unit (p%), elapsed, ~left, postfix``."""
        elapsed = time.monotonic() - self.start
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        done = self.n - self.initial
        if self.total and 0 < done and self.n < self.total:
            parts.append(f"~{_duration(elapsed / done * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _line(self) -> None:
        out = self.file or sys.stderr
        print(self.line(), file=out, flush=True)
        self.printed, self.last = (self.n, self.postfix), time.monotonic()


def _on_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Optional[Iterable] = None, *, enabled: bool = True, total: Optional[int] = None,
             initial: int = 0, desc: str = "", unit: str = "it", leave: bool = True):
    """A tqdm bar when stderr is a terminal, else a ``LineProgress`` (``enabled=False``: a
    disabled tqdm bar, silent). ``leave``: the bar stays on the terminal when done."""
    if enabled and not _on_terminal(sys.stderr):
        return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled,
                dynamic_ncols=True)
