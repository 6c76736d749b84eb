"""Counting what the real-data loaders skip, the bound that turns unusable data into an error,
and a loader wrapper that sums the counts.

Worker processes cannot share a counter, so each batch travels with the counts of the records
it consumed: the underlying DataLoader yields ``(batch | None, DataStats)`` and
``CountingLoader`` sums them in the main process and yields the batches alone.

No hang on data that cannot be used: ``BadRunGuard`` raises ValueError once
``limit`` records in a row were skipped with none kept, and ``CountingLoader`` raises when a
whole pass kept nothing. Both messages name the sources and the counts by reason.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from .batch import collate_batch
from ..errors import DataError

logger = logging.getLogger("loupe_core.data")

DEFAULT_BAD_LIMIT = 1000
"""Records skipped in a row (none kept in between) after which the data counts as unusable."""


SKIP_REASONS = ("corrupt_image", "missing_image", "empty_caption", "missing_caption", "bad_text",
                "image_not_a_file", "image_too_large", "caption_too_long")
"""The ``DataStats`` fields that count skipped records, one per reason."""


def skip_reasons_text(counts: dict) -> str:
    """``"corrupt image 1, missing image 0, ..."``: the skip counts of ``DataStats.as_dict()``;
    the first five reasons always, the rarer ones (unsafe files, oversized fields) when not 0."""
    shown = [r for i, r in enumerate(SKIP_REASONS) if i < 5 or counts.get(r, 0)]
    return ", ".join(f"{r.replace('_', ' ')} {counts.get(r, 0)}" for r in shown)


@dataclass
class DataStats:
    """Records seen, kept, skipped (by reason: ``SKIP_REASONS``), kept captions without any noun
    phrase, and shard reads that failed (unreadable, truncated or empty shards: not records, so
    not in ``seen``). ``image_not_a_file``: a CSV row's image is a device, FIFO, folder or a link
    to one; ``image_too_large`` / ``caption_too_long``: over ``data.max_image_bytes`` /
    ``data.max_caption_chars``."""

    seen: int = 0
    kept: int = 0
    corrupt_image: int = 0
    missing_image: int = 0
    empty_caption: int = 0
    missing_caption: int = 0
    bad_text: int = 0
    image_not_a_file: int = 0
    image_too_large: int = 0
    caption_too_long: int = 0
    no_phrase: int = 0
    shard_errors: int = 0

    @property
    def skipped(self) -> int:
        return sum(getattr(self, name) for name in SKIP_REASONS)

    def add(self, other: "DataStats") -> "DataStats":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def take(self) -> "DataStats":
        """A copy of the counts, which are then reset to zero."""
        out = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)
        return out

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "skipped": self.skipped}

    def summary(self) -> str:
        return (f"{self.seen} records: {self.kept} kept, {self.skipped} skipped ({skip_reasons_text(self.as_dict())}); "
                f"{self.no_phrase} kept captions have no noun phrase; {self.shard_errors} shard read errors")


class BadRunGuard:
    """Raises ``DataError`` when ``limit`` records in a row are skipped with none kept.

    ``skipped(source)`` / ``kept()`` after each record; ``stats`` (the counts by reason) and
    ``hint`` (e.g. which setting to check) go into the message, with the sources seen in the run.
    """

    def __init__(self, stats: DataStats, limit: int = DEFAULT_BAD_LIMIT, hint: str = ""):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"bad_limit must be a positive int, got {limit!r}")
        self.stats, self.limit, self.hint = stats, limit, hint
        self.in_a_row, self.sources = 0, []

    def kept(self) -> None:
        self.in_a_row, self.sources = 0, []

    def skipped(self, source: str) -> None:
        self.in_a_row += 1
        if source not in self.sources and len(self.sources) < 5:
            self.sources.append(source)
        if self.in_a_row >= self.limit:
            raise DataError(f"no usable sample in the last {self.in_a_row} records (from {self.sources}); "
                            f"counts so far: {self.stats.summary()}{self.hint}")


def batches_with_counts(samples: Iterable[dict], stats: DataStats, batch_size: int, max_phrases: int,
                        partial: bool) -> Iterator[tuple]:
    """``make_sample`` dicts -> ``(batch, DataStats since the last batch)`` (CONTRACTS s3 batches of
    ``batch_size``); at the end a last partial batch (or None) carries the remaining counts."""
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate_batch(batch, max_phrases), stats.take()
            batch = []
    last = collate_batch(batch, max_phrases) if batch and partial else None
    yield last, stats.take()


class CountingLoader:
    """Yields the batches of ``loader`` (items ``(batch | None, DataStats)``), summing the counts.

    ``epoch_stats``: counts of the last (or current) pass; ``stats``: all passes. At the end of
    each pass the summary is logged (logger ``loupe_core.data``); a pass that read records or
    shards but kept none raises ValueError (``hint``: what to check, appended to the message).
    """

    def __init__(self, loader, name: str = "data", hint: Optional[str] = None):
        self.loader = loader
        self.name = name
        self.hint = hint
        self.stats = DataStats()
        self.epoch_stats = DataStats()

    def __iter__(self):
        self.epoch_stats = DataStats()
        for batch, counts in self.loader:
            self.epoch_stats.add(counts)
            self.stats.add(counts)
            if batch is not None:
                yield batch
        logger.info("%s epoch: %s", self.name, self.epoch_stats.summary())
        e = self.epoch_stats
        if e.kept == 0 and (e.seen or e.shard_errors):
            raise DataError(f"{self.name}: no usable sample in a whole pass ({e.summary()})"
                            + (f"; check {self.hint}" if self.hint else ""))

    def __len__(self) -> int:
        return len(self.loader)
