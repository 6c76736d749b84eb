"""Optimiser and learning-rate schedule of spec section 6 (Table 5).

AdamW (lr 2e-4, weight decay 0.01, betas (0.9, 0.999)) with OneCycle, cycling beta1 between
0.85 and 0.95; every value comes from ``TrainConfig``. Weight decay applies to matrices only:
biases, norm gains and logit scales (parameters with fewer than 2 dimensions) are not decayed,
as in OpenCLIP.
"""
from __future__ import annotations

import functools
import math

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; ``cfg`` is a ``TrainConfig``."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """lr / peak lr at optimiser step ``step``: linear warm-up over ``warmup_steps`` steps (from
    1 / warmup_steps up to 1), then cosine decay to 0 at ``total_steps`` (OpenCLIP's schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    """OneCycleLR over ``total_steps`` optimiser steps (``schedule="onecycle"``), cosine decay after
    a linear warm-up over the first ``pct_start`` share of the steps (``"cosine"``), or a constant lr.

    Very short runs: the warm-up share is raised to at least 1.5 steps (OneCycleLR cannot take a
    phase shorter than that); a one-step run uses the constant ``lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if cfg.schedule == "constant" or total_steps == 1:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.schedule == "cosine":
        warmup = max(1, round(cfg.pct_start * total_steps))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(cosine_warmup_factor, total_steps=total_steps, warmup_steps=warmup))
    # OneCycleLR divides by the length of each phase: keep both phases at least half a step long
    pct_start = min(max(cfg.pct_start, 1.5 / total_steps), 1.0 - 0.5 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=cfg.cycle_momentum,
        base_momentum=cfg.base_momentum,
        max_momentum=cfg.max_momentum,
    )
