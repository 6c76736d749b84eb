"""Harder ShapesWorld grounding splits: expressions that matching the colour alone cannot answer.

Each split is a RefCOCO-style ``grounding.json`` (docs/CONTRACTS.md s4) with its ``images/``,
written beside a generated ShapesWorld under ``<root>/hard-v<HARD_VERSION>-n<num>/<split>/``;
their meaning is docs/CONTRACTS.md s6. Scenes use the training (colour, shape) pairs only (the
held-out pairs of the dataset's metadata stay out) and split k draws from the random stream
``SeedSequence([seed, SEED_BASE + k])``, disjoint from the train/val/test/heldout streams
``SeedSequence([seed, 0..3])`` of ``shapesworld.generate_split``.

- ``fresh``: the test distribution again (``sample_scene``, ``referring_sentences``): how much
  of a score the protocol's choices on the test split carry.
- ``shape_decides``: 3-4 objects of one colour, distinct shapes; "the <colour> <shape>" per object.
- ``crowded``: 6-8 objects, distinct (colour, shape) pairs; "the <colour> <shape>" per object.
- ``relational``: two identical objects (same colour, shape, size word and stripes), one anchor
  object of another pair, and sometimes one more; per twin "the <colour> <shape> <relation> the
  <anchor colour> <anchor shape>", whose relation differs between the twins: only the second
  noun phrase and the relation single the referent out. The other objects have no expression.
- ``odd_sizes``: the test distribution with radii outside training's two sizes (smaller than
  "small", larger than "large": ``ODD_RADIUS_FRACTION``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from .shapesworld_captions import relation, referring_sentences
from .shapesworld_eval import write_grounding_file
from .shapesworld_scenes import SIZES, RADIUS_FRACTION, add_object, draw_background, render, sample_scene

HARD_VERSION = 1
HARD_SPLITS = ("fresh", "shape_decides", "crowded", "relational", "odd_sizes")
SEED_BASE = 1000
SHAPE_DECIDES_OBJECTS = (3, 4)
CROWDED_OBJECTS = (6, 8)
ODD_RADIUS_FRACTION = {"small": (0.05, 0.075), "large": (0.19, 0.23)}  # training: 0.09 and 0.16
_SCENE_TRIES = 200


def the_phrase(obj: dict) -> str:
    """"the <colour> <shape>" of an object dict."""
    return f"the {obj['colour']} {obj['shape']}"


def _random_size(rng: np.random.Generator, size: int) -> tuple[str, float]:
    word = SIZES[int(rng.integers(len(SIZES)))]
    return word, RADIUS_FRACTION[word] * size


def _odd_size(rng: np.random.Generator, size: int) -> tuple[str, float]:
    word = SIZES[int(rng.integers(len(SIZES)))]
    low, high = ODD_RADIUS_FRACTION[word]
    return word, float(rng.uniform(low, high)) * size


def _retry(build, what: str):
    """The first non-None ``build()`` result; a RuntimeError after ``_SCENE_TRIES`` failures."""
    for _ in range(_SCENE_TRIES):
        out = build()
        if out is not None:
            return out
    raise RuntimeError(f"could not place a {what} scene in {_SCENE_TRIES} tries (image too small?)")


def _place_all(rng, size, pairs, sizer) -> list[dict]:
    objects = []
    for colour, shape in pairs:
        add_object(rng, size, objects, colour, shape, *sizer(rng, size))
    return objects


def fresh_scene(rng: np.random.Generator, size: int, pairs: list) -> tuple[dict, list[list[str]]]:
    """A test-distribution scene and the test split's expressions of each object."""
    scene = sample_scene(rng, size, pairs)
    return scene, [referring_sentences(scene, k, rng) for k in range(len(scene["objects"]))]


def shape_decides_scene(rng: np.random.Generator, size: int, pairs: list) -> tuple[dict, list[list[str]]]:
    """3-4 objects of one colour with distinct shapes; "the <colour> <shape>" each."""
    colours = sorted({c for c, _ in pairs})

    def build():
        colour = colours[int(rng.integers(len(colours)))]
        shapes = [s for c, s in pairs if c == colour]
        low, high = SHAPE_DECIDES_OBJECTS
        n = int(rng.integers(low, high + 1))
        chosen = [(colour, shapes[i]) for i in rng.permutation(len(shapes))[:n]]
        objects = _place_all(rng, size, chosen, _random_size)
        return objects if len(objects) >= low else None

    objects = _retry(build, "shape_decides")
    return {"background": draw_background(rng), "objects": objects}, [[the_phrase(o)] for o in objects]


def crowded_scene(rng: np.random.Generator, size: int, pairs: list) -> tuple[dict, list[list[str]]]:
    """6-8 objects of distinct (colour, shape) pairs; "the <colour> <shape>" each."""
    low, high = CROWDED_OBJECTS

    def build():
        scene = sample_scene(rng, size, pairs, num_objects=int(rng.integers(low, high + 1)))
        return scene if len(scene["objects"]) >= low else None

    scene = _retry(build, "crowded")
    return scene, [[the_phrase(o)] for o in scene["objects"]]


def relational_scene(rng: np.random.Generator, size: int, pairs: list) -> tuple[dict, list[list[str]]]:
    """Two identical objects, an anchor and sometimes one more object; each twin's expression
    names its relation to the anchor (different for the two twins)."""

    def build():
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        twin, anchor, extra = order[0], order[1], order[2]
        word, radius = _random_size(rng, size)
        objects = []
        for _ in range(2):
            add_object(rng, size, objects, *twin, word, radius)
        if len(objects) < 2:
            return None
        objects[1]["striped"] = objects[0]["striped"]
        if not add_object(rng, size, objects, *anchor, *_random_size(rng, size)):
            return None
        if relation(objects[0], objects[2]) == relation(objects[1], objects[2]):
            return None
        if rng.random() < 0.5:
            add_object(rng, size, objects, *extra, *_random_size(rng, size))
        return objects

    objects = _retry(build, "relational")
    anchor = objects[2]
    sentences = [[f"{the_phrase(t)} {relation(t, anchor)} {the_phrase(anchor)}"] for t in objects[:2]]
    sentences += [[] for _ in objects[2:]]
    return {"background": draw_background(rng), "objects": objects}, sentences


def odd_sizes_scene(rng: np.random.Generator, size: int, pairs: list) -> tuple[dict, list[list[str]]]:
    """1-4 objects as in the test split, with radii outside training's (``ODD_RADIUS_FRACTION``)."""

    def build():
        n = int(rng.integers(1, 5))
        chosen = [pairs[i] for i in rng.permutation(len(pairs))[:n]]
        objects = _place_all(rng, size, chosen, _odd_size)
        return objects or None

    objects = _retry(build, "odd_sizes")
    scene = {"background": draw_background(rng), "objects": objects}
    return scene, [referring_sentences(scene, k, rng) for k in range(len(scene["objects"]))]


BUILDERS = {"fresh": fresh_scene, "shape_decides": shape_decides_scene, "crowded": crowded_scene,
            "relational": relational_scene, "odd_sizes": odd_sizes_scene}
assert tuple(BUILDERS) == HARD_SPLITS


def _check_num(num) -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an int >= 1, got {num!r}")


def generate_hard_split(name: str, num: int, *, image_size: int, seed: int, pairs: list):
    """(uint8 images ``[num, S, S, 3]``, records, sentences) of hard split ``name``.

    records: ``{"key", "background", "objects"}`` (boxes included, as the annotations of
    ``shapesworld``); sentences[i][k]: the expressions of object k of image i (may be empty).
    pairs: the (colour, shape) pairs scenes may use.
    """
    if name not in BUILDERS:
        raise ValueError(f"name must be one of {list(HARD_SPLITS)}, got {name!r}")
    _check_num(num)
    rng = np.random.default_rng(np.random.SeedSequence([seed, SEED_BASE + HARD_SPLITS.index(name)]))
    pairs = [tuple(p) for p in pairs]
    built = [BUILDERS[name](rng, image_size, pairs) for _ in range(num)]
    scenes = [scene for scene, _ in built]
    images = render(rng, scenes, image_size)
    records = [{"key": f"{name}_{i:06d}", **scene} for i, scene in enumerate(scenes)]
    return images, records, [sentences for _, sentences in built]


def hard_root(root: str, num: int) -> str:
    """Folder of the hard splits of ``num`` images beside the ShapesWorld at ``root``."""
    return os.path.join(root, f"hard-v{HARD_VERSION}-n{num}")


def prepare_hard_splits(paths, num: int = 200, names=HARD_SPLITS) -> dict[str, dict[str, str]]:
    """Generate (or find) hard splits beside a ShapesWorld; returns {split: {"grounding": JSON path}}.

    paths: the dataset's ``ShapesWorldPaths`` (image size, seed and held-out pairs come from its
    metadata). Each split is written to a temporary folder and renamed into place, so a
    half-written split is never seen; concurrent callers both succeed.
    """
    _check_num(num)
    names = tuple(names)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"names must be from {list(HARD_SPLITS)}, got {unknown}")
    meta = paths.load_metadata()
    held = {tuple(p) for p in meta["heldout_pairs"]}
    pairs = [(c, s) for s in meta["shapes"] for c in meta["colours"] if (c, s) not in held]
    parent = hard_root(paths.root, num)
    os.makedirs(parent, exist_ok=True)
    out = {}
    for name in names:
        final = os.path.join(parent, name)
        if not os.path.isdir(final):
            tmp = tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=parent)
            os.chmod(tmp, 0o755)
            try:
                images, records, sentences = generate_hard_split(
                    name, num, image_size=meta["params"]["image_size"], seed=meta["params"]["seed"], pairs=pairs)
                write_grounding_file(tmp, images, records, sentences)
                with open(os.path.join(tmp, "annotations.json"), "w") as f:
                    json.dump(records, f)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not os.path.isdir(final):
                        raise
            finally:
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
        out[name] = {"grounding": os.path.join(final, "grounding.json")}
    return out
