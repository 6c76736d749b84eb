"""Vectorised rasterisation of ShapesWorld scenes (numpy only).

Objects are given as flat arrays (one entry per object); every object of a chunk of scenes is
rasterised at once on the pixel-centre grid, then painted in order (a later object covers an
earlier one). Boxes are the tight pixel bounds of each object's own mask, in pixels, xyxy with
``x2 = last column + 1`` and ``y2 = last row + 1`` (so ``w = x2 - x1``), before occlusion.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 205),
    "orange": (245, 140, 30),
    "pink": (250, 130, 200),
    "white": (238, 238, 238),
}
COLOUR_NAMES = tuple(COLOURS)
COLOUR_RGB = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.uint8)
STRIPE_SHADE = 0.45  # the second stripe colour is the object's colour times this


def _star(u, v, inner=0.45, points=5):
    """Regular five-pointed star, outer radius 1, one point up."""
    theta = np.arctan2(u, -v)
    sector = 2 * np.pi / points
    alpha = np.abs(np.mod(theta, sector) - sector / 2)  # angle from the nearest inner vertex
    alpha = sector / 2 - alpha  # angle from the nearest outer vertex, in [0, pi/5]
    rho = np.hypot(u, v)
    px, py = rho * np.cos(alpha), rho * np.sin(alpha)
    qx, qy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    return (qx - 1.0) * py - qy * (px - 1.0) >= 0


def _heart(u, v):
    x, y = 1.15 * u, -1.15 * v + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


_SHAPE_FNS = (
    lambda u, v: u * u + v * v <= 0.9 ** 2,
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    lambda u, v: (v <= 0.8) & (v >= -1.0 + 1.8 * np.abs(u)),
    _star,
    lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    lambda u, v: ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95)),
    _heart,
)
assert len(_SHAPE_FNS) == len(SHAPES)


def shape_masks(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray,
                x0: np.ndarray, y0: np.ndarray, crop: int) -> np.ndarray:
    """bool ``[n, crop, crop]``: pixels inside each object's shape, over the window whose top-left
    pixel is (x0, y0); pixel centres sit at +0.5.

    shape: int[n] index into SHAPES; cx, cy, radius: float[n] in pixels; x0, y0: int[n].
    """
    grid = np.arange(crop, dtype=np.float32) + 0.5
    r = radius.astype(np.float32)[:, None, None]
    u = (grid[None, None, :] + (x0 - cx).astype(np.float32)[:, None, None]) / r
    v = (grid[None, :, None] + (y0 - cy).astype(np.float32)[:, None, None]) / r
    u, v = np.broadcast_arrays(u, v)
    masks = np.zeros(u.shape, dtype=bool)
    for s, fn in enumerate(_SHAPE_FNS):
        sel = shape == s
        if sel.any():
            masks[sel] = fn(u[sel], v[sel])
    return masks


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """int32 ``[n, 4]`` xyxy tight bounds of non-empty masks ``[n, H, W]`` (x2, y2 exclusive)."""
    cols, rows = masks.any(1), masks.any(2)
    w, h = masks.shape[2], masks.shape[1]
    x1, x2 = cols.argmax(1), w - cols[:, ::-1].argmax(1)
    y1, y2 = rows.argmax(1), h - rows[:, ::-1].argmax(1)
    return np.stack([x1, y1, x2, y2], 1).astype(np.int32)


def render_scenes(backgrounds: np.ndarray, scene: np.ndarray, slot: np.ndarray, shape: np.ndarray,
                  colour: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray,
                  striped: np.ndarray) -> np.ndarray:
    """Paint objects onto ``backgrounds`` (uint8 ``[N, S, S, 3]``, modified in place) and return boxes.

    Per object (n entries): scene index, slot (painting order within its scene, 0 first),
    shape and colour indices, centre and radius in pixels (the shape must fit in the image),
    striped flag. Returns int32 ``[n, 4]`` boxes (xyxy, see the module docstring). Each object
    is rasterised over a square window around it, all objects of a slot at once.
    """
    size = backgrounds.shape[1]
    crop = min(size, int(np.ceil(2 * radius.max())) + 2)
    period = max(2, round(4 * size / 64))
    boxes = np.zeros((len(scene), 4), dtype=np.int32)
    local = np.arange(crop)
    for k in np.unique(slot):
        idx = np.flatnonzero(slot == k)  # at most one object per scene in a slot
        x0 = np.clip(np.floor(cx[idx]).astype(np.int64) - crop // 2, 0, size - crop)
        y0 = np.clip(np.floor(cy[idx]).astype(np.int64) - crop // 2, 0, size - crop)
        masks = shape_masks(shape[idx], cx[idx], cy[idx], radius[idx], x0, y0, crop)
        boxes[idx] = mask_boxes(masks) + np.stack([x0, y0, x0, y0], 1)
        ys = y0[:, None, None] + local[None, :, None]  # [n, crop, 1]
        xs = x0[:, None, None] + local[None, None, :]  # [n, 1, crop]
        stripe_on = ((xs + ys) // period) % 2 == 0  # [n, crop, crop]
        base = COLOUR_RGB[colour[idx]].astype(np.float32)  # [n, 3]
        dark = np.where(striped[idx, None], base * STRIPE_SHADE, base)
        paint = np.where(stripe_on[..., None], base[:, None, None, :], dark[:, None, None, :])
        where = (scene[idx][:, None, None], ys, xs)
        backgrounds[where] = np.where(masks[..., None], paint.round().astype(np.uint8), backgrounds[where])
    return boxes
