"""Training batches from webdataset tar shards (real image-text data, or ShapesWorld shards).

Each sample needs an image member (``jpg``/``jpeg``/``png``/``webp``) and the caption member
``caption_key`` (``txt``, or ``json`` with a ``"caption"`` field); a sample without either, or
whose image does not decode, is skipped and counted (``DataStats``), and so is a shard that
cannot be read (``shard_reads``). Data that cannot be used stops with a ValueError naming the
shards and the counts: ``bad_limit`` records skipped in a row (``stats.BadRunGuard``), every
shard of a resampled stream unreadable, or a finite pass that kept nothing (a wrong
``caption_key`` ends here). A ``json`` member's ``"phrases"`` (written by ``loupe data
phrases``) are used as the noun-phrase spans; otherwise the chunker runs here.

Shards: node then worker splitting (``wds.split_by_node`` / ``wds.split_by_worker``), or with
``resampled=True`` shards drawn with replacement per worker (``wds.ResampledShards``), as
OpenCLIP does. Batches follow docs/CONTRACTS.md s3.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .records import decode_record
from .shard_reads import ShardReads
from .shards import caption_of, json_member
from .stats import DEFAULT_BAD_LIMIT, BadRunGuard, CountingLoader, DataStats, batches_with_counts, logger
from .tokenizer import Tokenizer
from ..errors import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_shards(shards: Union[str, Sequence[str]]) -> list[str]:
    """Shard list from brace patterns (``"data/{000000..000009}.tar"``), ``::``-joined or as a list."""
    import braceexpand

    patterns = shards.split("::") if isinstance(shards, str) else list(shards)
    urls = [u for p in patterns for u in braceexpand.braceexpand(p)]
    if not urls:
        raise DataError(f"shards: no shard in {shards!r}")
    return urls


class RawToSamples:
    """Pipeline stage: raw webdataset dicts -> ``make_sample`` dicts; skipped ones in ``stats``
    (shared with the ``ShardReads`` stage of the same pipeline), bounded by a ``BadRunGuard``."""

    def __init__(self, tokenizer: Tokenizer, image_size: int, caption_key: str = "txt",
                 image_keys: Sequence[str] = IMAGE_KEYS, bad_limit: int = DEFAULT_BAD_LIMIT):
        self.tokenizer, self.image_size = tokenizer, image_size
        self.caption_key, self.image_keys = caption_key, tuple(image_keys)
        self.stats = DataStats()
        self.guard = BadRunGuard(self.stats, bad_limit, hint=f" (caption_key={caption_key!r}, image keys "
                                                             f"{list(self.image_keys)})")

    @staticmethod
    def _phrases(raw: dict):
        return json_member(raw["json"]).get("phrases") if "json" in raw else None

    def __call__(self, src):
        for raw in src:
            key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
            if self.caption_key not in raw:
                self.stats.seen += 1
                self.stats.missing_caption += 1
                self.guard.skipped(url)
                continue
            image = next((raw[k] for k in self.image_keys if k in raw), None)
            sample = decode_record(image, caption_of(raw, self.caption_key), self._phrases(raw), key,
                                   self.tokenizer, self.image_size, self.stats)
            if sample is None:
                self.guard.skipped(url)
            else:
                self.guard.kept()
                yield sample


class CollateWithCounts:
    """Pipeline stage: samples -> ``(batch, DataStats since the last batch)``
    (``stats.batches_with_counts``)."""

    def __init__(self, to_samples: RawToSamples, batch_size: int, max_phrases: int, partial: bool):
        self.to_samples, self.batch_size = to_samples, batch_size
        self.max_phrases, self.partial = max_phrases, partial

    def __call__(self, src):
        return batches_with_counts(self.to_samples(src), self.to_samples.stats, self.batch_size,
                                   self.max_phrases, self.partial)


def _record_stages(shards, stats: DataStats, *, resampled: bool, seed: int, shuffle_buffer: int) -> list:
    """Pipeline stages from shard names to raw sample dicts (node/worker split or resampling);
    failed shard reads are counted in ``stats``."""
    import webdataset as wds

    urls = expand_shards(shards)
    if resampled:
        stages = [wds.ResampledShards(urls, seed=seed, deterministic=True), ShardReads(stats, urls)]
    else:
        stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker, ShardReads(stats)]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return stages


class LogCountsAtEnd:
    """Pipeline stage: the samples of ``to_samples``, then its counts logged (per process)."""

    def __init__(self, to_samples: RawToSamples):
        self.to_samples = to_samples

    def __call__(self, src):
        yield from self.to_samples(src)
        logger.info("webdataset pass: %s", self.to_samples.stats.take().summary())


def webdataset_samples(shards, tokenizer: Tokenizer, *, image_size: int = 64, resampled: bool = False,
                       seed: int = 0, shuffle_buffer: int = 0, caption_key: str = "txt",
                       image_keys: Sequence[str] = IMAGE_KEYS, bad_limit: int = DEFAULT_BAD_LIMIT):
    """An IterableDataset of ``make_sample`` dicts, for a DataLoader with ``collate_fn=collate_batch``
    (e.g. the trainer's). Skip counts stay in each worker and are logged at the end of its pass;
    ``make_webdataset_loader`` sums them instead."""
    import webdataset as wds

    to_samples = RawToSamples(tokenizer, image_size, caption_key, image_keys, bad_limit)
    stages = _record_stages(shards, to_samples.stats, resampled=resampled, seed=seed, shuffle_buffer=shuffle_buffer)
    stages.append(LogCountsAtEnd(to_samples))
    return wds.DataPipeline(*stages)


def webdataset_pipeline(shards, tokenizer: Tokenizer, *, batch_size: int, image_size: int = 64,
                        resampled: bool = False, seed: int = 0, shuffle_buffer: int = 0,
                        caption_key: str = "txt", image_keys: Sequence[str] = IMAGE_KEYS,
                        max_phrases: int = 8, partial: bool = True, bad_limit: int = DEFAULT_BAD_LIMIT):
    """The ``wds.DataPipeline`` (an IterableDataset) of ``(batch | None, DataStats)`` items."""
    import webdataset as wds

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    to_samples = RawToSamples(tokenizer, image_size, caption_key, image_keys, bad_limit)
    stages = _record_stages(shards, to_samples.stats, resampled=resampled, seed=seed, shuffle_buffer=shuffle_buffer)
    stages.append(CollateWithCounts(to_samples, batch_size, max_phrases, partial))
    return wds.DataPipeline(*stages)


def make_webdataset_loader(shards, tokenizer: Tokenizer, *, batch_size: int, image_size: int = 64,
                           num_workers: int = 0, resampled: bool = False, batches_per_epoch: Optional[int] = None,
                           seed: int = 0, shuffle_buffer: int = 0, caption_key: str = "txt",
                           image_keys: Sequence[str] = IMAGE_KEYS, max_phrases: int = 8,
                           partial: bool = True, bad_limit: int = DEFAULT_BAD_LIMIT) -> CountingLoader:
    """A ``CountingLoader`` of CONTRACTS s3 batches from tar shards (``.stats`` / ``.epoch_stats``).

    shards: brace pattern(s) or a list. resampled: draw shards with replacement (an endless
    stream, cut into epochs of ``batches_per_epoch`` batches, which is then required).
    Without resampling a pass reads each shard once, split over nodes and workers (give at
    least as many shards as workers x nodes). partial: keep each worker's last short batch.
    bad_limit: records skipped in a row that stop the stream with a ValueError.
    """
    if resampled and not batches_per_epoch:
        raise ValueError("batches_per_epoch is required with resampled=True (the stream is endless)")
    pipeline = webdataset_pipeline(shards, tokenizer, batch_size=batch_size, image_size=image_size,
                                   resampled=resampled, seed=seed, shuffle_buffer=shuffle_buffer,
                                   caption_key=caption_key, image_keys=image_keys, max_phrases=max_phrases,
                                   partial=partial, bad_limit=bad_limit)
    if resampled:
        pipeline = pipeline.with_epoch(math.ceil(batches_per_epoch / max(1, num_workers)))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
    return CountingLoader(loader, name="webdataset", hint=f"the shards and caption_key={caption_key!r}")
