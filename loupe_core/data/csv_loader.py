"""Training batches from a CSV/TSV file of (image path, caption) rows, as OpenCLIP's ``--csv-*``.

Rows whose image is missing or corrupt, or whose caption is empty, are skipped and counted
(``CountingLoader.stats``); a column named by ``img_key`` / ``caption_key`` that the header
lacks is a ValueError naming it. Relative image paths are taken from ``image_root`` (default:
the CSV's folder). Phrases come from the chunker, in the loader's workers.
"""
from __future__ import annotations

import csv
import os
from typing import Optional

import torch

from .batch import collate_batch
from .records import decode_record
from .stats import CountingLoader, DataStats
from .tokenizer import Tokenizer


class CsvPairs(torch.utils.data.Dataset):
    """Map-style dataset: item i -> ``(make_sample dict | None, DataStats of that row)``."""

    def __init__(self, csv_path: str, tokenizer: Tokenizer, *, img_key: str = "filepath",
                 caption_key: str = "title", sep: str = "\t", image_size: int = 64,
                 image_root: Optional[str] = None):
        if not os.path.isfile(csv_path):
            raise ValueError(f"csv_path: no file at {csv_path!r}")
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            for name, key in (("img_key", img_key), ("caption_key", caption_key)):
                if key not in columns:
                    raise ValueError(f"{name} {key!r} is not a column of {csv_path} (columns: {columns}; sep={sep!r})")
            self.rows = [(row[img_key], row[caption_key]) for row in reader]
        self.root = os.path.dirname(os.path.abspath(csv_path)) if image_root is None else image_root
        self.tokenizer, self.image_size = tokenizer, image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        path, caption = self.rows[index]
        stats = DataStats()
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
    return CountingLoader(loader, name="csv")
