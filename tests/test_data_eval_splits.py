"""Readers of the evaluation files: ShapesWorld's own, and real-data-like files (non-square
images resized, boxes scaled), checked against the annotations and by hand."""
import json

import numpy as np
import pytest

from loupe_core.data import (load_classification_split, load_detection_split, load_grounding_split,
                             load_retrieval_split, prepare_shapesworld)
from loupe_core.data.images import encode_png
from loupe_core.errors import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return prepare_shapesworld(str(tmp_path_factory.mktemp("sw")), num_train=8, num_val=4, num_test=2,
                               num_heldout=5, seed=1, progress=False)


def _records(files):
    with open(files.annotations) as f:
        return json.load(f)


def test_retrieval_split_matches_annotations(world):
    split = load_retrieval_split(world.heldout.retrieval)
    records = _records(world.heldout)
    assert np.array_equal(split.images, np.load(world.heldout.images))
    assert split.image_captions == [[c["text"] for c in r["captions"]] for r in records]
    assert split.captions == [c for caps in split.image_captions for c in caps]
    assert split.caption_image == [i for i in range(5) for _ in range(5)]
    images, captions = load_retrieval_split(world.heldout.retrieval, image_size=32)[:2]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8 and captions == split.captions


def test_detection_and_grounding_boxes_scale_with_image_size(world):
    records = _records(world.val)
    det = load_detection_split(world.val.detection)
    assert det.images.shape == (4, 64, 64, 3) and det.image_ids == [1, 2, 3, 4]
    for boxes, labels, rec in zip(det.boxes, det.labels, records):
        assert boxes.tolist() == [o["box"] for o in rec["objects"]]
        assert [det.coco["categories"][k]["name"] for k in labels] == [o["shape"] for o in rec["objects"]]
    half = load_detection_split(world.val.detection, image_size=32)
    assert np.allclose(half.scales, 0.5) and all(np.allclose(a, b / 2) for a, b in zip(half.boxes, det.boxes))
    ground = load_grounding_split(world.val.grounding, image_size=32)
    objects = [(i, o) for i, r in enumerate(records) for o in r["objects"]]
    expected_boxes = [np.array(o["box"]) / 2 for i, o in objects for _ in range(1 + (len(records[i]["objects"]) > 1))]
    assert np.allclose(ground.boxes, np.stack(expected_boxes))
    assert ground.expression_image == [i for i, _ in objects for _ in range(1 + (len(records[i]["objects"]) > 1))]
    assert len(ground.expressions) == len(ground.boxes) and ground.images.shape == (4, 32, 32, 3)


def test_classification_split(world):
    split = load_classification_split(world.heldout.classification_colour_shape)
    held = {" ".join(p) for p in world.load_metadata()["heldout_pairs"]}
    assert split.images.shape == (5, 64, 64, 3) and split.labels.dtype == np.int64
    assert {split.classes[k] for k in split.labels} <= held and len(split.classes) == 56
    shape_split = load_classification_split(world.heldout.classification_shape)
    assert [c.split()[1] for c in np.array(split.classes)[split.labels]] == [shape_split.classes[k] for k in shape_split.labels]
    assert all("{}" in t for t in split.templates)


def _real_like(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (80, 40), (10, 200, 30)).save(tmp_path / "images" / "wide.jpg")
    (tmp_path / "images" / "tall.png").write_bytes(encode_png(np.zeros((60, 30, 3), np.uint8)))
    coco = {"images": [{"id": 7, "file_name": "wide.jpg", "width": 80, "height": 40},
                       {"id": 9, "file_name": "tall.png", "width": 30, "height": 60}],
            "annotations": [{"id": 1, "image_id": 9, "bbox": [3, 6, 12, 30], "category_id": 5, "area": 360, "iscrowd": 0},
                            {"id": 2, "image_id": 7, "bbox": [40, 0, 40, 20], "category_id": 2, "area": 800, "iscrowd": 0}],
            "categories": [{"id": 2, "name": "dog"}, {"id": 5, "name": "cat"}]}
    (tmp_path / "det.json").write_text(json.dumps(coco))
    refs = {"images": coco["images"], "refs": [
        {"ref_id": 1, "image_id": 9, "bbox": [3, 6, 12, 30], "split": "val", "sentences": [{"sent": "the cat"}]},
        {"ref_id": 2, "image_id": 7, "bbox": [40, 0, 40, 20], "split": "testA",
         "sentences": [{"sent": "dog on the right"}, {"sent": "right dog"}]}]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return tmp_path


def test_real_like_files_resize_whole_images_and_scale_boxes(tmp_path):
    pytest.importorskip("pycocotools")
    root = _real_like(tmp_path)
    det = load_detection_split(str(root / "det.json"), image_size=20)
    assert det.images.shape == (2, 20, 20, 3) and det.image_ids == [7, 9]
    assert np.allclose(det.scales, [[0.25, 0.5], [20 / 30, 20 / 60]])
    assert np.allclose(det.boxes[0], [[10, 0, 20, 10]]) and det.labels[0].tolist() == [0]
    assert np.allclose(det.boxes[1], [[2, 2, 10, 12]]) and det.labels[1].tolist() == [1]
    ground = load_grounding_split(str(root / "refs.json"), image_size=20, split="testA")
    assert ground.expressions == ["dog on the right", "right dog"] and ground.expression_image == [0, 0]
    assert np.allclose(ground.boxes, [[10, 0, 20, 10]] * 2)
    with pytest.raises(DataError, match="image_size"):
        load_detection_split(str(root / "det.json"))  # sizes differ and no image_size
    karpathy = {"images": [{"filepath": "images", "filename": "wide.jpg", "split": "test", "sentences": [{"raw": "green"}]},
                           {"filepath": "images", "filename": "tall.png", "split": "train", "sentences": [{"raw": "x"}]}]}
    (root / "karpathy.json").write_text(json.dumps(karpathy))
    split = load_retrieval_split(str(root / "karpathy.json"), image_root=str(root), image_size=10, split="test")
    assert split.captions == ["green"] and split.images.shape == (1, 10, 10, 3)
    assert (np.abs(split.images.astype(int) - [10, 200, 30]) <= 3).all()  # centre crop of a flat JPEG


def test_missing_files_and_fields_are_named(tmp_path):
    with pytest.raises(DataError, match="json_path"):
        load_retrieval_split(str(tmp_path / "nope.json"))
    (tmp_path / "r.json").write_text(json.dumps({"images": [{"filename": "x.png", "sentences": []}]}))
    with pytest.raises(DataError, match="x.png"):
        load_retrieval_split(str(tmp_path / "r.json"))
    (tmp_path / "c.json").write_text(json.dumps({"templates": ["{}"], "images": []}))
    with pytest.raises(DataError, match="classes"):
        load_classification_split(str(tmp_path / "c.json"))
