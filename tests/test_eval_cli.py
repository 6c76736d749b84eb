"""``loupe eval`` on a checkpoint written in the trainer's format (loupe_core.train.checkpoint)."""
import json
import os

import pytest

from loupe_core.cli import main
from loupe_core.commands.eval import format_table
from loupe_core.eval import evaluate
from loupe_core.pipeline import load_run, resolve_data

from _trainer_helpers import write_tiny_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("cli"), 2)


def test_eval_command_prints_table_and_writes_metrics(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", run_dir, "--task", "retrieval", "grounding", "--out", str(out),
                 "--batch-size", "3", "--no-pictures"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["step"] == 2 and saved["tasks"] == ["retrieval", "grounding"]
    printed = capsys.readouterr().out
    assert format_table(saved["metrics"]) in printed
    # the same numbers as evaluate() on the reloaded model and the run's own data
    objective, cfg, _, _ = load_run(run_dir, "cpu")
    tokenizer, files = resolve_data(cfg, None, "heldout")
    assert saved["metrics"] == evaluate(objective.model, files, tokenizer, tasks=("retrieval", "grounding"), batch_size=5)


def test_eval_command_data_json_and_errors(run_dir, tmp_path, capsys):
    _, cfg, _, _ = load_run(run_dir, "cpu")
    _, files = resolve_data(cfg, None, "heldout")
    spec = tmp_path / "files.json"
    spec.write_text(json.dumps({"retrieval": os.path.relpath(files["retrieval"], tmp_path)}))
    assert main(["eval", "--checkpoint", run_dir, "--task", "retrieval", "--data", str(spec),
                 "--out", str(tmp_path / "o"), "--no-pictures"]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--no-pictures"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", run_dir, "--task", "detection", "--data", str(spec), "--no-pictures"]) == 2
    assert "no 'detection' file" in capsys.readouterr().err
