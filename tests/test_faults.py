"""Fault injection (issue 15): damaged data, checkpoints and logs, kills mid-write, bad settings.

Each test stands for one promise of docs/RELIABILITY.md. Anything that hung before the fix runs
in a subprocess (``_isolated``) whose timeout only turns a hang into a failure; nothing here
measures time. ``pytest -m faults`` runs the suite (about a minute on 2 CPU cores).
"""
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from _trainer_helpers import PairData, PairModel, collate, pair_config
from loupe_core.config import load_config
from loupe_core.errors import DivergenceError
from loupe_core.data import DataStats, Tokenizer, make_csv_loader, make_webdataset_loader
from loupe_core.data.images import encode_png
from loupe_core.data.shards import write_shard
from loupe_core.train import checkpoint as ckpt
from loupe_core.train.logging import MetricLogger
from loupe_core.train.trainer import train

pytestmark = pytest.mark.faults
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "the cat"]


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _isolated(code: str, cwd, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python; a hang becomes a failed test, not a stuck suite."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung (no result in {timeout} s)")


def _png(seed=0):
    return encode_png(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = Tokenizer.train(CAPTIONS)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(path))
    return t, str(path)


def _fresh(seed=0):
    torch.manual_seed(seed)
    return PairModel()


def _good_shard(path, n=3, prefix="g"):
    write_shard(str(path), [(f"{prefix}{i}", {"png": _png(i), "txt": CAPTIONS[i % 3].encode()}) for i in range(n)])


# --- item 1: unusable shards end with an error naming them, never a hang ----------------------

def test_unreadable_shards_stop_a_resampled_stream_naming_them(tmp_path, tok):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "garbage.tar").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(3000)))
    proc = _isolated(f"""
        from loupe_core.data import Tokenizer
        from loupe_core.data.webdataset_loader import webdataset_pipeline
        tok = Tokenizer.from_file({tok[1]!r})
        shards = [{str(tmp_path / 'missing.tar')!r}, {str(tmp_path / 'empty.tar')!r}, {str(tmp_path / 'garbage.tar')!r}]
        try:
            next(iter(webdataset_pipeline(shards, tok, batch_size=2, image_size=8, resampled=True)))
        except ValueError as exc:
            print("ERROR", exc)
        """, tmp_path)
    assert proc.stdout.startswith("ERROR shards: none of the 3 shards gave a sample"), proc.stdout + proc.stderr
    for name, why in (("missing.tar", "FileNotFoundError"), ("empty.tar", "empty file"), ("garbage.tar", "ReadError")):
        assert f"{name}: " in proc.stdout and why in proc.stdout, (name, proc.stdout)


def test_shards_whose_every_image_is_corrupt_stop_within_the_bound(tmp_path, tok):
    write_shard(str(tmp_path / "bad.tar"), [(f"b{i}", {"jpg": b"not an image", "txt": b"a red square"})
                                             for i in range(3)])
    proc = _isolated(f"""
        from loupe_core.data import Tokenizer
        from loupe_core.data.webdataset_loader import webdataset_pipeline
        tok = Tokenizer.from_file({tok[1]!r})
        try:
            next(iter(webdataset_pipeline({str(tmp_path / 'bad.tar')!r}, tok, batch_size=2, image_size=8,
                                          resampled=True, bad_limit=20)))
        except ValueError as exc:
            print("ERROR", exc)
        """, tmp_path)
    assert proc.stdout.startswith("ERROR no usable sample in the last 20 records"), proc.stdout + proc.stderr
    assert "bad.tar" in proc.stdout and "corrupt image 20" in proc.stdout


def test_a_csv_stream_without_a_usable_row_stops_naming_the_file(tmp_path, tok):
    from loupe_core.data.csv_loader import CsvPairs, CsvStream

    (tmp_path / "rows.tsv").write_text("filepath\ttitle\nnothere.png\ta cat\nalso.png\ta red square\n")
    with pytest.raises(ValueError, match="rows.tsv: a whole epoch gave this process no usable row"):
        next(iter(CsvStream(CsvPairs(str(tmp_path / "rows.tsv"), tok[0], image_size=8), 2)))
    with pytest.raises(ValueError, match=r"no usable sample in a whole pass .*missing image 2"):
        list(make_csv_loader(str(tmp_path / "rows.tsv"), tok[0], batch_size=2, image_size=8))


# --- item 2: a truncated shard is counted, its readable samples kept --------------------------

def test_a_truncated_shard_is_counted_and_the_run_goes_on(tmp_path, tok, caplog):
    _good_shard(tmp_path / "a.tar", n=4, prefix="a")
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: data.index(b"a2.png") + 600])  # cut inside the third image
    _good_shard(tmp_path / "b.tar", n=2, prefix="b")
    loader = make_webdataset_loader([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], tok[0], batch_size=1,
                                    image_size=8)
    with caplog.at_level(logging.WARNING, logger="loupe_core.data"):
        keys = [k for b in loader for k in b["keys"]]
    assert keys == ["a0", "a1", "b0", "b1"]
    assert loader.epoch_stats.shard_errors == 1 and loader.epoch_stats.kept == len(keys)
    assert "a.tar" in caplog.text and "read stopped" in caplog.text


# --- items 3 and 10: skip counts reach metrics.jsonl, the progress bar, the summary; CSV pretrain

class _CountedStream(torch.utils.data.IterableDataset):
    """PairData micro-batches of 4, each with the counts of 1 corrupt image and 5 kept records."""

    def __iter__(self):
        data = PairData(64)
        for start in range(0, 64, 4):
            yield collate([data[i] for i in range(start, start + 4)]), DataStats(seen=5, kept=4, corrupt_image=1)


def test_skip_counts_reach_the_metrics_and_the_progress_bar(tmp_path, monkeypatch):
    import loupe_core.train.trainer as trainer

    postfixes = []

    class Bar:
        def update(self, n): pass
        def close(self): pass
        def set_postfix(self, **kw): postfixes.append(kw)

    monkeypatch.setattr(trainer, "_progress", lambda *a: Bar())
    cfg = pair_config(batch_size=4, steps=3)
    result = train(cfg, str(tmp_path / "run"), PairModel(), _CountedStream(), None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data/corrupt_image"] for r in records] == [1, 2, 3]
    assert [r["data/skipped"] for r in records] == [1, 2, 3] and records[-1]["data/seen"] == 15
    assert [p["skipped"] for p in postfixes] == [1, 2, 3]
    assert result.data_counts["corrupt_image"] == 3 and result.data_counts["kept"] == 12


def _csv_run(tmp_path, tok_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(8):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(_png(i))
        rows.append(f"imgs/{i}.png\t{CAPTIONS[i % 3]}\n".encode())
    rows[2] = b"imgs/2.png\ta caf\xe9 sign\n"  # Latin-1, not UTF-8
    rows[5] = b"imgs/nothere.png\ta cat\n"
    (tmp_path / "pairs.tsv").write_bytes(b"filepath\ttitle\n" + b"".join(rows))
    return ["data.dataset=csv", f"data.train_csv={tmp_path / 'pairs.tsv'}", f"data.tokenizer={tok_path}",
            'data.eval_paths={"retrieval": "unused.json"}', "eval.final=false", "train.steps=2",
            "train.batch_size=4", "loss.tsa=false", "loss.fsa=false", "loss.unsil=false", "train.device=cpu",
            "train.tensorboard=false", "model.text_vocab_size=64"]


def test_csv_rows_that_are_not_utf8_are_skipped_naming_file_and_line(tmp_path, tok, caplog):
    _csv_run(tmp_path, tok[1])
    with caplog.at_level(logging.WARNING, logger="loupe_core.data"):
        loader = make_csv_loader(str(tmp_path / "pairs.tsv"), tok[0], batch_size=8, image_size=8, shuffle=False)
    keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == 6 and not any(k.startswith("2:") for k in keys)
    assert loader.epoch_stats.bad_text == 1 and loader.epoch_stats.missing_image == 1
    assert f"{tmp_path / 'pairs.tsv'}:4: not UTF-8" in caplog.text  # header is line 1, row 2 is line 4


def test_pretrain_on_a_csv_reports_its_skip_counts(tmp_path, tok):
    proc = subprocess.run([sys.executable, "-m", "loupe_core.cli", "pretrain", "--config", "tiny", "--out",
                           str(tmp_path / "run"), *_csv_run(tmp_path, tok[1])], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["data"]["bad_text"] >= 1 and summary["data"]["skipped"] >= 1
    assert "skipped (corrupt image" in proc.stdout
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data/skipped"] == summary["data"]["skipped"]


# --- items 4, 5, 8: checkpoints ----------------------------------------------------------------

def _two_checkpoints(run):
    cfg = pair_config(steps=4, ckpt_every=2, keep_checkpoints=0)
    train(cfg, run, PairModel(), PairData(16), collate, stop_at=4)
    return cfg, ckpt.list_checkpoints(run)


def _flip_a_weight_bit(path):
    weight = ckpt.load_checkpoint(path)["model"]["img.weight"]
    raw = bytearray(open(path, "rb").read())
    at = bytes(raw).find(weight.numpy().tobytes()[:32])
    assert at > 0
    raw[at + 13] ^= 0x10
    open(path, "wb").write(bytes(raw))


def test_a_bit_flip_is_detected_and_resume_falls_back_naming_both_files(tmp_path, caplog):
    run = str(tmp_path / "run")
    _, (older, newest) = _two_checkpoints(run)
    _flip_a_weight_bit(newest)
    with pytest.raises(ValueError, match="step_00000004.pt.*is damaged"):
        ckpt.load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="loupe_core.train"):
        assert ckpt.resolve_resume("latest", run) == older
    assert newest in caplog.text and older in caplog.text and "damaged" in caplog.text
    assert ckpt.load_checkpoint(older)["step"] == 2  # the good one is kept


def test_nan_weights_in_a_checkpoint_are_refused_naming_the_weight(tmp_path):
    path = str(tmp_path / "step_00000001.pt")
    state = {"step": 1, "total_steps": 2, "model": {"w": torch.tensor([1.0, float("nan")])}, "optimizer": {},
             "scheduler": {}, "scaler": {}, "rng": [], "config": {}}
    ckpt.save_checkpoint(path, state)
    with pytest.raises(ValueError, match="step_00000001.pt.*non-finite values in model weight 'w'"):
        ckpt.load_training_state(path)


def test_foreign_and_mismatched_checkpoints_give_one_line_naming_file_and_cause(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    proc = subprocess.run([sys.executable, "-m", "loupe_core.cli", "pretrain", "--resume", str(foreign)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "foreign.pt" in proc.stderr and "lacks ['step', 'total_steps'" in proc.stderr
    run = str(tmp_path / "run")
    cfg, (_, newest) = _two_checkpoints(run)
    cfg.model.embed_dim = 48
    wider = PairModel()
    wider.txt = torch.nn.Linear(8, 9)
    with pytest.raises(ValueError, match=r"step_00000004.pt.*do not fit this model \(model.embed_dim: 32 in the "
                                         r"checkpoint, 48 here\)"):
        train(cfg, run, wider, PairData(16), collate, resume=newest)


_KILLER = """
import os, random, signal, sys, torch
from loupe_core.train import checkpoint as ckpt
run, seed = sys.argv[1], int(sys.argv[2])
state = {"step": 2, "w": torch.arange(200_000.0)}
real_save = torch.save

class Dies:
    def __init__(self, fh, at): self.fh, self.left = fh, at
    def write(self, data):
        if len(data) >= self.left:
            self.fh.write(data[: self.left]); self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.left -= len(data)
        return self.fh.write(data)
    def __getattr__(self, name): return getattr(self.fh, name)

at = random.Random(seed).randrange(1, 800_000)  # a byte inside the ~800 kB file
torch.save = lambda obj, fh, *a, **k: real_save(obj, Dies(fh, at), *a, **k)
ckpt.save_checkpoint(ckpt.checkpoint_path(run, 2), state)
"""


@pytest.mark.parametrize("trial", range(4))
def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path, trial):
    run = str(tmp_path / "run")
    cfg = pair_config(steps=4, ckpt_every=1, keep_checkpoints=0)
    straight = train(cfg, str(tmp_path / "straight"), _fresh(), PairData(16), collate).losses
    first = train(cfg, run, _fresh(), PairData(16), collate, stop_at=1).losses
    proc = subprocess.run([sys.executable, "-c", _KILLER, run, str(trial)], env=_env(), capture_output=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = os.listdir(os.path.join(run, "checkpoints"))
    assert "step_00000001.pt" in names and "step_00000002.pt" not in names
    assert any(n.startswith(".tmp-") for n in names)  # the killed write's partial file
    resume = ckpt.resolve_resume("latest", run)
    assert resume.endswith("step_00000001.pt")
    second = train(cfg, run, _fresh(seed=123), PairData(16), collate, resume=resume).losses
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp-")]
    assert first + second == straight


# --- item 6: divergence from a huge learning rate is named ----------------------------------

def test_a_huge_learning_rate_stops_with_the_divergence_message(tmp_path):
    from _trainer_helpers import shapesworld_run

    cfg, model, data = shapesworld_run(str(tmp_path / "cache"), "train.lr=1e30", "train.steps=4", "train.ckpt_every=1")
    with pytest.raises(DivergenceError, match=r"at step \d.*Last good checkpoint: .*step_0000000\d.pt"):
        train(cfg, str(tmp_path / "run"), model, data.train, data.collate)
    for path in ckpt.list_checkpoints(str(tmp_path / "run")):
        ckpt.load_training_state(path)  # finite: no diverged state reached the disk


# --- item 7: a torn metrics line ---------------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    with caplog.at_level(logging.WARNING, logger="loupe_core.train"):
        logger = MetricLogger(str(tmp_path), tensorboard=False, resume_step=3)
    assert [r["step"] for r in logger.records] == [1, 2, 3]
    assert "metrics.jsonl:4: dropped" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines) + "\n"


# --- item 9: settings out of range are named ---------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.steps=-3", "train.steps must be >= 0, got -3"),
    ("train.ckpt_every=-1", "train.ckpt_every must be >= 0, got -1"),
    ("train.accum_steps=0", "train.accum_steps must be >= 1"),
    ("train.lr=0", "train.lr must be a finite number > 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.bad_limit=0", "data.bad_limit must be >= 1"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
])
def test_out_of_range_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_config("tiny", [override])
