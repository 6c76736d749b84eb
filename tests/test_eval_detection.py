"""Detection mAP through pycocotools on synthetic detections whose AP is worked out by hand.

The hand computation follows the COCO definition: precision made monotone from the right,
then averaged over the 101 recall points 0, 0.01, ..., 1.
"""
import pytest
import torch

from loupe_core.eval.detection import detection_map, region_detections


def coco_gt(boxes_per_image, category_of=None):
    """COCO dict: image i holds boxes_per_image[i] (xywh); category 1 unless category_of[(i, k)]."""
    category_of = category_of or {}
    images = [{"id": i + 1, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in range(len(boxes_per_image))]
    anns = [{"id": n, "image_id": i + 1, "bbox": box, "category_id": category_of.get((i, k), 1)}
            for n, (i, k, box) in enumerate(((i, k, b) for i, bs in enumerate(boxes_per_image)
                                             for k, b in enumerate(bs)), start=1)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def det(image, box, score, category=1):
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


def ap_101(precisions, recalls):
    """COCO AP from the precision/recall after each detection (sorted by score)."""
    interp = list(precisions)
    for n in range(len(interp) - 2, -1, -1):
        interp[n] = max(interp[n], interp[n + 1])
    total = 0.0
    for t in range(101):
        r = t / 100
        reached = [n for n, rec in enumerate(recalls) if rec >= r - 1e-12]
        total += interp[reached[0]] if reached else 0.0
    return 100.0 * total / 101


def test_perfect_detections_give_100():
    gt = coco_gt([[[0, 0, 10, 10], [50, 50, 20, 10]], [[5, 5, 30, 30]]], {(0, 1): 2})
    dets = [det(1, [0, 0, 10, 10], 0.9), det(1, [50, 50, 20, 10], 0.8, 2), det(2, [5, 5, 30, 30], 0.7)]
    assert detection_map(gt, dets) == {"map@0.3": pytest.approx(100.0), "map@0.5": pytest.approx(100.0)}


def test_false_positive_between_hits_matches_hand_computed_ap():
    gt = coco_gt([[[0, 0, 10, 10], [40, 40, 10, 10]]])
    dets = [det(1, [0, 0, 10, 10], 0.9), det(1, [80, 80, 10, 10], 0.8), det(1, [40, 40, 10, 10], 0.7)]
    want = ap_101([1.0, 0.5, 2 / 3], [0.5, 0.5, 1.0])
    assert want == pytest.approx(100.0 * (51 + 50 * 2 / 3) / 101)
    got = detection_map(gt, dets)
    assert got["map@0.3"] == pytest.approx(want) and got["map@0.5"] == pytest.approx(want)


def test_iou_threshold_decides_a_loose_box():
    gt = coco_gt([[[0, 0, 10, 10]]])
    loose = [det(1, [0, 0, 10, 4], 0.5)]  # IoU 40 / 100 = 0.4
    assert detection_map(gt, loose) == {"map@0.3": pytest.approx(100.0), "map@0.5": pytest.approx(0.0)}


def test_mean_over_categories_with_ground_truth_only():
    gt = coco_gt([[[0, 0, 10, 10], [40, 40, 10, 10]]], {(0, 1): 2})
    dets = [det(1, [0, 0, 10, 10], 0.9), det(1, [40, 40, 10, 10], 0.9, 1)]  # class b missed
    assert detection_map(gt, dets, iou_thresholds=(0.5,))["map@0.5"] == pytest.approx(50.0)


def test_no_detections_and_bad_input():
    gt = coco_gt([[[0, 0, 10, 10]]])
    assert detection_map(gt, []) == {"map@0.3": 0.0, "map@0.5": 0.0}
    with pytest.raises(ValueError, match="image_id 7"):
        detection_map(gt, [det(7, [0, 0, 1, 1], 0.1)])
    with pytest.raises(ValueError, match="NaN or inf"):
        detection_map(gt, [det(1, [0, 0, 1, 1], float("nan"))])
    with pytest.raises(ValueError, match="no annotations"):
        detection_map({**gt, "annotations": []}, [])
    with pytest.raises(ValueError, match="iou_thresholds"):
        detection_map(gt, [det(1, [0, 0, 1, 1], 0.1)], iou_thresholds=(1.5,))


def test_region_detections_scale_boxes_and_score_every_class():
    boxes = torch.tensor([[[2.0, 4.0, 6.0, 8.0]]])  # model pixels, xyxy
    region_emb = torch.tensor([[[1.0, 0.0]]])
    class_emb = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    dets = region_detections(boxes, region_emb, class_emb, [5], [1, 2], torch.tensor([[2.0, 4.0]]))
    assert [d["category_id"] for d in dets] == [1, 2]
    assert dets[0]["bbox"] == pytest.approx([1.0, 1.0, 2.0, 1.0])
    assert [d["score"] for d in dets] == pytest.approx([0.6, -1.0])
