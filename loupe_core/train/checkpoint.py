"""Atomic checkpoints and the RNG state that makes a resumed run continue exactly.

A checkpoint is one ``torch.save`` file ``<run_dir>/checkpoints/step_<NNNNNNNN>.pt`` holding a
dict (model, optimizer, scheduler, scaler, rng, step, epoch, batch position, config). It is
written to a temporary file in the same directory, flushed, fsynced and ``os.replace``d onto its
name, so a crash mid-write leaves every earlier checkpoint intact. Files load with
``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import glob
import os
import random
import re
import tempfile

import numpy as np
import torch

_NAME = re.compile(r"step_(\d+)\.pt$")


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and (if present) CUDA generator states, as tensors / plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step:08d}.pt")


def save_checkpoint(path: str, state: dict) -> str:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The dict saved by :func:`save_checkpoint`; ValueError naming ``path`` if missing or unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path!r} could not be read: {exc}") from exc


def list_checkpoints(run_dir: str) -> list[str]:
    """The run's checkpoint files, oldest step first."""
    paths = glob.glob(os.path.join(run_dir, "checkpoints", "step_*.pt"))
    return sorted((p for p in paths if _NAME.search(p)), key=lambda p: int(_NAME.search(p).group(1)))


def latest_checkpoint(run_dir: str):
    """Path of the run's highest-step checkpoint, or None."""
    paths = list_checkpoints(run_dir)
    return paths[-1] if paths else None


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0``: keep all)."""
    if keep > 0:
        for path in list_checkpoints(run_dir)[:-keep]:
            os.unlink(path)


def resolve_resume(resume: str, run_dir: str | None, runs_root: str = "runs", config_name: str | None = None) -> str:
    """Checkpoint path for ``--resume``: a file, a run directory, or ``latest``.

    ``latest`` takes the newest checkpoint of ``run_dir`` when given, else of the most recently
    modified ``<runs_root>/<config_name>-*`` run that has one.
    """
    if resume != "latest":
        path = latest_checkpoint(resume) if os.path.isdir(resume) else resume
        if path is None or not os.path.isfile(path):
            raise ValueError(f"--resume {resume!r}: no checkpoint there")
        return path
    if run_dir is not None and os.path.isdir(run_dir):
        candidates = [run_dir]
    else:
        pattern = f"{config_name}-*" if config_name else "*"
        candidates = sorted(glob.glob(os.path.join(runs_root, pattern)), key=os.path.getmtime, reverse=True)
    for cand in candidates:
        path = latest_checkpoint(cand)
        if path is not None:
            return path
    where = run_dir if run_dir is not None else os.path.join(runs_root, f"{config_name or ''}-*")
    raise ValueError(f"--resume latest: no checkpoint found under {where!r}")
