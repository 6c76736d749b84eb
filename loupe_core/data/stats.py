"""Counting what the real-data loaders skip, and a loader wrapper that sums the counts.

Worker processes cannot share a counter, so each batch travels with the counts of the records
it consumed: the underlying DataLoader yields ``(batch | None, DataStats)`` and
``CountingLoader`` sums them in the main process and yields the batches alone.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

logger = logging.getLogger("loupe_core.data")


@dataclass
class DataStats:
    """Records seen, kept, skipped (by reason), and kept captions without any noun phrase."""

    seen: int = 0
    kept: int = 0
    corrupt_image: int = 0
    missing_image: int = 0
    empty_caption: int = 0
    no_phrase: int = 0

    @property
    def skipped(self) -> int:
        return self.corrupt_image + self.missing_image + self.empty_caption

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
        return (f"{self.seen} records: {self.kept} kept, {self.skipped} skipped (corrupt image "
                f"{self.corrupt_image}, missing image {self.missing_image}, empty caption "
                f"{self.empty_caption}); {self.no_phrase} kept captions have no noun phrase")


class CountingLoader:
    """Yields the batches of ``loader`` (items ``(batch | None, DataStats)``), summing the counts.

    ``epoch_stats``: counts of the last (or current) pass; ``stats``: all passes. At the end of
    each pass the summary is logged (logger ``loupe_core.data``).
    """

    def __init__(self, loader, name: str = "data"):
        self.loader = loader
        self.name = name
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

    def __len__(self) -> int:
        return len(self.loader)
