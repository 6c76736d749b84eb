"""Patchwork objects (issue 31 item 4): the repainting touches exactly each object's visible pixels,
one colour per (object, grid cell), checked against a flat rendering of the same scenes."""
import numpy as np
import pytest

from loupe_core.data.shapesworld_patchwork import patchwork, visible_masks
from loupe_core.data.shapesworld_render import COLOURS
from loupe_core.data.shapesworld_scenes import ALL_PAIRS, render, sample_scene

SIZE, CELL = 32, 4


@pytest.fixture(scope="module")
def flat():
    rng = np.random.default_rng(11)
    scenes = []
    while len(scenes) < 12:
        scene = sample_scene(rng, SIZE, list(ALL_PAIRS), num_objects=3)
        if len({o["colour"] for o in scene["objects"]}) == len(scene["objects"]):  # tell objects apart by colour
            for o in scene["objects"]:
                o["striped"] = False
            scene["background"] = "plain"
            scenes.append(scene)
    return render(rng, scenes, SIZE), scenes


def test_visible_masks_are_the_pixels_each_object_shows(flat):
    images, scenes = flat
    for image, scene in zip(images, scenes):
        masks = visible_masks(scene, SIZE)
        assert not (masks.sum(0) > 1).any()  # visible parts never overlap
        for mask, obj in zip(masks, scene["objects"]):
            painted = (image == np.array(COLOURS[obj["colour"]], dtype=np.uint8)).all(-1)
            assert np.array_equal(mask, painted)


def test_patchwork_one_colour_per_object_cell_and_nothing_else_changes(flat):
    images, scenes = flat
    out = patchwork(images, scenes, CELL, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    several = 0
    for before, after, scene in zip(images, out, scenes):
        masks = visible_masks(scene, SIZE)
        objects = masks.any(0)
        assert np.array_equal(before[~objects], after[~objects])
        for mask in masks:
            cells = {}
            for y, x in zip(*np.nonzero(mask)):
                cells.setdefault((y // CELL, x // CELL), set()).add(tuple(after[y, x]))
            assert all(len(c) == 1 for c in cells.values())
            several += len({next(iter(c)) for c in cells.values()}) > 1
    assert several >= 30  # of 36 objects, nearly all show more than one colour
    assert np.array_equal(out, patchwork(images, scenes, CELL, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="cell"):
        patchwork(images, scenes, 0, np.random.default_rng(0))
