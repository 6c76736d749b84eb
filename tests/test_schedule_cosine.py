"""Cosine schedule with linear warm-up against PyTorch's own LinearLR + CosineAnnealingLR chain."""
import pytest
import torch

from loupe_core.config import TrainConfig
from loupe_core.train.schedule import build_scheduler


@pytest.mark.parametrize("total,pct", [(40, 0.1), (7, 0.3)])
def test_cosine_warmup_matches_torch_chain(total, pct):
    cfg = TrainConfig(schedule="cosine", lr=1e-3, pct_start=pct)
    warmup = max(1, round(pct * total))
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ours = build_scheduler(ours_opt, cfg, total)
    ref = torch.optim.lr_scheduler.SequentialLR(ref_opt, [
        torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total - warmup, eta_min=0.0)],
        milestones=[warmup])
    lrs = []
    for _ in range(total):
        lrs.append(ours_opt.param_groups[0]["lr"])
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-6, abs=1e-12)
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()
    assert max(lrs) == pytest.approx(cfg.lr) and lrs[-1] < 0.1 * cfg.lr and lrs[0] < cfg.lr
