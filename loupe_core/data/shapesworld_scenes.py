"""ShapesWorld scene sampling: objects, attributes, positions, backgrounds (numpy, seeded).

A scene is a dict ``{"background": "plain" | "noise", "objects": [obj, ...]}`` with 1-4 objects,
each ``{"shape", "colour", "size" ("small" | "large"), "striped" (bool), "cx", "cy", "radius"}``
(centre and radius in pixels). Within a scene the (colour, shape) pairs are distinct, so
"the <colour> <shape>" always refers to one object. Objects lie fully inside the image and
their centres are at least ``MIN_GAP`` times the sum of their radii apart (little overlap).
"""
from __future__ import annotations

import numpy as np

from .shapesworld_render import COLOUR_NAMES, SHAPES, render_scenes

SIZES = ("small", "large")
RADIUS_FRACTION = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image side
MAX_OBJECTS = 4
MIN_GAP = 0.9
STRIPED_PROB = 0.3
NOISE_PROB = 0.5
_PLACEMENT_TRIES = 50
_RENDER_CHUNK = 512

ALL_PAIRS = tuple((c, s) for s in SHAPES for c in COLOUR_NAMES)  # (colour, shape)


def heldout_pairs(seed: int, count: int = 6) -> list[tuple[str, str]]:
    """``count`` (colour, shape) pairs kept out of training; no colour and no shape is used twice.

    Every colour and every shape keeps other partners in training (compositional zero-shot).
    """
    if not 0 <= count <= min(len(SHAPES), len(COLOUR_NAMES)):
        raise ValueError(f"count must be in [0, {min(len(SHAPES), len(COLOUR_NAMES))}], got {count}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    shapes = rng.permutation(len(SHAPES))[:count]
    colours = rng.permutation(len(COLOUR_NAMES))[:count]
    return sorted((COLOUR_NAMES[c], SHAPES[s]) for c, s in zip(colours, shapes))


def _place(rng, size: int, radius: float, placed: list[dict]):
    """A centre for a new object (or None when none fits after a few tries)."""
    for _ in range(_PLACEMENT_TRIES):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        if all(np.hypot(cx - o["cx"], cy - o["cy"]) >= MIN_GAP * (radius + o["radius"]) for o in placed):
            return float(cx), float(cy)
    return None


def sample_scene(rng: np.random.Generator, size: int, pairs: list[tuple[str, str]],
                 first_pair: tuple[str, str] | None = None, num_objects: int | None = None) -> dict:
    """One scene. Objects take distinct (colour, shape) pairs from ``pairs``; ``first_pair`` forces
    the first object's pair; ``num_objects`` (default uniform 1-4) may shrink if objects do not fit."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    chosen = [pairs[i] for i in rng.permutation(len(pairs))]
    if first_pair is not None:
        chosen = [first_pair] + [p for p in chosen if p != first_pair]
    objects = []
    for colour, shape in chosen[:n]:
        obj_size = SIZES[int(rng.integers(len(SIZES)))]
        add_object(rng, size, objects, colour, shape, obj_size, RADIUS_FRACTION[obj_size] * size)
    return {"background": draw_background(rng), "objects": objects}


def add_object(rng: np.random.Generator, size: int, objects: list[dict], colour: str, shape: str,
               obj_size: str, radius: float) -> bool:
    """Place one object (striped by chance) apart from ``objects`` and append it; False (nothing
    appended) when no centre fits after a few tries."""
    centre = _place(rng, size, radius, objects)
    if centre is None:
        return False
    objects.append({"shape": shape, "colour": colour, "size": obj_size,
                    "striped": bool(rng.random() < STRIPED_PROB),
                    "cx": centre[0], "cy": centre[1], "radius": radius})
    return True


def draw_background(rng: np.random.Generator) -> str:
    """A scene's background kind: "noise" with probability ``NOISE_PROB``, else "plain"."""
    return "noise" if rng.random() < NOISE_PROB else "plain"


def _backgrounds(rng: np.random.Generator, scenes: list[dict], size: int) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``: dark grey, plain or with per-pixel Gaussian noise."""
    n = len(scenes)
    level = rng.integers(15, 76, size=n).astype(np.uint8)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    out[:] = level[:, None, None, None]
    noisy = np.flatnonzero([s["background"] == "noise" for s in scenes])
    if len(noisy):
        noise = 12.0 * rng.standard_normal((len(noisy), size, size, 3), dtype=np.float32)
        noise += level[noisy, None, None, None]
        out[noisy] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
    return out


def render(rng: np.random.Generator, scenes: list[dict], size: int) -> np.ndarray:
    """Render ``scenes`` to uint8 ``[N, size, size, 3]``; writes each object's ``box`` (xyxy pixels,
    x2/y2 exclusive: see ``shapesworld_render``) into the scene dicts."""
    images = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    shape_id = {s: i for i, s in enumerate(SHAPES)}
    colour_id = {c: i for i, c in enumerate(COLOUR_NAMES)}
    for start in range(0, len(scenes), _RENDER_CHUNK):
        chunk = scenes[start:start + _RENDER_CHUNK]
        canvas = _backgrounds(rng, chunk, size)
        objs = [(i, k, o) for i, s in enumerate(chunk) for k, o in enumerate(s["objects"])]
        if objs:
            boxes = render_scenes(
                canvas,
                scene=np.array([i for i, _, _ in objs]), slot=np.array([k for _, k, _ in objs]),
                shape=np.array([shape_id[o["shape"]] for _, _, o in objs]),
                colour=np.array([colour_id[o["colour"]] for _, _, o in objs]),
                cx=np.array([o["cx"] for _, _, o in objs]), cy=np.array([o["cy"] for _, _, o in objs]),
                radius=np.array([o["radius"] for _, _, o in objs]),
                striped=np.array([o["striped"] for _, _, o in objs]))
            for (_, _, o), box in zip(objs, boxes):
                o["box"] = [int(b) for b in box]
        images[start:start + len(chunk)] = canvas
    return images
