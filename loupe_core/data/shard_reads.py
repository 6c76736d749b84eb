"""Reading tar shards one at a time, so that a shard that cannot be read is counted and named.

A read fails when opening or reading the shard raises (missing file, empty or garbage file,
truncation) or when it yields no sample. Each failure adds one to ``DataStats.shard_errors``
and is logged as a warning naming the shard; the samples read before a truncation are kept.
For a resampled stream (shards drawn with replacement, endless) a ValueError naming the
shards stops it once every shard of the list has failed since the last read that gave a
sample: without it, training would wait forever on data it cannot use.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

from .stats import DataStats, logger
from ..errors import DataError


class ShardReads:
    """Pipeline stage: ``{"url": ...}`` dicts -> raw webdataset sample dicts (``__key__``, ``__url__``,
    one entry per member), reading each shard on its own and counting failed reads in ``stats``.

    urls: every shard the stream can draw (resampled streams), or None (a finite pass, which ends
    by itself).
    """

    def __init__(self, stats: DataStats, urls: Optional[Sequence[str]] = None):
        self.stats = stats
        self.urls = None if urls is None else set(urls)
        self.failed: dict[str, str] = {}  # shard -> why, since the last read that gave a sample

    @staticmethod
    def _read(url: str, errors: list) -> Iterator[dict]:
        """The samples of one shard; an error stops the read (appended to ``errors``) after the
        samples before it, the last one complete or not (a partial one is then skipped downstream)."""
        from webdataset.tariterators import tarfile_samples

        def stop(exc):
            errors.append(exc)
            return True  # webdataset then ends this shard's read and flushes the sample being grouped

        return tarfile_samples([{"url": url}], handler=stop)

    def _failure(self, url: str, why: str) -> None:
        self.stats.shard_errors += 1
        logger.warning("shard %s: %s", url, why)
        self.failed[url] = why
        if self.urls is not None and self.urls <= set(self.failed):
            named = "; ".join(f"{u}: {w}" for u, w in sorted(self.failed.items())[:5])
            raise DataError(f"shards: none of the {len(self.urls)} shards gave a sample ({named}"
                            f"{'; ...' if len(self.failed) > 5 else ''})")

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for shard in src:
            url, count, errors = shard["url"], 0, []
            try:
                for raw in self._read(url, errors):
                    count += 1
                    yield raw
            except Exception as exc:  # tarfile, OS and gopen errors the handler did not see
                errors.append(exc)
            why = f"{type(errors[0]).__name__}: {errors[0].args[0] if errors[0].args else errors[0]}" if errors \
                else "no sample in it"
            if count:
                self.failed.clear()
                if errors:
                    self.stats.shard_errors += 1
                    logger.warning("shard %s: read stopped after %d samples (%s)", url, count, why)
            else:
                self._failure(url, why)
