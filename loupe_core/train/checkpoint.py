"""Atomic, verified checkpoints and the RNG state that makes a resumed run continue exactly.

A checkpoint is one ``torch.save`` file ``<run_dir>/checkpoints/step_<NNNNNNNN>.pt`` holding a
dict (model, optimizer, scheduler, scaler, rng, step, total_steps, world_size, config). It is
written to a temporary file ``.tmp-<pid>-*.pt`` in the same directory (created with the
process's umask, as every other run file), flushed, fsynced and ``os.replace``d onto its
name, so a crash mid-write leaves every earlier checkpoint intact; the temporary files a
killed process leaves are removed when a run starts there and when ``--resume`` looks there,
even where no checkpoint was completed (``remove_partial_writes``). Files load with
``weights_only=True`` (no pickled code).

Integrity: ``save_checkpoint`` stores ``"sha256"``, a digest of every value in the dict (tensor
bytes, dtypes, shapes and plain values, in key order); ``load_checkpoint`` recomputes it, so a
flipped bit anywhere in the content is a ValueError naming the file (a file without a digest
loads with a warning: it cannot be verified). A training checkpoint must
also hold the keys of ``TRAINING_KEYS`` and finite model weights (``check_training_state``); a
file a model is built from, the keys of ``MODEL_KEYS``, a config of this version and finite
weights (``load_model_checkpoint``). Every error is a ``CheckpointError`` naming the file.
``resolve_resume`` given a run directory or ``latest`` falls back from a damaged newest
checkpoint to the newest good one, with a warning naming both files.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import random
import re
import secrets

import numpy as np
import torch

from loupe_core.config import RunConfig
from loupe_core.errors import CheckpointError

_NAME = re.compile(r"step_(\d+)\.pt$")
DIGEST_KEY = "sha256"
TRAINING_KEYS = ("step", "total_steps", "model", "optimizer", "scheduler", "scaler", "rng", "config")
MODEL_KEYS = ("model", "config")
logger = logging.getLogger("loupe_core.train")


def _feed(h, value, path: str) -> None:
    """Add ``value`` (nested dicts / lists / tuples of tensors and plain values) to the hash ``h``."""
    h.update(path.encode())
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            _feed(h, value[k], f"{path}/{k!r}")
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for i, v in enumerate(value):
            _feed(h, v, f"{path}[{i}]")
    else:
        h.update(repr(value).encode())


def state_digest(state: dict) -> str:
    """sha256 (hex) of the content of ``state``: every tensor's dtype, shape and bytes, every plain value."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY}, "")
    return h.hexdigest()


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
    """Write ``state`` with its digest to ``path`` atomically (temp file in the same dir, fsync, os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temporary(directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({**state, DIGEST_KEY: state_digest(state)}, fh)
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


def _create_temporary(directory: str) -> tuple[int, str]:
    """(fd, path) of a new ``.tmp-<pid>-<random>.pt`` file in ``directory``, mode 0666 less the
    umask (``tempfile.mkstemp`` would make it 0600, unlike the run's other files)."""
    while True:
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{secrets.token_hex(4)}.pt")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The dict saved by :func:`save_checkpoint` (without its digest); ValueError naming ``path``
    if it is missing, unreadable, not a dict, without a digest or with content that does not
    match its digest (damaged)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path!r} could not be read: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path!r} is not a checkpoint of this project "
                              f"(it holds a {type(state).__name__})")
    if DIGEST_KEY not in state:  # written before digests existed, or by another program
        logger.warning("checkpoint %s has no %r digest: its content cannot be verified", path, DIGEST_KEY)
        return state
    stored = state.pop(DIGEST_KEY)
    if stored != state_digest(state):
        raise CheckpointError(f"checkpoint {path!r} is damaged: its content does not match its sha256 digest")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_weights(path: str, state: dict) -> dict:
    """``state`` unless its ``"model"`` weights hold NaN or inf (ValueError naming ``path`` and the weight)."""
    model = state.get("model")
    for name, value in (model.items() if isinstance(model, dict) else ()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {path!r} holds non-finite values in model weight {name!r}")
    return state


def check_training_state(path: str, state: dict) -> dict:
    """``state`` if it is a training checkpoint (the keys of ``TRAINING_KEYS``, finite model
    weights), else ValueError naming ``path`` and what is wrong."""
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is not a training checkpoint of this project: it lacks {missing}")
    return check_weights(path, state)


def load_model_checkpoint(path: str) -> dict:
    """:func:`load_checkpoint` of a file a model is built from (``load_checkpoint`` of the API,
    ``model.image_init``, ``loupe eval``): CheckpointError naming ``path`` unless it holds the
    keys of ``MODEL_KEYS`` (a foreign torch file does not), a config of this version and finite
    model weights."""
    state = load_checkpoint(path)
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is not a checkpoint of this project: it lacks {missing} "
                              f"(it holds {sorted(map(str, state))[:8]}); give a run directory, a step_*.pt file "
                              f"of a run or a save_pretrained folder")
    checkpoint_config(path, state)
    return check_weights(path, state)


def checkpoint_config(path: str, state: dict) -> RunConfig:
    """The RunConfig saved in the checkpoint ``state`` read from ``path``; CheckpointError naming
    the file when it is not a config of this version."""
    try:
        return RunConfig.from_dict(state["config"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path!r}: its config is not one of this version ({exc})") from None


def load_training_state(path: str) -> dict:
    """:func:`load_checkpoint` then :func:`check_training_state`."""
    return check_training_state(path, load_checkpoint(path))


_TMP_PID = re.compile(r"\.tmp-(\d+)-[^/]*\.pt$")


def _writer_alive(path: str) -> bool:
    """Whether the process that named the temporary file ``path`` (``.tmp-<pid>-``) still runs on
    this machine and is not this one."""
    match = _TMP_PID.search(path)
    if match is None or int(match.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def remove_partial_writes(run_dir: str, *, keep_live: bool = False) -> list[str]:
    """Delete the temporary files of interrupted checkpoint writes in ``<run_dir>/checkpoints``
    (a warning lists them); returns their paths. ``keep_live``: leave the files of writers that
    still run (``--resume`` looking at a run another process may be writing)."""
    paths = sorted(glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-*.pt")))
    removed = []
    for path in paths:
        if keep_live and _writer_alive(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:  # another rank of the same job removed it first
            continue
        removed.append(path)
    if removed:
        logger.warning("removed %d partial checkpoint write(s) of an interrupted run: %s", len(removed), removed)
    return removed


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


def latest_good_checkpoint(run_dir: str):
    """Path of the run's newest checkpoint that loads intact (digest and finite weights), or None
    when it has none; each damaged newer one is passed over with a warning naming it and the
    fallback. Raises ValueError listing the damage when every checkpoint of the run is damaged."""
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            check_weights(path, load_checkpoint(path))
        except ValueError as exc:
            damaged.append((path, str(exc)))
            continue
        for bad, why in damaged:
            logger.warning("%s; resuming from the previous good checkpoint %s instead", why, path)
        return path
    if damaged:
        raise CheckpointError(f"no usable checkpoint in {run_dir!r}: " + "; ".join(why for _, why in damaged))
    return None


def resolve_resume(resume: str, run_dir: str | None, runs_root: str = "runs", config_name: str | None = None,
                   *, flag: str = "--resume", clean: bool = False) -> str:
    """Checkpoint path for ``--resume``: a file, a run directory, or ``latest``.

    ``latest`` takes the newest good checkpoint (``latest_good_checkpoint``) of ``run_dir`` when
    given, else of the most recently modified ``<runs_root>/<config_name>-*`` run that has one.
    A file is taken as it is (no fallback: it was named). ``flag``: the argument named in the
    error (``--checkpoint`` for ``loupe eval``). ``clean``: first remove the partial writes of
    dead processes in each run directory looked at (``remove_partial_writes``), so that a run
    killed during its first checkpoint write is left clean even though it has no checkpoint.
    """
    if resume != "latest":
        if clean and os.path.isdir(resume):
            remove_partial_writes(resume, keep_live=True)
        path = latest_good_checkpoint(resume) if os.path.isdir(resume) else resume
        if path is None or not os.path.isfile(path):
            raise CheckpointError(f"{flag} {resume!r}: no checkpoint there (a checkpoint file or a run directory "
                                  f"with checkpoints/step_*.pt)")
        return path
    if run_dir is not None and os.path.isdir(run_dir):
        candidates = [run_dir]
    else:
        pattern = f"{config_name}-*" if config_name else "*"
        candidates = sorted(glob.glob(os.path.join(runs_root, pattern)), key=os.path.getmtime, reverse=True)
    removed = []
    for cand in candidates:
        if clean:
            removed += remove_partial_writes(cand, keep_live=True)
        path = latest_good_checkpoint(cand)
        if path is not None:
            return path
    where = run_dir if run_dir is not None else os.path.join(runs_root, f"{config_name or ''}-*")
    note = (f" (removed {len(removed)} partial checkpoint write(s) of an interrupted first write: start "
            f"the run afresh, without {flag})") if removed else ""
    raise CheckpointError(f"{flag} latest: no checkpoint found under {where!r}{note}")
