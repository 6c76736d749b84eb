"""Zero-shot object detection (spec section 7): mAP at IoU 0.3 and 0.5 through pycocotools.

Tensor level: :func:`detection_map` runs ``COCOeval`` with ``iouThrs`` set to one threshold at a
time and reads AP (area "all", 100 detections) from its accumulated precision table, exactly as
``COCOeval.summarize`` does. Model level: :func:`evaluate_detection` scores every region of the
region head's top-K against every class prompt ("a photo of a {class}") by cosine similarity;
each (region, class) pair is one detection with that score (**[choice]** as a multi-class
detector emits per-class boxes; COCOeval keeps the 100 best per image and class).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Sequence

import numpy as np
import torch

from .encode import encode_text_list
from .grounding import region_proposals

IOU_THRESHOLDS = (0.3, 0.5)
PROMPT = "a photo of a {}"


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_gt(gt: dict) -> None:
    if not isinstance(gt, dict):
        raise TypeError(f"gt must be a COCO instances dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"gt is missing {key!r} (a COCO instances dict needs images, annotations, categories)")
    if not gt["annotations"]:
        raise ValueError("gt holds no annotations: mAP is undefined")


def _check_detections(detections: Sequence[dict], gt: dict) -> None:
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    for n, det in enumerate(detections):
        missing = {"image_id", "category_id", "bbox", "score"} - set(det)
        if missing:
            raise ValueError(f"detections[{n}] is missing {sorted(missing)}")
        if det["image_id"] not in image_ids:
            raise ValueError(f"detections[{n}]: image_id {det['image_id']!r} is not in gt")
        if det["category_id"] not in category_ids:
            raise ValueError(f"detections[{n}]: category_id {det['category_id']!r} is not in gt")
        if not np.all(np.isfinite(det["bbox"])) or not np.isfinite(det["score"]):
            raise ValueError(f"detections[{n}] has a NaN or inf bbox or score")


def detection_map(gt: dict, detections: Sequence[dict], iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
    """COCO-style mAP (percent) at each IoU threshold: ``{"map@0.3": ..., "map@0.5": ...}``.

    gt: COCO instances dict (``images``, ``annotations`` with ``bbox`` [x, y, w, h],
    ``category_id``, ``categories``); detections: dicts with ``image_id``, ``category_id``,
    ``bbox`` [x, y, w, h] and ``score``. Categories without ground truth are left out of the mean
    (COCOeval's rule). No detections at all gives 0.
    """
    from pycocotools.cocoeval import COCOeval

    _check_gt(gt)
    _check_detections(detections, gt)
    gt = {**gt, "annotations": [{"iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a} for a in gt["annotations"]]}
    gt.setdefault("info", {})
    out = {}
    for threshold in iou_thresholds:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"iou_thresholds must lie in (0, 1), got {threshold}")
        name = f"map@{threshold:g}"
        if not detections:
            out[name] = 0.0
            continue
        coco_gt = _coco(gt)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(d, bbox=[float(v) for v in d["bbox"]], score=float(d["score"]))
                                       for d in detections])
            ev = COCOeval(coco_gt, coco_dt, "bbox")
            ev.params.iouThrs = np.array([threshold])
            ev.evaluate()
            ev.accumulate()
        # precision [T, R, K, A, M]: the one threshold, all recall points and classes, area "all", 100 dets
        precision = ev.eval["precision"][0, :, :, ev.params.areaRngLbl.index("all"), ev.params.maxDets.index(100)]
        valid = precision[precision > -1]
        out[name] = 100.0 * float(valid.mean()) if valid.size else 0.0
    return out


def region_detections(boxes: torch.Tensor, region_emb: torch.Tensor, class_emb: torch.Tensor,
                      image_ids: Sequence[int], category_ids: Sequence[int], scales) -> list[dict]:
    """COCO detections of every (region, class) pair, scored by cosine similarity.

    boxes float[N, K, 4] xyxy model-input pixels; region_emb float[N, K, d]; class_emb float[C, d];
    scales float[N, 2] (sx, sy): model-input pixels per original pixel (boxes are divided by it).
    """
    scores = region_emb.double() @ class_emb.double().T  # [N, K, C]
    scales = torch.as_tensor(scales, dtype=torch.float64).reshape(-1, 1, 2)
    xyxy = boxes.double() / scales.repeat(1, 1, 2)
    xywh = torch.cat([xyxy[..., :2], xyxy[..., 2:] - xyxy[..., :2]], dim=-1)
    out = []
    for n, image_id in enumerate(image_ids):
        for k in range(boxes.shape[1]):
            box = xywh[n, k].tolist()
            for c, category_id in enumerate(category_ids):
                out.append({"image_id": image_id, "category_id": category_id, "bbox": box,
                            "score": float(scores[n, k, c])})
    return out


def evaluate_detection(model, split, tokenizer, *, top_k: int, device="cpu", batch_size: int = 64,
                       progress=None) -> dict:
    """Model level: ``{"map@0.3", "map@0.5"}`` on a detection split.

    split: images uint8 ``[N, S, S, 3]``, ``image_ids`` (COCO ids of the images, in order),
    ``scales`` float[N, 2], ``coco`` (the COCO instances dict with the original boxes).
    """
    categories = split.coco["categories"]
    class_emb = encode_text_list(model, tokenizer, [PROMPT.format(c["name"]) for c in categories],
                                 device=device, batch_size=batch_size, progress=progress, desc="class prompts")
    boxes, emb, _ = region_proposals(model, split.images, top_k=top_k, device=device, batch_size=batch_size,
                                     progress=progress, desc="detection regions")
    detections = region_detections(boxes, emb, class_emb, split.image_ids, [c["id"] for c in categories],
                                   split.scales)
    return detection_map(split.coco, detections)
