"""Issue 32 (part A), what a newcomer expects of the command and the run files: ``loupe eval``
on a CSV run's own data, ``loupe data tokenizer``, a ``loupe --help`` / ``list_models()`` that
load no torch, ``loupe --version``, the final evaluation in TensorBoard without duplicate rows,
checkpoints with the run files' mode, the summary's wording, the licence, and progress lines
where stderr is not a terminal. (The bad-input cases are in tests/test_faults_cli_data.py.)"""
import csv
import json
import os
import stat
import subprocess
import sys
import tomllib

import pytest

from loupe_core.cli import main
from loupe_core.config import RunConfig, load_config, list_configs
from loupe_core.data import ShapesWorldPaths, Tokenizer
from loupe_core.data.shards import write_shard
from loupe_core.eval import evaluate
from loupe_core.pipeline import load_run, resolve_data
from loupe_core.train import checkpoint as ckpt

from _trainer_helpers import tiny_model, write_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- friction 1: loupe eval on a CSV run takes the run's own evaluation files -----------------

def test_eval_of_a_csv_run_defaults_to_its_eval_paths_and_tokenizer(tmp_path, capsys):
    shapes_run = write_tiny_checkpoint(tmp_path, 2)
    objective, cfg, _, _ = load_run(shapes_run, "cpu")
    _, files = resolve_data(cfg, None, "heldout")
    tokenizer_file = ShapesWorldPaths.at(os.path.dirname(os.path.dirname(files["retrieval"]))).tokenizer
    d = cfg.to_dict()
    d["data"].update(dataset="csv", train_csv=str(tmp_path / "not-read.tsv"), tokenizer=tokenizer_file,
                     eval_paths={"retrieval": files["retrieval"]})
    csv_run = str(tmp_path / "csv_run")
    ckpt.save_checkpoint(ckpt.checkpoint_path(csv_run, 2), {"model": objective.state_dict(), "config": d, "step": 2})
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", csv_run, "--task", "retrieval", "--out", str(out), "--no-pictures"]) == 0
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    tokenizer = Tokenizer.from_file(tokenizer_file, max_length=min(cfg.model.text_max_tokens, 60))
    assert saved == evaluate(objective.model, {"retrieval": files["retrieval"]}, tokenizer, tasks=("retrieval",))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", csv_run, "--split", "val", "--no-pictures"]) == 2
    assert "--split 'val': splits are ShapesWorld's" in capsys.readouterr().err


# --- friction 4: a tokenizer for one's own captions -------------------------------------------

CAPTIONS = ["a dog on a red sofa", "two cats asleep", "the red sofa"]


def _assert_covers(path, captions, vocab_size):
    tok = Tokenizer.from_file(str(path))
    assert tok.vocab_size <= vocab_size
    for caption in captions:
        for word in caption.split():  # every word is one whole-word token, none unknown
            ids, _ = tok.encode(word)
            assert [tok.token(i) for i in ids] == [word]


def test_data_tokenizer_builds_a_vocabulary_from_a_csv_or_shards(tmp_path, capsys):
    rows = "".join(f"img{i}.png\t{c}\n" for i, c in enumerate(CAPTIONS))
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n" + rows)
    assert main(["data", "tokenizer", "--csv", str(tmp_path / "pairs.tsv"), "--out", str(tmp_path / "a" / "t.json"),
                 "--vocab-size", "200"]) == 0
    assert "from 3 captions" in capsys.readouterr().out
    _assert_covers(tmp_path / "a" / "t.json", CAPTIONS, 200)
    write_shard(str(tmp_path / "s-0.tar"), [(f"k{i}", {"txt": c.encode(), "png": b""}) for i, c in enumerate(CAPTIONS)])
    assert main(["data", "tokenizer", "--shards", str(tmp_path / "s-{0..0}.tar"), "--out",
                 str(tmp_path / "b.json"), "--vocab-size", "200"]) == 0
    _assert_covers(tmp_path / "b.json", CAPTIONS, 200)
    assert main(["data", "tokenizer", "--csv", str(tmp_path / "pairs.tsv"), "--caption-key", "nope",
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "caption_key 'nope' is not a column" in capsys.readouterr().err


# --- friction 7: nothing heavy for --help, --version and list_models() ------------------------

def test_help_version_and_list_models_load_no_torch():
    code = ("import sys, loupe_core\n"
            "names = loupe_core.list_models()\n"
            "from loupe_core.cli import main\n"
            "for argv in (['--help'], ['pretrain', '--help'], ['eval', '--help'], ['data', 'tokenizer', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(names, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'tokenizers'}),"
            " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"{list_configs()} []"
    version = subprocess.run([sys.executable, "-m", "loupe_core.cli", "--version"], env=_env(), capture_output=True,
                             text=True, timeout=120)
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        assert version.stdout.strip() == f"loupe {tomllib.load(fh)['project']['version']}"


# --- friction 9 and 10: the final evaluation's records, checkpoint mode, summary wording ------

def _scalar_tags(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for name in os.listdir(tb_dir):
        acc = EventAccumulator(os.path.join(tb_dir, name))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_final_eval_reaches_tensorboard_once_and_checkpoints_have_the_run_files_mode(tmp_path):
    from loupe_core.pipeline import pretrain

    cfg = load_config("tiny", [f"data.root={tmp_path / 'data'}", "data.train_size=8", "data.eval_size=4",
                               "train.steps=2", "train.batch_size=4", "train.device=cpu", "train.progress=false",
                               "model.text_max_tokens=24", 'eval.tasks=["retrieval"]', "eval.report=false"])
    run = str(tmp_path / "run")
    old = os.umask(0o022)
    try:
        first = pretrain(cfg, run, echo=lambda *a: None)
        again = pretrain(cfg, run, resume=first["checkpoint"], echo=lambda *a: None)  # finished: evaluated again
    finally:
        os.umask(old)
    assert again["steps"] == 2 and again["metrics"] == first["metrics"]
    assert "eval/retrieval/i2t_r1" in _scalar_tags(os.path.join(run, "tb"))
    history = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in history if "eval/retrieval/i2t_r1" in r] == [2]
    with open(os.path.join(run, "metrics.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(history) and sum(bool(r["eval/retrieval/i2t_r1"]) for r in rows) == 1
    modes = {name: stat.S_IMODE(os.stat(path).st_mode) for name, path in
             (("checkpoint", first["checkpoint"]), ("config", os.path.join(run, "config.json")),
              ("metrics", os.path.join(run, "metrics.jsonl")))}
    assert modes == {"checkpoint": 0o644, "config": 0o644, "metrics": 0o644}
    assert first["eval_on"] == "ShapesWorld test split (held out from training)"


def test_the_summary_counts_the_evaluation_images_that_are_training_images(tmp_path, caplog):
    from loupe_core.pipeline import _eval_on, build_data
    from loupe_core.train.distributed import DistContext

    (tmp_path / "eval" / "images").mkdir(parents=True)
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\na.png\ta red square\n")
    os.symlink(tmp_path / "a.png", tmp_path / "eval" / "images" / "same.png")  # a training image, linked
    (tmp_path / "eval" / "images" / "other.png").write_bytes(b"png")
    for name, files in (("both.json", ["same.png", "other.png"]), ("other.json", ["other.png"])):
        (tmp_path / "eval" / name).write_text(json.dumps({"images": [{"filename": f} for f in files]}))
    tok = tmp_path / "tok.json"
    Tokenizer.train(["a red square"]).save(str(tok))

    def eval_on(eval_file):
        cfg = load_config("tiny", ["data.dataset=csv", f"data.train_csv={tmp_path / 'pairs.tsv'}",
                                   f"data.tokenizer={tok}", f'data.eval_paths={{"retrieval": "{eval_file}"}}'])
        return _eval_on(cfg, build_data(cfg, DistContext()))

    with caplog.at_level("WARNING", logger="loupe_core.pipeline"):
        assert eval_on(tmp_path / "eval" / "both.json") == ("data.eval_paths (1 of its 2 images are training "
                                                            "images of data.train_csv)")
    assert "the evaluation is not held out" in caplog.text
    assert eval_on(tmp_path / "eval" / "other.json") == ("data.eval_paths (none of its 1 images is a training "
                                                         "image of data.train_csv)")
    shards = RunConfig.from_dict({"data": {"dataset": "webdataset", "train_shards": "s.tar", "eval_paths": {}}})
    assert _eval_on(shards) == "data.eval_paths (not checked against the training data)"


def test_a_shapesworld_run_names_every_file_its_tasks_read(tmp_path):
    """The files a ShapesWorld run is evaluated on hold the linear probe's and the few-shot task's
    pairs too (``eval.tasks`` may name them), as ``loupe eval`` gives them."""
    from loupe_core.eval import TASKS
    from loupe_core.eval.splits import check_eval_files
    from loupe_core.pipeline import build_data
    from loupe_core.train.distributed import DistContext

    cfg = load_config("tiny", [f"data.root={tmp_path}", "data.train_size=8", "data.eval_size=4"])
    run_files = build_data(cfg, DistContext()).eval_paths
    check_eval_files(run_files, TASKS)
    assert run_files == resolve_data(cfg, None, None)[1]  # what loupe eval scores by default


# --- friction 11: the licence ------------------------------------------------------------------

def test_the_licence_is_apache_2_in_the_file_and_the_metadata():
    text = open(os.path.join(REPO, "LICENSE")).read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


# --- friction 13: progress lines where stderr is not a terminal ------------------------------

def test_progress_prints_lines_where_stderr_is_not_a_terminal(monkeypatch, capsys):
    from loupe_core import progress as progress_module
    from loupe_core.eval.encode import batches
    from loupe_core.train.trainer import _progress

    monkeypatch.setattr(progress_module, "LINE_INTERVAL", 0.0)  # a line at every update
    assert [s.start for s in batches(10, 4, progress=None, desc="images")] == [0, 4, 8]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["images: 1/3 it (33%)", "images: 2/3 it (67%)",
                                                       "images: 3/3 it (100%)"]
    list(batches(10, 4, progress=False, desc="quiet"))
    bar = _progress(True, 5, 2)
    bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pretrain: 3/5 step (60%), 00:00 elapsed, ~00:00 left")
    assert err[-1].startswith("pretrain: 3/5 step (60%)") and err[-1].endswith("loss=0.1234")
    monkeypatch.setattr(progress_module, "LINE_INTERVAL", 3600.0)
    list(batches(10, 4, progress=None, desc="fast"))  # under the interval: no line at all
    assert capsys.readouterr().err == ""


def test_the_few_shot_task_reports_its_support_draws(monkeypatch, capsys):
    """The few-shot task's long part, the CoOp fits of its support draws, reports progress too."""
    from loupe_core import progress as progress_module
    from loupe_core.eval.fewshot import evaluate_fewshot
    from test_fewshot import synthetic_split

    tokenizer = Tokenizer.train(["a photo of a circle.", "a picture of a red triangle.", "a square."])
    model = tiny_model(tokenizer.vocab_size, patch_size=16, text_max_tokens=16, embed_dim=8, top_k=2)
    monkeypatch.setattr(progress_module, "LINE_INTERVAL", 0.0)
    evaluate_fewshot(model, synthetic_split(9, seed=0), synthetic_split(6, seed=1), tokenizer, seeds=(0, 1),
                     coop_steps=1, batch_size=9)
    draws = [line.split(",")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("few-shot")]
    assert draws == [f"few-shot support draws: {n}/4 draw ({25 * n}%)" for n in (1, 2, 3, 4)]
