"""ShapesWorld evaluation files in the formats of docs/CONTRACTS.md s4.

Written into one split directory: ``images/`` (PNG files every JSON names, relative to that
folder), ``retrieval.json`` (Karpathy style, 5 captions per image), ``detection.json`` (COCO
instances, classes = shapes), ``grounding.json`` (RefCOCO style, one ref per object with its
referring expressions), ``classification_shape.json`` and ``classification_colour_shape.json``
(single-object images, CLIP-style prompt templates). Boxes in the JSON files are COCO
``[x, y, w, h]`` in pixels.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .images import encode_png
from .shapesworld_captions import referring_sentences
from .shapesworld_render import SHAPES
from .shapesworld_scenes import ALL_PAIRS

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")
EVAL_FILES = ("retrieval", "detection", "grounding", "classification_shape", "classification_colour_shape")
COLOUR_SHAPE_CLASSES = tuple(f"{c} {s}" for c, s in ALL_PAIRS)


def _xywh(box) -> list[int]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _image_entries(records: list[dict], size: int) -> list[dict]:
    return [{"id": i + 1, "file_name": f"{r['key']}.png", "width": size, "height": size}
            for i, r in enumerate(records)]


def _write_pngs(split_dir: str, images: np.ndarray, records: list[dict]) -> None:
    """``<split_dir>/images/<key>.png`` of each image uint8 ``[N, S, S, 3]`` and its record."""
    image_dir = os.path.join(split_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    for img, rec in zip(images, records):
        with open(os.path.join(image_dir, f"{rec['key']}.png"), "wb") as f:
            f.write(encode_png(img))


def write_grounding_file(split_dir: str, images: np.ndarray, records: list[dict],
                         sentences: list[list[list[str]]]) -> str:
    """Write a grounding-only split (``images/`` and ``grounding.json``); returns the JSON path.

    images: uint8 ``[N, S, S, 3]`` with ``records`` (ShapesWorld annotations, boxes included);
    sentences[i][k]: the referring expressions of object k of image i (empty: no ref for it).
    """
    _write_pngs(split_dir, images, records)
    entries = _image_entries(records, images.shape[1])
    refs = []
    for entry, rec, per_object in zip(entries, records, sentences):
        for obj, texts in zip(rec["objects"], per_object):
            if texts:
                refs.append({"ref_id": len(refs) + 1, "image_id": entry["id"], "bbox": _xywh(obj["box"]),
                             "category_id": SHAPES.index(obj["shape"]) + 1,
                             "sentences": [{"sent": t} for t in texts]})
    path = os.path.join(split_dir, "grounding.json")
    _write_json(path, {"images": entries, "refs": refs,
                       "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]})
    return path


def write_eval_files(split_dir: str, split: str, images: np.ndarray, records: list[dict],
                     class_images: np.ndarray, class_records: list[dict],
                     rng: np.random.Generator) -> dict[str, str]:
    """Write the evaluation files of one split; returns {task: json path} (keys ``EVAL_FILES``).

    images: uint8 ``[N, S, S, 3]`` scenes with ``records`` (ShapesWorld annotations, 5 captions
    each); class_images: uint8 ``[N_c, S, S, 3]`` single-object scenes with ``class_records``.
    """
    _write_pngs(split_dir, np.concatenate([images, class_images]), records + class_records)
    size = images.shape[1]
    paths = {task: os.path.join(split_dir, f"{task}.json") for task in EVAL_FILES}

    _write_json(paths["retrieval"], {"images": [
        {"filename": f"{r['key']}.png", "imgid": i, "split": split,
         "sentences": [{"raw": c["text"]} for c in r["captions"]]}
        for i, r in enumerate(records)]})

    entries = _image_entries(records, size)
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    annotations, refs = [], []
    for entry, rec in zip(entries, records):
        for k, obj in enumerate(rec["objects"]):
            bbox = _xywh(obj["box"])
            category = SHAPES.index(obj["shape"]) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": entry["id"], "bbox": bbox,
                                "area": bbox[2] * bbox[3], "category_id": category, "iscrowd": 0})
            sentences = referring_sentences(rec, k, rng)
            refs.append({"ref_id": len(refs) + 1, "image_id": entry["id"], "ann_id": len(annotations),
                         "bbox": bbox, "category_id": category, "sentences": [{"sent": s} for s in sentences]})
    _write_json(paths["detection"], {"images": entries, "annotations": annotations, "categories": categories})
    _write_json(paths["grounding"], {"images": entries, "refs": refs, "categories": categories})

    class_entries = [{"file_name": f"{r['key']}.png", "object": r["objects"][0]} for r in class_records]
    _write_json(paths["classification_shape"], {
        "classes": list(SHAPES), "templates": list(TEMPLATES),
        "images": [{"file_name": e["file_name"], "label": SHAPES.index(e["object"]["shape"])}
                   for e in class_entries]})
    _write_json(paths["classification_colour_shape"], {
        "classes": list(COLOUR_SHAPE_CLASSES), "templates": list(TEMPLATES),
        "images": [{"file_name": e["file_name"],
                    "label": ALL_PAIRS.index((e["object"]["colour"], e["object"]["shape"]))}
                   for e in class_entries]})
    return paths
