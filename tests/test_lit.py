"""Locked-image tuning (LiT): ``model.image_init`` copies a trained run's image tower, and
``model.lock_image`` keeps it fixed (no gradient, eval mode) while the text side trains."""
import pytest
import torch

from _trainer_helpers import write_tiny_checkpoint
from loupe_core.config import load_config
from loupe_core.objective import LoupeObjective
from loupe_core.objective.loupe_objective import model_state_dict
from loupe_core.pipeline import initialise_image_tower
from loupe_core.train import checkpoint as ckpt
from test_model import make_batch


def test_the_image_tower_comes_from_the_run_and_stays_locked(tmp_path):
    run = write_tiny_checkpoint(tmp_path, step=3)
    source = model_state_dict(ckpt.load_checkpoint(ckpt.resolve_resume(run, None))["model"])
    cfg = load_config("tiny", ["model.text_max_tokens=24", "model.lock_image=true", f"model.image_init={run}"])
    torch.manual_seed(1)                                     # another init than the source's
    objective = LoupeObjective(cfg.model, {"cmc": True})
    draw = torch.get_rng_state()
    initialise_image_tower(objective.model, run)
    assert torch.equal(torch.get_rng_state(), draw)          # loading the source draws nothing
    tower = objective.model.image_tower
    for name, value in tower.state_dict().items():
        assert torch.equal(value, source[f"image_tower.{name}"]), name
    before = {n: p.clone() for n, p in tower.named_parameters()}
    text_before = [p.clone() for p in objective.model.text_tower.parameters()]
    objective.train()
    assert not tower.training and objective.model.text_tower.training
    batch = {k: v[:, :12] if k == "input_ids" or k == "text_mask" else v for k, v in make_batch().items()}
    batch["images"] = torch.randn(4, 3, cfg.model.image_size, cfg.model.image_size)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
    out = objective(batch)
    out.total.backward()
    opt.step()
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in tower.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(text_before, objective.model.text_tower.parameters()))


def test_an_image_tower_of_another_shape_or_a_missing_run_is_a_clear_error(tmp_path):
    run = write_tiny_checkpoint(tmp_path, step=3)
    wider = LoupeObjective(load_config("tiny", ["model.image_dim=48"]).model, {"cmc": True})
    with pytest.raises(ValueError, match="model.image_init .*does not fit"):
        initialise_image_tower(wider.model, run)
    with pytest.raises(ValueError, match="model.image_init"):
        initialise_image_tower(wider.model, str(tmp_path / "missing"))
