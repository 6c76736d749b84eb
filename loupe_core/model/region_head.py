"""Region head: YOLOv3-style anchor candidates with one confidence logit each (spec section 3).

A candidate is a (cell, anchor) pair of the final patch grid. An anchor is [width, height] in
cells, or [width, height, dx, dy] with its centre shifted by (dx, dy) cells (|dx|, |dy| <= 0.5)
from the cell's centre (sub-cell placement, ``with_offsets``). Its anchor box is that shape
around that centre, clipped to the image. Its region R is the set of cells whose centres fall
in the (half-open) anchor box; R always holds the candidate's own cell. The candidate's box
(``boxes="cells"``, spec section 9 **[choice]**: one definition for labels, pooling and IoU) is
the rectangle of R's cells (for an even-sized anchor R takes the centre cell and its upper/left
side, and the box follows R, not the centred anchor box); with ``boxes="anchors"`` (issue 31) it
is the anchor box itself, in continuous pixels, while R (pooling, labels) stays the cells.
Candidates are indexed ``cell * A + anchor`` with cells in row-major order. The geometry
depends only on the grid, so it is computed once per (grid, cell size, device, dtype).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


BOX_MODES = ("cells", "anchors")


class Geometry(NamedTuple):
    """Static candidate geometry of one grid.

    boxes: float[P, 4] xyxy pixels (P = gh * gw * A); masks: bool[P, gh * gw] cells of each
    region; iou: float[P, P] pairwise box IoU (for NMS).
    """

    boxes: torch.Tensor
    masks: torch.Tensor
    iou: torch.Tensor


def cell_centres(grid: Tuple[int, int], cell: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres float[gh * gw, 2] (x, y) of a grid of square cells of ``cell`` pixels."""
    gh, gw = grid
    ys = (torch.arange(gh, device=device, dtype=dtype) + 0.5) * cell
    xs = (torch.arange(gw, device=device, dtype=dtype) + 0.5) * cell
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def anchor_boxes(grid: Tuple[int, int], cell: float, anchors: Sequence[Sequence[float]], *,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """Boxes float[gh * gw * A, 4] xyxy pixels: anchor [w, h] (or [w, h, dx, dy]) in cells, centred
    on each cell's centre (shifted by (dx, dy) cells), clipped to the image."""
    table = torch.as_tensor([list(a) + [0.0] * (4 - len(a)) for a in anchors], device=device, dtype=dtype)
    centres = cell_centres(grid, cell, device=device, dtype=dtype)[:, None, :] + table[None, :, 2:] * cell
    half = table[:, :2] * (cell / 2.0)
    lo = (centres - half[None]).reshape(-1, 2)
    hi = (centres + half[None]).reshape(-1, 2)
    limit = torch.tensor([grid[1] * cell, grid[0] * cell], device=device, dtype=dtype)
    return torch.cat([lo.clamp(min=0.0), torch.minimum(hi, limit)], dim=1)


def with_offsets(anchors: Sequence[Sequence[float]], per_side: int) -> List[List[float]]:
    """Each [w, h] anchor at ``per_side`` x ``per_side`` sub-cell centres: [w, h, dx, dy] with dx, dy
    at the centres of ``per_side`` equal parts of the cell, (i + 0.5) / per_side - 0.5 (1: [w, h, 0, 0])."""
    if isinstance(per_side, bool) or not isinstance(per_side, int) or per_side < 1:
        raise ValueError(f"per_side must be an int >= 1, got {per_side!r}")
    steps = [(i + 0.5) / per_side - 0.5 for i in range(per_side)]
    return [[float(a[0]), float(a[1]), dx, dy] for a in anchors for dy in steps for dx in steps]


def cells_in_boxes(boxes: torch.Tensor, grid: Tuple[int, int], cell: float) -> torch.Tensor:
    """bool[..., gh * gw]: which cell centres of ``grid`` lie in each box float[..., 4].

    Boxes are half-open, [x0, x1) x [y0, y1), so a box of w x h cells aligned to the grid holds
    exactly w x h centres (an even-sized anchor takes the centre cell and its upper/left side).
    """
    c = cell_centres(grid, cell, device=boxes.device, dtype=boxes.dtype)
    x, y = c[:, 0], c[:, 1]
    b = boxes[..., None, :]
    return (x >= b[..., 0]) & (x < b[..., 2]) & (y >= b[..., 1]) & (y < b[..., 3])


def cell_rectangles(masks: torch.Tensor, grid: Tuple[int, int], cell: float) -> torch.Tensor:
    """Boxes float[P, 4] xyxy pixels: the bounding rectangle of each region's cells, masks
    bool[P, gh * gw] (each region non-empty; its cells form a rectangle for anchor candidates)."""
    gh, gw = grid
    cells = masks.view(-1, gh, gw)
    rows, cols = cells.any(dim=2), cells.any(dim=1)
    index_r = torch.arange(gh, device=masks.device)
    index_c = torch.arange(gw, device=masks.device)
    big = max(gh, gw)
    y0 = torch.where(rows, index_r, big).amin(dim=1)
    y1 = torch.where(rows, index_r, -1).amax(dim=1) + 1
    x0 = torch.where(cols, index_c, big).amin(dim=1)
    x1 = torch.where(cols, index_c, -1).amax(dim=1) + 1
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32) * cell


def dilate_cells(masks: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """bool[..., gh * gw]: each cell set of masks bool[..., gh * gw] plus its 8 neighbours."""
    gh, gw = grid
    flat = masks.reshape(-1, 1, gh, gw).to(torch.float32)
    grown = F.max_pool2d(flat, kernel_size=3, stride=1, padding=1) > 0
    return grown.reshape(masks.shape)


def refine_boxes(boxes: torch.Tensor, weights: torch.Tensor, grid: Tuple[int, int], cell: float) -> torch.Tensor:
    """Boxes float[..., 4] moved (same width and height) to centre on the weighted mean of the
    cell centres, weights float[..., gh * gw] >= 0 per cell; a box whose weights sum to 0 stays.
    The result is clipped to the image (gw * cell x gh * cell pixels)."""
    centres = cell_centres(grid, cell, device=boxes.device, dtype=boxes.dtype)  # [N, 2]
    w = weights.to(boxes.dtype)
    total = w.sum(dim=-1, keepdim=True)
    centre = (w @ centres) / total.clamp(min=torch.finfo(boxes.dtype).tiny)
    half = (boxes[..., 2:] - boxes[..., :2]) / 2
    moved = torch.cat([centre - half, centre + half], dim=-1)
    out = torch.where(total > 0, moved, boxes)
    limit = torch.tensor([grid[1] * cell, grid[0] * cell] * 2, device=boxes.device, dtype=boxes.dtype)
    return torch.minimum(out.clamp(min=0), limit)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU float[P, Q] of xyxy boxes a float[P, 4] and b float[Q, 4]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def greedy_nms(scores: torch.Tensor, iou: torch.Tensor, top_k: int, threshold: float) -> torch.Tensor:
    """Indices LongTensor[min(top_k, P)] of the best boxes after greedy NMS.

    scores float[P], iou float[P, P]. Where fewer than top_k boxes survive suppression, the
    best suppressed ones fill the list, so every image gets the same number of regions.
    """
    device = scores.device
    scores, overlaps = scores.detach().cpu(), (iou > threshold).cpu()  # a short sequential loop: on the host
    order = torch.argsort(scores, descending=True, stable=True)
    k = min(top_k, scores.numel())
    suppressed = torch.zeros_like(scores, dtype=torch.bool)
    kept: List[int] = []
    for idx in order.tolist():
        if not suppressed[idx]:
            kept.append(idx)
            if len(kept) == k:
                break
            suppressed |= overlaps[idx]
    if len(kept) < k:
        chosen = set(kept)
        kept += [i for i in order.tolist() if i not in chosen][: k - len(kept)]
    return torch.tensor(kept, dtype=torch.long, device=device)


class RegionHead(nn.Module):
    """Confidence logits float[B, N * A] from the final patch embeddings float[B, N, d].

    ``kind="mlp"``: per cell LayerNorm, Linear, GELU, Linear (A logits). ``kind="conv"``: the
    hidden layer is a 3 x 3 convolution over the patch grid (zero padding), so a cell's
    confidences see its neighbours: whether a box of an anchor's shape fits an object depends
    on where the object ends, which one cell's embedding need not hold.
    ``select(logits, geometry, top_k, num_random, nms_iou)`` picks per image the top_k candidates
    after NMS and ``num_random`` (cell, anchor) pairs drawn uniformly from the rest (contrast
    candidates, spec section 3 **[choice]**), using torch's global generator.
    """

    def __init__(self, embed_dim: int, anchors: Sequence[Sequence[float]], kind: str = "mlp", boxes: str = "cells"):
        super().__init__()
        if kind not in ("mlp", "conv"):
            raise ValueError(f"kind must be 'mlp' or 'conv', got {kind!r}")
        if boxes not in BOX_MODES:
            raise ValueError(f"boxes must be one of {list(BOX_MODES)}, got {boxes!r}")
        self.anchors = [list(a) for a in anchors]
        self.kind = kind
        self.boxes = boxes
        self.norm = nn.LayerNorm(embed_dim)
        self.hidden = (nn.Linear(embed_dim, embed_dim) if kind == "mlp"
                       else nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1))
        self.out = nn.Linear(embed_dim, len(self.anchors))
        self._cache = {}

    def forward(self, patch_emb: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """patch_emb float[B, N, d] (row-major over ``grid`` (gh, gw), N = gh * gw) -> logits float[B, N * A]."""
        x = self.norm(patch_emb)
        if self.kind == "conv":
            B, N, d = x.shape
            x = self.hidden(x.transpose(1, 2).reshape(B, d, grid[0], grid[1])).flatten(2).transpose(1, 2)
        else:
            x = self.hidden(x)
        return self.out(F.gelu(x)).flatten(1)

    def geometry(self, grid: Tuple[int, int], cell: float, device, dtype) -> Geometry:
        """The candidates' boxes (their cells' rectangles, or the anchor boxes: ``boxes``), cell masks
        and IoU for this grid (cached)."""
        key = (tuple(grid), float(cell), str(device), dtype)
        if key not in self._cache:
            anchor = anchor_boxes(grid, cell, self.anchors, device=device, dtype=dtype)
            masks = cells_in_boxes(anchor, grid, cell)
            centre = torch.arange(grid[0] * grid[1], device=device).repeat_interleave(len(self.anchors))
            masks[torch.arange(masks.shape[0], device=device), centre] = True  # always the centre cell
            boxes = cell_rectangles(masks, grid, cell).to(dtype) if self.boxes == "cells" else anchor
            self._cache[key] = Geometry(boxes, masks, box_iou(boxes, boxes))
        return self._cache[key]

    @torch.no_grad()
    def select(self, logits: torch.Tensor, geometry: Geometry, top_k: int, num_random: int,
               nms_iou: float, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """LongTensor[B, K + R] candidate indices: K = min(top_k, P) after NMS, then R random others.

        NMS runs on the host (a short sequential loop); the R contrast candidates are the R largest
        of uniform noise over the candidates not in the top K (uniform without replacement): noise
        float[B, P] of U(0, 1) draws, by default from torch's generator.
        """
        B, P = logits.shape
        scores, iou = logits.detach().cpu(), geometry.iou.cpu()
        top = torch.stack([greedy_nms(scores[b], iou, top_k, nms_iou) for b in range(B)])
        noise = (torch.rand(B, P) if noise is None else noise.detach().cpu().clone()).scatter_(1, top, -1.0)
        extra = noise.topk(min(num_random, P - top.shape[1]), dim=1).indices
        return torch.cat([top, extra], dim=1).to(logits.device)
