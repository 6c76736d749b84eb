"""Training batches from a CSV/TSV file of (image path, caption) rows, as OpenCLIP's ``--csv-*``.

Rows whose image is missing or corrupt, whose caption is empty, or whose text is not UTF-8 are
skipped and counted (``DataStats``; a non-UTF-8 row is also logged as a warning naming the
file and line); a column named by ``img_key`` / ``caption_key`` that the header lacks is a
ValueError naming it. Relative image paths are taken from ``image_root`` (default: the CSV's
folder). Phrases come from the chunker, in the loader's workers.

``make_csv_loader``: finite passes (a pass that keeps nothing is a ValueError).
``CsvStream``: the endless, seeded stream of equal micro-batches that ``loupe pretrain`` trains
on (``data.dataset=csv``), bounded by a ``BadRunGuard`` so that unusable rows never hang a run.
"""
from __future__ import annotations

import csv
import os
from typing import Optional

import torch

from .batch import collate_batch
from .records import decode_record
from .stats import DEFAULT_BAD_LIMIT, BadRunGuard, CountingLoader, DataStats, batches_with_counts, logger
from .tokenizer import Tokenizer


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds bytes that were not UTF-8 (read with ``errors="surrogateescape"``)."""
    return not any("\udc80" <= ch <= "\udcff" for ch in text)


class CsvPairs(torch.utils.data.Dataset):
    """Map-style dataset: item i -> ``(make_sample dict | None, DataStats of that row)``."""

    def __init__(self, csv_path: str, tokenizer: Tokenizer, *, img_key: str = "filepath",
                 caption_key: str = "title", sep: str = "\t", image_size: int = 64,
                 image_root: Optional[str] = None):
        if not os.path.isfile(csv_path):
            raise ValueError(f"csv_path: no file at {csv_path!r}")
        self.csv_path = csv_path
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            for name, key in (("img_key", img_key), ("caption_key", caption_key)):
                if key not in columns:
                    raise ValueError(f"{name} {key!r} is not a column of {csv_path} (columns: {columns}; sep={sep!r})")
            self.rows = []  # (image path, caption), or None for a row that is not UTF-8
            for row in reader:
                pair = (row[img_key] or "", row[caption_key] or "")
                if all(map(_is_utf8, pair)):
                    self.rows.append(pair)
                else:
                    logger.warning("%s:%d: not UTF-8 text; row skipped", csv_path, reader.line_num)
                    self.rows.append(None)
        self.root = os.path.dirname(os.path.abspath(csv_path)) if image_root is None else image_root
        self.tokenizer, self.image_size = tokenizer, image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        stats = DataStats()
        if self.rows[index] is None:
            stats.seen, stats.bad_text = 1, 1
            return None, stats
        path, caption = self.rows[index]
        full = os.path.join(self.root, path) if path else ""
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError:
            data = None
        sample = decode_record(data, caption, None, f"{index}:{path}", self.tokenizer, self.image_size, stats)
        return sample, stats


def collate_with_counts(items, max_phrases: int = 8):
    """``[(sample | None, DataStats)]`` -> ``(batch | None, summed DataStats)``."""
    stats = DataStats()
    for _, s in items:
        stats.add(s)
    samples = [sample for sample, _ in items if sample is not None]
    return (collate_batch(samples, max_phrases) if samples else None), stats


def make_csv_loader(csv_path: str, tokenizer: Tokenizer, *, batch_size: int, img_key: str = "filepath",
                    caption_key: str = "title", sep: str = "\t", image_size: int = 64,
                    image_root: Optional[str] = None, num_workers: int = 0, shuffle: bool = True,
                    seed: int = 0, max_phrases: int = 8, drop_last: bool = False) -> CountingLoader:
    """A ``CountingLoader`` of CONTRACTS s3 batches from a CSV (batches may come out smaller than
    ``batch_size`` where rows were skipped). shuffle uses a generator seeded with ``seed``."""
    import functools

    dataset = CsvPairs(csv_path, tokenizer, img_key=img_key, caption_key=caption_key, sep=sep,
                       image_size=image_size, image_root=image_root)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=functools.partial(collate_with_counts, max_phrases=max_phrases))
    return CountingLoader(loader, name=f"csv {csv_path}", hint="the image paths and captions of the rows")


class CsvStream(torch.utils.data.IterableDataset):
    """Endless ``(batch, DataStats since the last batch)`` items of exactly ``batch_size`` kept rows.

    Epoch e visits the rows in ``torch.randperm`` order seeded by ``seed + e``; this process
    (``rank`` of ``world_size``) takes every ``world_size``-th row and each DataLoader worker
    every ``num_workers``-th of those, so the stream is a pure function of the seed. Skipped
    rows are counted; ``bad_limit`` in a row, or an epoch of this stream without a kept row,
    raise ValueError naming the CSV.
    """

    def __init__(self, pairs: CsvPairs, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_phrases: int = 8, bad_limit: int = DEFAULT_BAD_LIMIT):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.rank, self.world_size, self.max_phrases, self.bad_limit = rank, world_size, max_phrases, bad_limit

    def _samples(self, stats: DataStats):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        guard = BadRunGuard(stats, self.bad_limit, hint=f" (rows of {self.pairs.csv_path})")
        epoch = 0
        while True:
            order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(self.seed + epoch))
            kept_any = False
            for index in order[self.rank::self.world_size][worker::workers].tolist():
                sample, row_stats = self.pairs[index]
                stats.add(row_stats)
                if sample is None:
                    guard.skipped(f"{self.pairs.csv_path} row {index}")
                else:
                    guard.kept()
                    kept_any = True
                    yield sample
            if not kept_any:
                raise ValueError(f"{self.pairs.csv_path}: a whole epoch gave this process no usable row "
                                 f"({len(self.pairs)} rows, rank {self.rank} of {self.world_size}, worker "
                                 f"{worker} of {workers}; last counts: {stats.summary()})")
            epoch += 1

    def __iter__(self):
        stats = DataStats()
        return batches_with_counts(self._samples(stats), stats, self.batch_size, self.max_phrases, partial=False)
