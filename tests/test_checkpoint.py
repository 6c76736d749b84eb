"""Atomic checkpoints, RNG state round trip, finding and pruning checkpoints."""
import os
import random

import numpy as np
import pytest
import torch

from loupe_core.train import checkpoint as ckpt


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.randn(())))


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()
    path = ckpt.save_checkpoint(str(tmp_path / "s.pt"), {"rng": ckpt.capture_rng_state()})
    expected = _draws()
    _draws()
    ckpt.restore_rng_state(ckpt.load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_a_failure_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "step_00000001.pt")
    ckpt.save_checkpoint(path, {"w": torch.arange(4.0)})
    real_save = torch.save

    def dies_half_way(obj, fh, *args, **kwargs):
        fh.write(b"PARTIAL" * 100)  # some bytes reach the temporary file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    torch.testing.assert_close(ckpt.load_checkpoint(path)["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["step_00000001.pt"]  # no temporary file left behind


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="nothere.pt.*does not exist"):
        ckpt.load_checkpoint(str(tmp_path / "nothere.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*could not be read"):
        ckpt.load_checkpoint(str(bad))


def test_latest_prune_and_resolve(tmp_path):
    run = str(tmp_path / "runs" / "tiny-20260101-000000")
    for step in (2, 10, 4):
        ckpt.save_checkpoint(ckpt.checkpoint_path(run, step), {"step": step})
    assert ckpt.latest_checkpoint(run).endswith("step_00000010.pt")  # by step, not by name order
    assert ckpt.resolve_resume("latest", run) == ckpt.latest_checkpoint(run)
    assert ckpt.resolve_resume(run, None) == ckpt.latest_checkpoint(run)
    found = ckpt.resolve_resume("latest", None, runs_root=str(tmp_path / "runs"), config_name="tiny")
    assert found == ckpt.latest_checkpoint(run)
    ckpt.prune_checkpoints(run, keep=2)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(run)] == ["step_00000004.pt", "step_00000010.pt"]
    with pytest.raises(ValueError, match="no checkpoint found"):
        ckpt.resolve_resume("latest", None, runs_root=str(tmp_path / "runs"), config_name="default")
    with pytest.raises(ValueError, match="no checkpoint there"):
        ckpt.resolve_resume(str(tmp_path / "missing.pt"), None)
