"""ShapesWorld: determinism, gold phrase spans, boxes, held-out pairs, dataset and eval files."""
import json
import os
import re

import numpy as np
import pytest
import torch

from loupe_core.data import (IMAGE_MEAN, IMAGE_STD, ShapesWorldDataset, collate_batch, extract_noun_phrases,
                             prepare_shapesworld)
from loupe_core.data.shapesworld import generate_split
from loupe_core.data.shapesworld_captions import SIZE_WORDS
from loupe_core.data.shapesworld_render import COLOUR_NAMES, COLOURS, SHAPES, STRIPE_SHADE
from loupe_core.data.shapesworld_scenes import ALL_PAIRS, heldout_pairs, render, sample_scene

SMALL = dict(num_train=24, num_val=6, num_test=4, num_heldout=6, seed=3, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return prepare_shapesworld(str(tmp_path_factory.mktemp("sw")), **SMALL)


def _file_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_seed_same_bytes(world, tmp_path):
    again = prepare_shapesworld(str(tmp_path), **SMALL)
    assert os.path.basename(again.root) == os.path.basename(world.root)
    first, second = _file_bytes(world.root), _file_bytes(again.root)
    assert first.keys() == second.keys() and len(first) > 10
    assert all(first[k] == second[k] for k in first)
    other, _, _ = generate_split("train", 24, image_size=64, seed=4)
    assert not np.array_equal(other, np.load(world.train.images))


def test_reuses_existing_and_leaves_no_temp(world):
    stamp = os.path.getmtime(world.train.images)
    again = prepare_shapesworld(os.path.dirname(world.root), **SMALL)
    assert again == world and os.path.getmtime(world.train.images) == stamp
    assert not [n for n in os.listdir(os.path.dirname(world.root)) if n.startswith(".shapesworld-tmp")]


@pytest.mark.parametrize("name,value,err", [("image_size", 16, ValueError), ("num_train", 0, ValueError),
                                            ("num_val", 2.0, TypeError), ("seed", -1, ValueError)])
def test_bad_arguments_name_the_argument(tmp_path, name, value, err):
    with pytest.raises(err, match=name):
        prepare_shapesworld(str(tmp_path), **{**SMALL, name: value})


def _records(paths, split):
    with open(paths.split(split).annotations) as f:
        return json.load(f)


def test_gold_phrase_spans_name_their_object(world):
    """Read each gold span's words back and check them against the object it points to."""
    colours, shapes = set(COLOUR_NAMES), set(SHAPES)
    sizes = {w: s for s, words in SIZE_WORDS.items() for w in words}
    checked = 0
    for split in ("train", "val", "heldout"):
        for rec in _records(world, split):
            for cap in rec["captions"]:
                for ref in cap["refs"]:
                    obj = rec["objects"][ref["object"]]
                    words = cap["text"][ref["span"][0]:ref["span"][1]].lower().split()
                    assert words[0] in ("a", "an") and words[-1] == obj["shape"]
                    assert [w for w in words if w in shapes] == [obj["shape"]]
                    assert all(w == obj["colour"] for w in words if w in colours)
                    assert all(sizes[w] == obj["size"] for w in words if w in sizes)
                    assert "striped" not in words or obj["striped"]
                    checked += 1
    assert checked > 50


def test_chunker_recovers_every_gold_phrase(world):
    for rec in _records(world, "val"):
        for cap in rec["captions"]:
            found = {tuple(s) for s in extract_noun_phrases(cap["text"])}
            assert {tuple(r["span"]) for r in cap["refs"]} <= found
            assert [list(s) for s in sorted(found)] == sorted(cap["phrases"])


def _object_pixels(image, obj, background):
    """Pixels painted in the object's colour (either stripe shade) and not in the background."""
    base = np.array(COLOURS[obj["colour"]], dtype=np.float32)
    shades = [base.round(), (base * STRIPE_SHADE).round()] if obj["striped"] else [base.round()]
    hit = np.zeros(image.shape[:2], dtype=bool)
    for shade in shades:
        hit |= (image == shade.astype(np.uint8)).all(-1)
    return hit & ~(image == background).all(-1)


def test_boxes_are_tight_around_each_objects_pixels():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, 64, list(ALL_PAIRS)) for _ in range(60)]
    for s in scenes:
        s["background"] = "plain"
    images = render(rng, scenes, 64)
    checked = 0
    for img, scene in zip(images, scenes):
        colours = [o["colour"] for o in scene["objects"]]
        if len(set(colours)) < len(colours):
            continue
        background = img[0, 0]
        for obj in scene["objects"]:
            ys, xs = np.nonzero(_object_pixels(img, obj, background))
            x1, y1, x2, y2 = obj["box"]
            assert len(xs) > 0
            assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
            checked += 1
        if len(scene["objects"]) == 1:  # nothing can hide it: the box is exactly tight
            ys, xs = np.nonzero(_object_pixels(img, scene["objects"][0], background))
            assert scene["objects"][0]["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert checked > 50


def test_heldout_pairs_never_in_training_splits(world):
    held = {tuple(p) for p in world.load_metadata()["heldout_pairs"]}
    assert held == set(heldout_pairs(SMALL["seed"])) and len(held) == 6
    assert len({c for c, _ in held}) == 6 and len({s for _, s in held}) == 6
    for split in ("train", "val", "test"):
        for rec in _records(world, split):
            pairs = {(o["colour"], o["shape"]) for o in rec["objects"]}
            assert not pairs & held
            for cap in rec["captions"]:
                text = cap["text"].lower()
                assert not any(re.search(rf"\b{c}\b( \w+)? {s}\b", text) for c, s in held)
    for rec in _records(world, "heldout"):
        assert {(o["colour"], o["shape"]) for o in rec["objects"]} & held
    cls = json.load(open(world.heldout.classification_colour_shape))
    assert {tuple(cls["classes"][e["label"]].split()) for e in cls["images"]} <= held


def test_scene_objects_distinct_pairs_and_inside_image(world):
    for rec in _records(world, "train"):
        pairs = [(o["colour"], o["shape"]) for o in rec["objects"]]
        assert 1 <= len(pairs) <= 4 and len(set(pairs)) == len(pairs)
        for o in rec["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64


def test_dataset_and_collate_follow_the_contract(world):
    ds = ShapesWorldDataset(world, "val")
    assert len(ds) == SMALL["num_val"] * 5
    samples = [ds[i] for i in range(7)]
    batch = collate_batch(samples, max_phrases=8)
    b, length = batch["input_ids"].shape
    m = batch["phrase_mask"].shape[1]
    assert b == 7 and length <= 60 and m >= 1
    assert batch["images"].shape == (7, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["text_mask"].dtype == torch.bool
    assert batch["phrase_tokens"].shape == (7, m, length) and batch["phrase_tokens"].dtype == torch.bool
    assert batch["phrase_mask"].dtype == torch.bool
    assert (batch["input_ids"][~batch["text_mask"]] == 0).all() and (batch["input_ids"][batch["text_mask"]] > 0).all()
    assert not (batch["phrase_tokens"] & ~batch["text_mask"][:, None, :]).any()
    assert (batch["phrase_tokens"].any(-1) == batch["phrase_mask"]).all()
    assert batch["keys"][6] == "val_000001/1" and batch["captions"][6] == _records(world, "val")[1]["captions"][1]["text"]
    raw = np.load(world.val.images)[1]
    mean, std = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)
    back = (batch["images"][6] * std + mean) * 255
    assert torch.allclose(back, torch.from_numpy(raw).permute(2, 0, 1).float(), atol=1e-3)


def test_eval_files_load_with_pycocotools_and_agree(world):
    coco_mod = pytest.importorskip("pycocotools.coco")
    records = _records(world, "test")
    coco = coco_mod.COCO(world.test.detection)
    assert len(coco.getImgIds()) == len(records)
    assert len(coco.getAnnIds()) == sum(len(r["objects"]) for r in records)
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in first] == [[o["box"][0], o["box"][1], o["box"][2] - o["box"][0],
                                           o["box"][3] - o["box"][1]] for o in records[0]["objects"]]
    assert [coco.loadCats(a["category_id"])[0]["name"] for a in first] == [o["shape"] for o in records[0]["objects"]]
    retrieval = json.load(open(world.test.retrieval))
    assert all(len(e["sentences"]) == 5 for e in retrieval["images"])
    grounding = json.load(open(world.test.grounding))
    assert [r["bbox"] for r in grounding["refs"]] == [a["bbox"] for a in coco.loadAnns(coco.getAnnIds())]
    for ref in grounding["refs"]:
        obj_name = coco.loadCats(ref["category_id"])[0]["name"]
        for sent in ref["sentences"]:
            assert sent["sent"].startswith("the ")
            assert [w for w in sent["sent"].split() if w in SHAPES][0] == obj_name
    for name in ("classification_shape", "classification_colour_shape"):
        cls = json.load(open(getattr(world.test, name)))
        assert all(0 <= e["label"] < len(cls["classes"]) for e in cls["images"]) and "{}" in cls["templates"][0]
        assert all(os.path.isfile(os.path.join(world.test.dir, "images", e["file_name"])) for e in cls["images"])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_in_a_dataloader_with_workers(world, workers):
    ds = ShapesWorldDataset(world, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate_batch)
    batches = list(loader)
    assert [k for b in batches for k in b["keys"]] == [f"train_{i:06d}/0" for i in range(SMALL["num_train"])]
    first = collate_batch([ds[i] for i in range(5)])
    assert all(torch.equal(first[k], batches[0][k]) for k in ("images", "input_ids", "phrase_tokens", "phrase_mask"))
