"""Patchwork objects: ShapesWorld scenes whose objects carry a different colour in each grid cell.

For the question of docs/fine_grained_alignment.md (issue 31 item 4): is Eq. 7's negative sign on
objects the redundancy of the object's colour across its patches? :func:`patchwork` repaints
every object of rendered scenes so that each of its grid cells (``cell`` pixels, the model's
patch grid) shows its own colour, drawn uniformly from the palette for every (object, cell);
the shapes, positions, occlusion and background stay as they were, so a flat rendering of the
same scenes is the matched control.
"""
from __future__ import annotations

import numpy as np

from .shapesworld_render import COLOUR_RGB, SHAPES, shape_masks


def visible_masks(record: dict, size: int) -> np.ndarray:
    """bool ``[n, size, size]``: the pixels of each object of ``record`` not covered by a later one."""
    objects = record["objects"]
    if not objects:
        return np.zeros((0, size, size), dtype=bool)
    zeros = np.zeros(len(objects), dtype=np.int64)
    masks = shape_masks(np.array([SHAPES.index(o["shape"]) for o in objects]),
                        np.array([o["cx"] for o in objects]), np.array([o["cy"] for o in objects]),
                        np.array([o["radius"] for o in objects]), zeros, zeros, size)
    covered = np.zeros((size, size), dtype=bool)
    for k in range(len(objects) - 1, -1, -1):  # later objects are painted on top
        masks[k] &= ~covered
        covered |= masks[k]
    return masks


def patchwork(images: np.ndarray, records: list[dict], cell: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[N, S, S, 3]``: copies of ``images`` with each object's visible pixels repainted one
    palette colour per (object, grid cell of ``cell`` pixels); records: the scenes' annotations."""
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be an int >= 1, got {cell!r}")
    size = images.shape[1]
    side = -(-size // cell)
    out = images.copy()
    rows, cols = np.indices((size, size)) // cell
    for image, record in zip(out, records):
        for mask in visible_masks(record, size):
            colours = COLOUR_RGB[rng.integers(len(COLOUR_RGB), size=(side, side))]  # [side, side, 3]
            image[mask] = colours[rows[mask], cols[mask]]
    return out
