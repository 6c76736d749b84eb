"""Run configs (named configs, typed dotted overrides) and the ``loupe`` command end to end."""
import json
import math
import os
import subprocess
import sys

import pytest

from loupe_core.config import RunConfig, apply_overrides, list_configs, load_config, save_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE4 = ["table4_row1_backbone", "table4_row2_tsa", "table4_row3_tsa_fsa", "table4_row4_unsil",
          "table4_row5_ours"]


def test_every_named_config_loads():
    names = list_configs()
    assert {"default", "paper", "tiny", "tiny_default", "swin_l", *TABLE4} <= set(names)
    for name in names:
        assert load_config(name).name == name


def test_paper_is_full_loupe_with_exact_semantic_labels():
    cfg = load_config("paper")
    loss = cfg.loss
    assert (loss.cmc, loss.tsa, loss.fsa, loss.unsil) == (True, True, True, True)
    assert loss.semantic_source == "exact" and loss.token_source == "hybrid" and loss.token_game == "encoder"
    assert cfg.data.dataset == "shapesworld"
    t = cfg.train
    assert (t.weight_decay, tuple(t.betas), t.base_momentum, t.max_momentum) == (0.01, (0.9, 0.999), 0.85, 0.95)


def test_default_is_the_project_recipe_on_the_paper_budget():
    default, paper = load_config("default").to_dict(), load_config("paper").to_dict()
    assert default["data"] == paper["data"] and default["train"] == paper["train"]
    loss = default["loss"]
    assert (loss["cmc"], loss["tsa"], loss["fsa"], loss["unsil"]) == (True, True, False, False)
    assert (loss["token_game"], loss["token_target"], loss["token_candidates"]) == ("alignment", "shapley_iou", "all")
    assert loss["fine_contrast"] > 0 and default["model"]["ground_score"] == "shapley"


GROUNDING_FIELDS = {"region_head", "ground_query", "ground_score", "ground_top_k", "ground_prior"}


def test_table4_rows_share_one_budget_and_differ_only_in_the_losses():
    rows = [load_config(name).to_dict() for name in TABLE4]
    for row in rows[1:]:
        for section in ("data", "train"):
            assert row[section] == rows[0][section], section
    for row in rows[1:4]:
        assert row["model"] == rows[0]["model"]
    differs = {key for key, value in rows[4]["model"].items() if rows[0]["model"][key] != value}
    assert differs <= GROUNDING_FIELDS, differs   # row 5: same encoders, its own head and grounding score
    losses = [r["loss"] for r in rows]
    assert [(d["tsa"], d["fsa"], d["unsil"]) for d in losses] == [
        (False, False, False), (True, False, False), (True, True, False), (True, True, True), (True, False, False)]
    assert losses[2]["token_source"] == losses[2]["semantic_source"] == "sampling"
    assert losses[3]["token_source"] == losses[3]["semantic_source"] == "hybrid"
    assert all(d["token_game"] == "encoder" and d["token_target"] == "interaction" for d in losses[:4])
    assert losses[4]["token_game"] == "alignment" and losses[4]["fine_contrast"] > 0


def test_overrides_are_type_checked():
    cfg = load_config("tiny", ["train.steps=7", "train.lr=1e-3", "loss.fsa=false", "train.betas=[0.8,0.9]",
                               "train.schedule=constant", "data.root=/tmp/x", "model.anchors=[[1,1],[2,3]]",
                               "train.weight_decay=0"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.loss.fsa is False
    assert cfg.train.betas == (0.8, 0.9) and cfg.train.schedule == "constant" and cfg.data.root == "/tmp/x"
    assert cfg.model.anchors == [[1.0, 1.0], [2.0, 3.0]] and cfg.train.weight_decay == 0.0
    bad = {"train.steps=1.5": "train.steps", "train.steps=abc": "train.steps", "loss.fsa=maybe": "loss.fsa",
           "train.betas=[0.9]": "train.betas", "train.schedule=linear": "train.schedule",
           "train.lr=true": "train.lr", "model.image_dim=[1]": "model.image_dim"}
    for text, key in bad.items():
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_config("tiny", [text])


def test_unknown_keys_are_named():
    for text in ("train.stepz=3", "optim.lr=1", "model.depth=2"):
        with pytest.raises(ValueError, match=f"unknown config key '{text.split('=')[0]}'"):
            load_config("tiny", [text])
    with pytest.raises(ValueError, match="expected key=value"):
        load_config("tiny", ["train.steps"])
    with pytest.raises(ValueError, match="is a section"):
        load_config("tiny", ["train=3"])


def test_model_section_validation_reports_the_section():
    with pytest.raises(ValueError, match="model"):
        load_config("tiny", ["model.image_size=30"])  # not a multiple of the patch size


def test_json_path_extends_and_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"extends": "tiny", "train": {"steps": 9}}))
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.train.steps == 9 and cfg.train.batch_size == load_config("tiny").train.batch_size
    out = tmp_path / "resolved.json"
    save_config(cfg, str(out))
    assert load_config(str(out)).to_dict() == cfg.to_dict()
    assert RunConfig.from_dict(json.loads(out.read_text())).to_dict() == cfg.to_dict()
    (tmp_path / "typo.json").write_text(json.dumps({"train": {"setps": 1}}))
    with pytest.raises(ValueError, match="unknown config key 'train.setps'"):
        load_config(str(tmp_path / "typo.json"))
    with pytest.raises(ValueError, match="no such file or named config"):
        load_config("nonexistent")
    assert apply_overrides(cfg, []).to_dict() == cfg.to_dict()


def _loupe(*args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "loupe_core.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_rejects_a_bad_override_naming_it(tmp_path):
    proc = _loupe("pretrain", "--config", "tiny", "train.stepz=3", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown config key 'train.stepz'" in proc.stderr


def test_cli_pretrain_tiny_end_to_end_with_resume(tmp_path):
    """`loupe pretrain --config tiny`, cut after one step, resumed with `--resume latest`."""
    out = tmp_path / "run"
    common = ["--config", "tiny", "--out", str(out), f"data.root={tmp_path / 'cache'}", "train.steps=2"]
    first = _loupe("pretrain", *common, "--stop-at", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "checkpoint:" in first.stdout and (out / "checkpoints" / "step_00000001.pt").exists()
    second = _loupe("pretrain", *common, "--resume", "latest", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["metrics"], summary
    assert all(math.isfinite(v) for v in summary["metrics"].values())
    assert (out / "checkpoints" / "step_00000002.pt").exists() and (out / "config.json").exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2]
    for name in summary["metrics"]:
        assert name in second.stdout
