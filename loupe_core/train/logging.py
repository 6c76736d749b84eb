"""Run logs: every logged value to JSONL, CSV and TensorBoard.

One record per logged step: ``{"step": int, "<name>": float, ...}`` with names such as
``loss``, ``loss/cmc``, ``log/unsil_share``, ``train/lr``, ``train/samples_per_s``,
``eval/<metric>``. ``metrics.jsonl`` is the history (one JSON object per line); ``metrics.csv``
holds the same records as a table (one column per name, rewritten when a new name appears);
``tb/`` holds TensorBoard event files. A record with the step and the names of one already
logged replaces it (no duplicate rows: the final evaluation of a step that ``eval.every``
evaluated, a finished run evaluated again). On resume the records after the checkpoint's step are
dropped, so the history of a resumed run is the uninterrupted one's; a line that is not a JSON
record (torn by a kill mid-write) is dropped with a warning naming the file and line.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os

logger = logging.getLogger("loupe_core.train")


class MetricLogger:
    """Writes records to ``<run_dir>/metrics.{jsonl,csv}`` and ``<run_dir>/tb`` (main rank only).

    ``resume_step``: the step of the checkpoint a resumed run starts from (records after it are
    dropped); None for a fresh run (any old history is replaced).
    """

    def __init__(self, run_dir: str, *, enabled: bool = True, tensorboard: bool = True, resume_step=None):
        self.enabled = enabled
        self.jsonl_path = os.path.join(run_dir, "metrics.jsonl")
        self.csv_path = os.path.join(run_dir, "metrics.csv")
        self.records: list[dict] = []
        self._columns: list[str] = []
        self._writer = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.jsonl_path):
            self.records = [r for r in read_history(self.jsonl_path) if r["step"] <= resume_step]
        self._rewrite_jsonl()
        self._rewrite_csv()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=purge)

    def log(self, step: int, values: dict) -> None:
        """Record ``values`` (name -> number) at ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _number(v) for k, v in values.items()}}
        same = next((i for i, r in enumerate(self.records) if r["step"] == record["step"] and set(r) == set(record)),
                    None)
        if same is not None:  # e.g. the final evaluation of a step an eval.every evaluation logged
            if self.records[same] == record:
                return
            self.records[same] = record
            self._rewrite_jsonl()
            self._rewrite_csv()
        else:
            self.records.append(record)
            with open(self.jsonl_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if set(record) - set(self._columns):
                self._rewrite_csv()
            else:
                with open(self.csv_path, "a", newline="") as fh:
                    csv.DictWriter(fh, self._columns).writerow(record)
        if self._writer is not None:
            for name, value in record.items():
                if name != "step" and value is not None:
                    self._writer.add_scalar(name, value, step)

    def _rewrite_jsonl(self) -> None:
        with open(self.jsonl_path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in self.records)

    def _rewrite_csv(self) -> None:
        columns = ["step"]
        for r in self.records:
            columns += [k for k in r if k not in columns]
        self._columns = columns
        with open(self.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(self.records)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def read_history(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl``; lines that are not a record with an int ``step`` (a
    torn last line after a kill) are dropped, each with a warning naming the file and line."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a record with an int 'step'")
            except ValueError as exc:
                logger.warning("%s:%d: dropped a partial or invalid line (%s): %r", path, number, exc, line[:80])
                continue
            records.append(record)
    return records


def _number(v):
    """A JSON-safe float (None for NaN / inf, which JSON cannot hold)."""
    v = float(v.item() if hasattr(v, "item") else v)
    return v if math.isfinite(v) else None
