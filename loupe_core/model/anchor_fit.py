"""Anchor shapes fitted to a dataset's box statistics (YOLOv2's k-means with the distance 1 - IoU).

Boxes are compared by shape only (width, height; both centred at the origin), so the fitted
anchors are the k shapes that best cover the training boxes' shapes; sizes are in cells of the
final patch grid, as ``ModelConfig.anchors``.
"""
from __future__ import annotations

from typing import List

import torch


def shape_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU float[n, k] of centred boxes of shapes wh float[n, 2] and anchors float[k, 2] (w, h > 0)."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
    area = wh[:, 0] * wh[:, 1]
    return inter / (area[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter)


def fit_anchors(wh, k: int, *, iters: int = 100, seed: int = 0) -> List[List[float]]:
    """k anchor shapes [[w, h], ...] (smallest area first) fitted to box shapes wh float[n, 2].

    k-means on 1 - IoU: start from k distinct shapes drawn by k-means++ (seeded), assign each box
    to the anchor of highest IoU, move each anchor to the median shape of its boxes; stops when
    the assignment no longer changes (or after ``iters`` rounds).
    """
    wh = torch.as_tensor(wh, dtype=torch.float64)
    if wh.dim() != 2 or wh.shape[1] != 2 or not bool((wh > 0).all()) or not bool(torch.isfinite(wh).all()):
        raise ValueError(f"wh must be float[n, 2] of finite positive sizes, got shape {list(wh.shape)}")
    distinct = torch.unique(wh, dim=0)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(distinct):
        raise ValueError(f"k must be an int in [1, {len(distinct)}] (the distinct box shapes), got {k!r}")
    generator = torch.Generator().manual_seed(seed)
    centres = distinct[torch.randint(len(distinct), (1,), generator=generator)]
    while len(centres) < k:
        gap = (1.0 - shape_iou(distinct, centres).amax(dim=1)).clamp(min=0) ** 2
        centres = torch.cat([centres, distinct[torch.multinomial(gap, 1, generator=generator)]])
    assign = None
    for _ in range(iters):
        new = shape_iou(wh, centres).argmax(dim=1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        centres = torch.stack([wh[assign == j].median(dim=0).values if bool((assign == j).any()) else centres[j]
                               for j in range(k)])
    order = torch.argsort(centres[:, 0] * centres[:, 1], stable=True)
    return [[float(w), float(h)] for w, h in centres[order]]


def mean_best_iou(wh, anchors) -> float:
    """Mean over boxes wh float[n, 2] of the best shape IoU with ``anchors`` [[w, h], ...]."""
    wh = torch.as_tensor(wh, dtype=torch.float64)
    table = torch.as_tensor([a[:2] for a in anchors], dtype=torch.float64)
    return float(shape_iou(wh, table).amax(dim=1).mean())
