"""Training batches from a CSV/TSV file of (image path, caption) rows, as OpenCLIP's ``--csv-*``.

Rows whose image is missing or corrupt, whose caption is empty, or whose text is not UTF-8 are
skipped and counted (``DataStats``; a non-UTF-8 row is also logged as a warning naming the
file and line); a column named by ``img_key`` / ``caption_key`` that the header lacks is a
DataError naming it. Reads are bounded: an image must be a regular file (a device such as
``/dev/zero``, a FIFO, a folder, or a link to one is skipped and counted, never read) of at
most ``max_image_bytes`` bytes, and a caption over ``max_caption_chars`` characters is skipped,
counted and logged naming the file and line (the csv module's field limit is raised while the
file is parsed, so a long field is a counted row, not a ``_csv.Error``). Relative image paths
are taken from ``image_root`` (default: the CSV's folder). Phrases come from the chunker, in
the loader's workers.

``make_csv_loader``: finite passes (a pass that keeps nothing is a ValueError).
``CsvStream``: the endless, seeded stream of equal micro-batches that ``loupe pretrain`` trains
on (``data.dataset=csv``), bounded by a ``BadRunGuard`` so that unusable rows never hang a run.
``csv_captions``: the usable captions of a CSV (``loupe data tokenizer``).
"""
from __future__ import annotations

import contextlib
import csv
import os
import stat
from typing import Iterator, Optional

import torch

from ..errors import DataError
from .batch import collate_batch
from .records import decode_record
from .stats import DEFAULT_BAD_LIMIT, BadRunGuard, CountingLoader, DataStats, batches_with_counts, logger
from .tokenizer import Tokenizer

DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20  # data.max_image_bytes
DEFAULT_MAX_CAPTION_CHARS = 16384  # data.max_caption_chars
_PARSER_FIELD_LIMIT = 2**31 - 1  # while parsing; captions are then checked against max_caption_chars


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds bytes that were not UTF-8 (read with ``errors="surrogateescape"``)."""
    return not any("\udc80" <= ch <= "\udcff" for ch in text)


@contextlib.contextmanager
def _field_limit(limit: int):
    """The csv module's (process-wide) field size limit set to ``limit``, restored on exit."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_csv_rows(csv_path: str, img_key: Optional[str], caption_key: str, sep: str = "\t",
                  max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS) -> list:
    """The rows of ``csv_path``: ``(image path, caption)``, or the name of the ``DataStats``
    reason (``"bad_text"``, ``"caption_too_long"``) for a row that cannot be used (logged as a
    warning naming the file and line; ``img_key`` None: captions alone, image path ""). DataError
    naming the file or the missing column."""
    if not os.path.isfile(csv_path):
        raise DataError(f"csv_path: no file at {csv_path!r}")
    rows = []
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f, \
            _field_limit(_PARSER_FIELD_LIMIT):
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        for name, key in (("img_key", img_key), ("caption_key", caption_key)):
            if key is not None and key not in columns:
                raise DataError(f"{name} {key!r} is not a column of {csv_path} (columns: {columns}; sep={sep!r})")
        for row in reader:
            pair = ((row[img_key] or "") if img_key else "", row[caption_key] or "")
            if not all(map(_is_utf8, pair)):
                logger.warning("%s:%d: not UTF-8 text; row skipped", csv_path, reader.line_num)
                rows.append("bad_text")
            elif len(pair[1]) > max_caption_chars:
                logger.warning("%s:%d: caption of %d characters (data.max_caption_chars=%d; an unclosed quote "
                               "joins the lines that follow it); row skipped", csv_path, reader.line_num,
                               len(pair[1]), max_caption_chars)
                rows.append("caption_too_long")
            else:
                rows.append(pair)
    return rows


def csv_captions(csv_path: str, caption_key: str = "title", sep: str = "\t", img_key: Optional[str] = None,
                 max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS) -> Iterator[str]:
    """The captions of the usable rows of ``csv_path`` (rows skipped as ``read_csv_rows`` does)."""
    for row in read_csv_rows(csv_path, img_key, caption_key, sep, max_caption_chars):
        if not isinstance(row, str):
            yield row[1]


def read_image_file(path: str, max_bytes: int) -> tuple[Optional[bytes], Optional[str]]:
    """(the bytes of the image file ``path``, None), or (None, the ``DataStats`` reason it was not
    read: ``missing_image``, ``image_not_a_file`` or ``image_too_large``). Only a regular file
    (links followed) is opened, without blocking (a FIFO put there meanwhile is refused), and
    at most ``max_bytes + 1`` bytes are read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None, "missing_image"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "image_not_a_file"
        if info.st_size > max_bytes:
            return None, "image_too_large"
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return None, "missing_image"
    finally:
        os.close(fd)
    return (None, "image_too_large") if len(data) > max_bytes else (data, None)


class CsvPairs(torch.utils.data.Dataset):
    """Map-style dataset: item i -> ``(make_sample dict | None, DataStats of that row)``."""

    def __init__(self, csv_path: str, tokenizer: Tokenizer, *, img_key: str = "filepath",
                 caption_key: str = "title", sep: str = "\t", image_size: int = 64,
                 image_root: Optional[str] = None, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS):
        self.csv_path = csv_path
        self.rows = read_csv_rows(csv_path, img_key, caption_key, sep, max_caption_chars)
        self.root = os.path.dirname(os.path.abspath(csv_path)) if image_root is None else image_root
        self.tokenizer, self.image_size, self.max_image_bytes = tokenizer, image_size, max_image_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        stats = DataStats()
        row = self.rows[index]
        if isinstance(row, str):
            stats.seen = 1
            setattr(stats, row, 1)
            return None, stats
        path, caption = row
        data, reason = read_image_file(os.path.join(self.root, path), self.max_image_bytes) if path else (None, None)
        if reason is not None and reason != "missing_image":
            stats.seen = 1
            setattr(stats, reason, 1)
            return None, stats
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
                    seed: int = 0, max_phrases: int = 8, drop_last: bool = False,
                    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS) -> CountingLoader:
    """A ``CountingLoader`` of CONTRACTS s3 batches from a CSV (batches may come out smaller than
    ``batch_size`` where rows were skipped). shuffle uses a generator seeded with ``seed``."""
    import functools

    dataset = CsvPairs(csv_path, tokenizer, img_key=img_key, caption_key=caption_key, sep=sep,
                       image_size=image_size, image_root=image_root, max_image_bytes=max_image_bytes,
                       max_caption_chars=max_caption_chars)
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
    raise DataError naming the CSV.
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
                raise DataError(f"{self.pairs.csv_path}: a whole epoch gave this process no usable row "
                                f"({len(self.pairs)} rows, rank {self.rank} of {self.world_size}, worker "
                                f"{worker} of {workers}; last counts: {stats.summary()})")
            epoch += 1

    def __iter__(self):
        stats = DataStats()
        return batches_with_counts(self._samples(stats), stats, self.batch_size, self.max_phrases, partial=False)
