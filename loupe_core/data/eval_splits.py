"""Readers of the evaluation files of docs/CONTRACTS.md s4, for ShapesWorld and real data alike.

Every loader returns uint8 images ``[N, S, S, 3]`` (numpy; the evaluators normalise them with
``normalize_image``) plus the labels of its task. Image files are looked up under
``image_root`` (default: the ``images`` folder beside the JSON). ``image_size=None`` keeps the
files' size (they must then all share one); otherwise retrieval and classification images are
resized and centre-cropped as in training, while detection and grounding images are resized
whole (``resize_stretch``) and their boxes scaled to match (``scales``: model-input pixels per
original pixel, (sx, sy) per image). Boxes returned here are xyxy in model-input pixels.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

import numpy as np

from ..errors import DataError
from .images import resize_center_crop, resize_stretch


class RetrievalSplit(NamedTuple):
    images: np.ndarray  # uint8 [N, S, S, 3]
    captions: list  # list[str], all captions, image by image
    caption_image: list  # list[int], image index of each caption
    image_captions: list  # list[list[str]], the captions of each image


class ClassificationSplit(NamedTuple):
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N], index into classes
    classes: list  # list[str]
    templates: list  # list[str] with one "{}"


class DetectionSplit(NamedTuple):
    images: np.ndarray  # uint8 [N, S, S, 3]
    image_ids: list  # list[int], COCO image ids in order
    scales: np.ndarray  # float64 [N, 2] (sx, sy)
    coco: dict  # the COCO instances JSON as loaded (original boxes)
    boxes: list  # list of float32 [n_i, 4] xyxy model-input pixels
    labels: list  # list of int64 [n_i], index into coco["categories"]


class GroundingSplit(NamedTuple):
    images: np.ndarray  # uint8 [N, S, S, 3]
    image_ids: list  # list[int]
    scales: np.ndarray  # float64 [N, 2] (sx, sy)
    expressions: list  # list[str], one per referring sentence
    expression_image: list  # list[int], image index of each expression
    boxes: np.ndarray  # float32 [R, 4] xyxy model-input pixels, the referred box of each expression


def _read_json(json_path: str) -> dict:
    if not os.path.isfile(json_path):
        raise DataError(f"json_path: no file at {json_path!r}")
    with open(json_path) as f:
        return json.load(f)


def _field(obj: dict, key: str, where: str):
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    return obj[key]


def eval_image_paths(json_path: str) -> list[str]:
    """The absolute paths of the image files an evaluation file names (any task's format: each
    ``images`` entry's ``filename`` or ``file_name``, under its ``filepath``), in the default
    ``images`` folder beside it; ``DataError`` naming the file when it is not such a file."""
    d = _read_json(json_path)
    entries = d.get("images") if isinstance(d, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{json_path}: no 'images' list of objects")
    root = os.path.join(os.path.dirname(os.path.abspath(json_path)), "images")
    names = [os.path.join(e.get("filepath", ""), e.get("filename") or _field(e, "file_name", json_path))
             for e in entries]
    return [os.path.abspath(os.path.join(root, name)) for name in names]


def _load_images(json_path: str, names: list[str], image_root: Optional[str], image_size: Optional[int],
                 whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, S, S, 3], float64 [N, 2] scales) of the named files."""
    from PIL import Image

    root = os.path.join(os.path.dirname(os.path.abspath(json_path)), "images") if image_root is None else image_root
    images, scales = [], []
    for name in names:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DataError(f"image_root: image {name!r} not found under {root!r}")
        with Image.open(path) as img:
            if image_size is None:
                arr, scale = np.asarray(img.convert("RGB"), dtype=np.uint8), (1.0, 1.0)
            elif whole:
                arr, scale = resize_stretch(img, image_size)
            else:
                arr, scale = resize_center_crop(img, image_size), (float("nan"), float("nan"))
        images.append(arr)
        scales.append(scale)
    if not images:
        raise DataError(f"json_path: {json_path} lists no image")
    if len({a.shape for a in images}) > 1:
        raise DataError(f"image_size: the images of {json_path} differ in size; pass image_size to resize them")
    return np.stack(images), np.asarray(scales, dtype=np.float64)


def load_retrieval_split(json_path: str, *, image_root: Optional[str] = None, image_size: Optional[int] = None,
                         split: Optional[str] = None) -> RetrievalSplit:
    """Karpathy-style JSON: ``images[i]`` with ``filename`` (under ``filepath`` if given) and
    ``sentences[j]["raw"]``. split: keep only entries whose ``"split"`` equals it (e.g. "test")."""
    entries = _field(_read_json(json_path), "images", json_path)
    if split is not None:
        entries = [e for e in entries if e.get("split") == split]
    names = [os.path.join(e.get("filepath", ""), _field(e, "filename", "retrieval image")) for e in entries]
    images, _ = _load_images(json_path, names, image_root, image_size, whole=False)
    per_image = [[s["raw"] for s in _field(e, "sentences", "retrieval image")] for e in entries]
    captions = [c for caps in per_image for c in caps]
    owner = [i for i, caps in enumerate(per_image) for _ in caps]
    return RetrievalSplit(images, captions, owner, per_image)


def load_classification_split(json_path: str, *, image_root: Optional[str] = None,
                              image_size: Optional[int] = None) -> ClassificationSplit:
    """``{"classes", "templates", "images": [{"file_name", "label"}]}``."""
    data = _read_json(json_path)
    classes, templates = _field(data, "classes", json_path), _field(data, "templates", json_path)
    entries = _field(data, "images", json_path)
    labels = np.asarray([_field(e, "label", "classification image") for e in entries], dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{json_path}: labels must index classes (0..{len(classes) - 1})")
    images, _ = _load_images(json_path, [e["file_name"] for e in entries], image_root, image_size, whole=False)
    return ClassificationSplit(images, labels, list(classes), list(templates))


def _xyxy(bbox, scale) -> list[float]:
    x, y, w, h = bbox
    sx, sy = scale
    return [x * sx, y * sy, (x + w) * sx, (y + h) * sy]


def load_detection_split(json_path: str, *, image_root: Optional[str] = None,
                         image_size: Optional[int] = None) -> DetectionSplit:
    """COCO instances JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``)."""
    coco = _read_json(json_path)
    entries = _field(coco, "images", json_path)
    category_index = {c["id"]: i for i, c in enumerate(_field(coco, "categories", json_path))}
    images, scales = _load_images(json_path, [e["file_name"] for e in entries], image_root, image_size, whole=True)
    position = {e["id"]: i for i, e in enumerate(entries)}
    boxes = [[] for _ in entries]
    labels = [[] for _ in entries]
    for ann in _field(coco, "annotations", json_path):
        i = position[ann["image_id"]]
        boxes[i].append(_xyxy(ann["bbox"], scales[i]))
        labels[i].append(category_index[ann["category_id"]])
    return DetectionSplit(images, [e["id"] for e in entries], scales, coco,
                          [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
                          [np.asarray(lab, dtype=np.int64) for lab in labels])


def load_grounding_split(json_path: str, *, image_root: Optional[str] = None, image_size: Optional[int] = None,
                         split: Optional[str] = None) -> GroundingSplit:
    """RefCOCO-style JSON (``images``, ``refs`` with ``image_id``, ``bbox`` [x, y, w, h] and
    ``sentences[j]["sent"]``): one expression per sentence. split: keep refs whose ``"split"`` equals it."""
    data = _read_json(json_path)
    entries = _field(data, "images", json_path)
    refs = _field(data, "refs", json_path)
    if split is not None:
        refs = [r for r in refs if r.get("split") == split]
    images, scales = _load_images(json_path, [e["file_name"] for e in entries], image_root, image_size, whole=True)
    position = {e["id"]: i for i, e in enumerate(entries)}
    expressions, owner, boxes = [], [], []
    for ref in refs:
        i = position[_field(ref, "image_id", "ref")]
        for sentence in _field(ref, "sentences", "ref"):
            expressions.append(sentence["sent"])
            owner.append(i)
            boxes.append(_xyxy(ref["bbox"], scales[i]))
    return GroundingSplit(images, [e["id"] for e in entries], scales, expressions, owner,
                          np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
