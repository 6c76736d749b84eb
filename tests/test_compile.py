"""``train.compile="towers"``: the towers' dense pass compiled for training forwards.

The trainer-level tests use dynamo's ``aot_eager`` backend (the graph capture, the dynamic
bucket shapes and AOT autograd, without inductor's C++ compilation, which takes a minute on a
2-core CPU); the inductor path itself is checked on one small tower, forward and backward.
"""
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from _trainer_helpers import shapesworld_run
from loupe_core.config import TrainConfig, load_config
from loupe_core.train import checkpoint as ckpt
from loupe_core.train import trainer
from loupe_core.train.trainer import train
from shapley_kernels.token_level import TransformerTower


def _run(tmp_path, mode, monkeypatch, steps=4):
    monkeypatch.setattr(trainer, "_COMPILE_OPTIONS", {"backend": "aot_eager"})
    cfg, objective, data = shapesworld_run(str(tmp_path / "cache"), f"train.steps={steps}", "train.ckpt_every=0",
                                           f"train.compile={mode}")
    result = train(cfg, str(tmp_path / mode), objective, data.train, data.collate)
    return result, ckpt.load_training_state(result.checkpoint)


def test_compiled_towers_train_like_eager_with_the_same_checkpoint(tmp_path, monkeypatch):
    """tiny (hybrid token labels: the towers also run the coalition games, eagerly under no_grad):
    the compiled run's losses are eager's to 1e-4 relative, its checkpoint has the same keys
    (no ``_orig_mod.``) and shapes, and the text tower's varying bucket shapes do not recompile
    every step."""
    torch._dynamo.reset()
    eager, eager_state = _run(tmp_path, "none", monkeypatch)
    before = counters["stats"]["unique_graphs"]
    compiled, compiled_state = _run(tmp_path, "towers", monkeypatch)
    graphs = counters["stats"]["unique_graphs"] - before
    assert 2 <= graphs <= 3, graphs  # image tower, text buckets (+ a bucket without padding)
    assert len(compiled.losses) == len(eager.losses) == 4
    for a, b in zip(eager.losses, compiled.losses):
        assert abs(a - b) <= 1e-4 * abs(a), (eager.losses, compiled.losses)
    assert list(compiled_state["model"]) == list(eager_state["model"])
    assert all(compiled_state["model"][k].shape == v.shape for k, v in eager_state["model"].items())
    assert not any("_orig_mod" in k for k in compiled_state["model"])
    # resuming from it works in either mode
    objective = shapesworld_run(str(tmp_path / "cache"))[1]
    objective.load_state_dict(compiled_state["model"])


def test_bad_compile_values_are_value_errors_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"train\.compile.*\['none', 'towers'\]"):
        load_config("tiny", ["train.compile=all"])
    with pytest.raises(ValueError, match=r"train\.compile_mode"):
        load_config("tiny", ["train.compile_mode=fastest"])
    with pytest.raises(ValueError, match=r"train\.compile must be one of \['none', 'towers'\]"):
        TrainConfig(compile="whole")
    assert load_config("tiny", ["train.compile=towers"]).train.compile == "towers"
    assert load_config("tiny").train.compile == "none"


def test_compile_needs_a_model_with_vit_towers(tmp_path):
    from _trainer_helpers import PairData, PairModel, collate, pair_config

    with pytest.raises(ValueError, match=r"train\.compile='towers'.*PairModel"):
        train(pair_config(compile="towers"), str(tmp_path / "pairs"), PairModel(), PairData(16), collate)
    from loupe_core.model import LoupeModel

    swin = SimpleNamespace(config=SimpleNamespace(image_tower="swin"))  # the check comes before any tower
    with pytest.raises(ValueError, match="vit image tower"):
        LoupeModel.compile_towers(swin)


def test_inductor_dense_pass_matches_eager_forward_and_backward():
    """The real inductor backend on a small tower's packed (padded, dynamic-shape) pass: loss and
    gradients equal to eager's; without grad the eager pass runs."""
    torch.manual_seed(0)
    tower = TransformerTower(dim=16, depth=1, heads=2, max_tokens=8, out_dim=8, norm_first=False,
                             layer_norm_eps=1e-12)
    tokens = torch.randn(6, 8, 16)
    keep = torch.arange(8)[None, :] < torch.tensor([8, 7, 5, 5, 3, 8])[:, None]

    def loss_and_grads():
        tower.zero_grad()
        cls, tok = tower.encode(tokens, keep)
        loss = cls.square().sum() + (tok * torch.linspace(-1, 1, 16)).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    want = loss_and_grads()
    keys = list(tower.state_dict())
    torch._dynamo.reset()
    tower.compile_dense()
    got = loss_and_grads()
    assert list(tower.state_dict()) == keys
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert got[1].keys() == want[1].keys() and len(want[1]) > 10
    for name, w in want[1].items():
        torch.testing.assert_close(got[1][name], w, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert tower._dense_pass() == tower._run
    assert tower._dense_pass() is tower._compiled_run
    tower.compile_dense(disable=True)
    assert tower._dense_pass() == tower._run
