"""Fault injection for issue 32 (part A): bad data files, settings, checkpoints and arguments of
the CSV path, the ``loupe`` command and the run files.

Each test stands for one promise of docs/RELIABILITY.md ("Issue 32 (A)"). Anything that hung
before the fix runs in a subprocess (``_isolated``) whose timeout only turns a hang into a
failure; nothing here measures time.
"""
import csv
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from loupe_core.cli import main
from loupe_core.config import load_config
from loupe_core.data import make_csv_loader
from loupe_core.data.images import encode_png
from loupe_core.errors import CheckpointError, ConfigError
# the fault suite's captions, tokenizer fixture, subprocess, kill-mid-write and image helpers
from test_faults import CAPTIONS, _KILLER, _env, _isolated, _png, tok  # noqa: F401 (tok: a fixture)

pytestmark = pytest.mark.faults


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("filepath\ttitle\n")
        f.writelines(f"{image}\t{caption}\n" for image, caption in rows)


# --- N1: images must be regular files under a size limit -------------------------------------

def test_csv_images_that_are_devices_fifos_folders_or_too_large_are_skipped_and_counted(tmp_path, tok):
    (tmp_path / "ok.png").write_bytes(_png(0))
    big = encode_png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "big.png").write_bytes(big)
    os.symlink("/dev/zero", tmp_path / "zero.png")
    os.symlink("/dev/urandom", tmp_path / "urandom.png")
    os.mkfifo(tmp_path / "fifo.png")  # no writer: a plain read would block for ever
    (tmp_path / "folder.png").mkdir()
    _write_csv(tmp_path / "pairs.tsv", [("ok.png", CAPTIONS[0]), ("zero.png", CAPTIONS[1]),
                                        ("urandom.png", CAPTIONS[2]), ("fifo.png", CAPTIONS[0]),
                                        ("folder.png", CAPTIONS[1]), ("big.png", CAPTIONS[2])])
    proc = _isolated(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # an unbounded read fails, not swaps
        from loupe_core.data import Tokenizer, make_csv_loader
        loader = make_csv_loader({str(tmp_path / 'pairs.tsv')!r}, Tokenizer.from_file({tok[1]!r}), batch_size=8,
                                 image_size=8, shuffle=False, max_image_bytes={len(big) - 1})
        keys = [k for b in loader for k in b["keys"]]
        s = loader.epoch_stats
        print(keys, s.seen, s.kept, s.image_not_a_file, s.image_too_large, s.skipped)
    """, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['0:ok.png']", "6", "1", "4", "1", "5"], proc.stdout


def test_data_max_image_bytes_is_a_config_key_that_reaches_the_csv_reader(tmp_path, tok):
    from loupe_core.pipeline import build_data
    from loupe_core.train.distributed import DistContext

    _write_csv(tmp_path / "pairs.tsv", [("a.png", CAPTIONS[0])])
    cfg = load_config("tiny", ["data.dataset=csv", f"data.train_csv={tmp_path / 'pairs.tsv'}",
                               f"data.tokenizer={tok[1]}", 'data.eval_paths={"retrieval": "r.json"}',
                               "data.max_image_bytes=1234", "data.max_caption_chars=77"])
    pairs = build_data(cfg, DistContext()).train.pairs
    assert pairs.max_image_bytes == 1234
    with pytest.raises(ValueError, match=r"data\.max_image_bytes must be >= 1, got 0"):
        load_config("tiny", ["data.max_image_bytes=0"])


# --- N2: an oversized caption is a counted row, not a _csv.Error ------------------------------

def test_a_caption_over_the_field_limit_is_skipped_counted_and_logged(tmp_path, tok, caplog):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    huge = "a red square " * 11_000  # 143 kB: over the csv module's 128 kB field limit
    _write_csv(tmp_path / "pairs.tsv", [("0.png", CAPTIONS[0]), ("1.png", huge), ("2.png", CAPTIONS[2])])
    limit = csv.field_size_limit()
    with caplog.at_level(logging.WARNING, logger="loupe_core.data"):
        loader = make_csv_loader(str(tmp_path / "pairs.tsv"), tok[0], batch_size=8, image_size=8, shuffle=False)
    assert [k for b in loader for k in b["keys"]] == ["0:0.png", "2:2.png"]
    assert loader.epoch_stats.caption_too_long == 1 and loader.epoch_stats.skipped == 1
    assert f"{tmp_path / 'pairs.tsv'}:3: caption of {len(huge)} characters" in caplog.text
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


# --- N3: a locked image tower that nothing initialises ---------------------------------------

def test_lit_without_image_init_is_refused_naming_the_key(tmp_path, capsys):
    from loupe_core.pipeline import pretrain

    with pytest.raises(ConfigError, match=r"model\.image_init must be set when model\.lock_image=true"):
        pretrain(load_config("lit"), str(tmp_path / "run"))
    assert main(["pretrain", "--config", "lit", "--out", str(tmp_path / "run")]) == 2
    assert "model.image_init must be set" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_missing_evaluation_file_stops_the_run_before_training(tmp_path, tok):
    from loupe_core.pipeline import pretrain

    (tmp_path / "0.png").write_bytes(_png(0))
    (tmp_path / "r.json").write_text("{}")  # there (its content is read only when evaluating)
    _write_csv(tmp_path / "pairs.tsv", [("0.png", CAPTIONS[0])])
    common = ["data.dataset=csv", f"data.train_csv={tmp_path / 'pairs.tsv'}", f"data.tokenizer={tok[1]}",
              "train.device=cpu", "model.text_vocab_size=64", 'eval.tasks=["retrieval", "grounding"]']
    cases = [({"retrieval": str(tmp_path / "r.json")}, "eval.tasks has 'grounding' but eval_paths has no 'grounding'"),
             ({"retrieval": str(tmp_path / "typo.json"), "grounding": str(tmp_path / "r.json")},
              "eval.tasks has 'retrieval': its evaluation file .*typo.json' does not exist")]
    for paths, message in cases:
        cfg = load_config("tiny", [*common, f"data.eval_paths={json.dumps(paths)}"])
        with pytest.raises(ValueError, match=message):
            pretrain(cfg, str(tmp_path / "run"))
        assert not (tmp_path / "run" / "checkpoints").exists()


# --- N4: a foreign torch file as a model source -----------------------------------------------

def test_a_foreign_torch_file_names_the_file_and_what_it_lacks(tmp_path, capsys):
    import loupe_core
    from loupe_core.pipeline import initialise_image_tower
    from loupe_core.model import LoupeModel

    foreign = str(tmp_path / "resnet.pt")
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}}, foreign)
    lacks = r"resnet\.pt' is not a checkpoint of this project: it lacks \['model', 'config'\]"
    with pytest.raises(CheckpointError, match=lacks):
        loupe_core.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="model.image_init: .*" + lacks):
        initialise_image_tower(LoupeModel(load_config("tiny").model), foreign)
    assert main(["eval", "--checkpoint", foreign, "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert "resnet.pt" in err and "lacks ['model', 'config']" in err
    half = str(tmp_path / "half.pt")  # the right keys, a config of another program
    torch.save({"model": {}, "config": {"lr": 0.1}}, half)
    with pytest.raises(CheckpointError, match=r"half\.pt': its config is not one of this version"):
        loupe_core.load_checkpoint(half)


# --- N8, N9, N10: arguments and settings ------------------------------------------------------

def test_out_naming_an_existing_file_is_refused_naming_the_flag(tmp_path, capsys):
    from loupe_core.pipeline import pretrain

    taken = tmp_path / "taken"
    taken.write_text("mine")
    for argv in (["pretrain", "--out", str(taken)], ["eval", "--checkpoint", str(tmp_path), "--out", str(taken)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "--out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"run directory .*taken' \(--out\) is a file"):
        pretrain(load_config("tiny"), str(taken))
    assert taken.read_text() == "mine"


def test_a_binary_config_file_is_named(tmp_path, capsys):
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\x80\x02\x93PK\x03\x04" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"config .*weights\.json': not a JSON text file \(byte 0 is not UTF-8\)"):
        load_config(str(binary))
    assert main(["pretrain", "--config", str(binary), "--print-config"]) == 2
    assert "weights.json" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-4", "two"])
def test_eval_batch_size_below_one_is_refused_naming_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--checkpoint", str(tmp_path), "--batch-size", value])
    assert exit_.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.seed=-1", "train.seed must be >= 0, got -1"),
    (f"train.seed={2**32}", f"train.seed must be <= {2**32 - 1}"),
    ("data.seed=-1", "data.seed must be >= 0, got -1"),
])
def test_seeds_out_of_range_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_config("tiny", [override])


# --- friction 2: loupe eval names its own flag ------------------------------------------------

def test_a_checkpoint_that_is_not_there_names_the_flag_given(tmp_path, capsys):
    import loupe_core

    (tmp_path / "empty").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path / "empty"), "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "no checkpoint there" in err and "--resume" not in err
    with pytest.raises(CheckpointError, match=r"^path .*empty': no checkpoint there"):
        loupe_core.load_checkpoint(str(tmp_path / "empty"))


# --- the partial file of a kill during the first checkpoint write ----------------------------

def test_a_resume_after_a_kill_in_the_first_checkpoint_write_removes_the_partial_file(tmp_path):
    from loupe_core.pipeline import resolve_run

    run = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", _KILLER, run, "0"], env=_env(), capture_output=True,
                          timeout=300)  # killed inside the first checkpoint write of a fresh run
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = os.path.join(run, "checkpoints")
    assert [n for n in os.listdir(folder) if n.startswith(".tmp-")]  # only the killed write's partial file
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a writer that still runs keeps its file
        live_tmp = os.path.join(folder, f".tmp-{live.pid}-abcd.pt")
        open(live_tmp, "wb").close()
        for resume in ("latest", run):
            with pytest.raises(CheckpointError, match="no checkpoint"):
                resolve_run("tiny", [], run, resume)
        assert os.listdir(folder) == [os.path.basename(live_tmp)]
    finally:
        live.kill()
        live.wait()
    with pytest.raises(CheckpointError, match=r"removed 1 partial checkpoint write.*start the run afresh"):
        resolve_run("tiny", [], run, "latest")
    assert os.listdir(folder) == []
