"""Candidate boxes that can fit small objects (issue 31 item 3): sub-cell anchor centres, anchor
boxes in continuous pixels (``model.region_boxes="anchors"``), and anchors fitted to box shapes,
each against boxes and IoUs worked out by hand."""
import pytest
import torch

from loupe_core.model import LoupeModel
from loupe_core.model.anchor_fit import fit_anchors, mean_best_iou, shape_iou
from loupe_core.model.config import ModelConfig
from loupe_core.model.region_head import RegionHead, with_offsets

GRID, CELL = (4, 4), 4.0  # 16 x 16 pixels, cell centres at 2, 6, 10, 14


def _geometry(anchors, boxes):
    return RegionHead(8, anchors, boxes=boxes).geometry(GRID, CELL, "cpu", torch.float64)


def _cells(mask):
    return sorted(torch.nonzero(mask).squeeze(1).tolist())


def test_shifted_small_anchor_box_by_hand():
    # anchor 1.25 x 1.25 cells shifted by (+0.25, -0.25) cells, at cell (row 1, col 2) = index 6:
    # centre (10 + 1, 6 - 1) = (11, 5), half side 2.5 px -> [8.5, 2.5, 13.5, 7.5]; only the
    # centre (10, 6) of cell 6 lies inside.
    anchors = [[1.25, 1.25, 0.25, -0.25]]
    g = _geometry(anchors, "anchors")
    assert g.boxes[6].tolist() == [8.5, 2.5, 13.5, 7.5]
    assert _cells(g.masks[6]) == [6]
    assert _geometry(anchors, "cells").boxes[6].tolist() == [8.0, 4.0, 12.0, 8.0]  # the cell's rectangle


def test_clipped_anchor_box_and_candidate_order_by_hand():
    # two anchors: index = cell * 2 + anchor. Anchor 1 = 2.5 x 2.5 shifted (-0.25, -0.25) at cell 0:
    # centre (1, 1), half 5 -> [-4, -4, 6, 6] clipped to [0, 0, 6, 6]; cell centres inside: (2, 2) only.
    anchors = [[2.0, 2.0], [2.5, 2.5, -0.25, -0.25]]
    g = _geometry(anchors, "anchors")
    assert g.boxes[1].tolist() == [0.0, 0.0, 6.0, 6.0] and _cells(g.masks[1]) == [0]
    # anchor 0 = 2 x 2 at cell (1, 1) = index 5 -> candidate 10: centre (6, 6), box [2, 2, 10, 10];
    # half-open, so centres x, y in {2, 6}: cells 0, 1, 4, 5, whose rectangle is [0, 0, 8, 8].
    assert g.boxes[10].tolist() == [2.0, 2.0, 10.0, 10.0] and _cells(g.masks[10]) == [0, 1, 4, 5]
    assert _geometry(anchors, "cells").boxes[10].tolist() == [0.0, 0.0, 8.0, 8.0]
    # the NMS IoU is the boxes' IoU: [2,2,10,10] vs [0,0,6,6]: 16 / (64 + 36 - 16)
    assert float(g.iou[10, 1]) == pytest.approx(16 / 84)


def test_with_offsets_by_hand():
    assert with_offsets([[2, 1]], 1) == [[2.0, 1.0, 0.0, 0.0]]
    assert with_offsets([[2, 1]], 2) == [[2.0, 1.0, -0.25, -0.25], [2.0, 1.0, 0.25, -0.25],
                                         [2.0, 1.0, -0.25, 0.25], [2.0, 1.0, 0.25, 0.25]]
    third = 1 / 3
    assert [a[2] for a in with_offsets([[1, 1]], 3)[:3]] == pytest.approx([-third, 0.0, third])
    with pytest.raises(ValueError, match="per_side"):
        with_offsets([[1, 1]], 0)


def test_sub_cell_centres_reach_an_object_between_cell_centres():
    # a 6 x 6 px object at [7, 5, 13, 11] (centre (10, 8), between cell centres): the best 1.5-cell
    # (6 px) candidate centred on a cell centre ((10, 6) or (10, 10)) overlaps it 6 x 4 (IoU
    # 24 / 48 = 0.5); shifted by (0, -0.5) cells from (10, 10) it fits exactly. Cell rectangles
    # reach 24 / 44 at best (cells 1 x 2: [8, 4, 12, 12]).
    obj = torch.tensor([[7.0, 5.0, 13.0, 11.0]], dtype=torch.float64)
    from loupe_core.model.region_head import box_iou

    centred = box_iou(_geometry([[1.5, 1.5]], "anchors").boxes, obj).max()
    shifted = box_iou(_geometry([[1.5, 1.5, 0.0, -0.5]], "anchors").boxes, obj).max()
    rects = box_iou(_geometry([[1.5, 1.5], [2.0, 2.0], [1.0, 2.0]], "cells").boxes, obj).max()
    assert float(centred) == pytest.approx(0.5) and float(shifted) == pytest.approx(1.0)
    assert float(rects) == pytest.approx(24 / 44)


def test_model_config_checks_the_new_keys():
    cfg = ModelConfig(anchors=[[2, 2, 0.5, -0.5]], region_boxes="anchors")
    assert cfg.anchors == [[2.0, 2.0, 0.5, -0.5]]
    model = LoupeModel({**cfg.to_dict(), "image_size": 16, "patch_size": 4, "image_dim": 8, "image_heads": 1,
                        "text_dim": 8, "text_heads": 1, "embed_dim": 8, "text_vocab_size": 20})
    assert model.region_head.boxes == "anchors"
    for bad in ([[2, 2, 0.6, 0]], [[2, 2, 0]], [[0, 2]], [[2, 2, float("nan"), 0]]):
        with pytest.raises(ValueError, match="anchors"):
            ModelConfig(anchors=bad)
    with pytest.raises(ValueError, match="region_boxes"):
        ModelConfig(region_boxes="pixels")


def test_shape_iou_by_hand():
    iou = shape_iou(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 2.0], [2.0, 2.0]]))
    # [2,1] vs [1,2]: 1 / (2 + 2 - 1); [2,1] vs [2,2]: 2 / 4; [1,1] vs [1,2]: 1 / 2; [1,1] vs [2,2]: 1 / 4
    assert iou.flatten().tolist() == pytest.approx([1 / 3, 0.5, 0.5, 0.25])


def test_fit_anchors_finds_the_clusters():
    wh = torch.tensor([[1.0, 1.0]] * 10 + [[1.1, 0.9]] * 5 + [[3.0, 2.0]] * 10 + [[3.2, 2.1]] * 3)
    anchors = fit_anchors(wh, 2, seed=4)
    assert anchors[0] == pytest.approx([1.0, 1.0]) and anchors[1] == pytest.approx([3.0, 2.0])  # medians
    exact = torch.tensor([[1.0, 1.0]] * 4 + [[3.0, 2.0]] * 4)
    assert mean_best_iou(exact, fit_anchors(exact, 2)) == pytest.approx(1.0)
    assert fit_anchors(wh, 2, seed=4) == anchors
    for bad in (0, 5):
        with pytest.raises(ValueError, match="k must"):
            fit_anchors(wh, bad)
    with pytest.raises(ValueError, match="wh"):
        fit_anchors(torch.tensor([[1.0, 0.0]]), 1)


def test_dilate_cells_by_hand():
    from loupe_core.model.region_head import dilate_cells

    mask = torch.zeros(16, dtype=torch.bool)
    mask[5] = True  # cell (1, 1) of the 4 x 4 grid: grows to rows 0-2, cols 0-2
    assert _cells(dilate_cells(mask[None], GRID)[0]) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    corner = torch.zeros(16, dtype=torch.bool)
    corner[15] = True
    assert _cells(dilate_cells(corner[None], GRID)[0]) == [10, 11, 14, 15]


def test_refine_boxes_by_hand():
    from loupe_core.model.region_head import refine_boxes

    boxes = torch.tensor([[[0.0, 0.0, 6.0, 6.0], [4.0, 4.0, 12.0, 12.0], [0.0, 0.0, 8.0, 8.0]]], dtype=torch.float64)
    weights = torch.zeros(1, 3, 16, dtype=torch.float64)
    weights[0, 0, 5], weights[0, 0, 6] = 1.0, 1.0  # centres (6, 6) and (10, 6): mean (8, 6)
    weights[0, 1, 0], weights[0, 1, 15] = 3.0, 1.0  # (2, 2) x 3 and (14, 14): mean (5, 5)
    out = refine_boxes(boxes, weights, GRID, CELL)  # the third box has no weight: unchanged
    assert out[0, 0].tolist() == [5.0, 3.0, 11.0, 9.0]
    assert out[0, 1].tolist() == [1.0, 1.0, 9.0, 9.0]
    assert out[0, 2].tolist() == [0.0, 0.0, 8.0, 8.0]
    edge = torch.zeros(1, 1, 16, dtype=torch.float64)
    edge[0, 0, 15] = 1.0  # centre (14, 14), half 4 -> [10, 10, 18, 18] clipped to the 16-px image
    assert refine_boxes(boxes[:, 1:2], edge, GRID, CELL)[0, 0].tolist() == [10.0, 10.0, 16.0, 16.0]


def test_grounding_refined_boxes_match_a_loop_over_cells():
    """``eval.grounding.refined_boxes`` against the centroid written out cell by cell."""
    from loupe_core.eval.grounding import refined_boxes
    from loupe_core.model.loupe import Regions

    torch.manual_seed(3)
    R, K, N, d = 2, 3, 16, 5
    patch = torch.nn.functional.normalize(torch.randn(R, N, d, dtype=torch.float64), dim=-1)
    query = torch.nn.functional.normalize(torch.randn(R, d, dtype=torch.float64), dim=-1)
    masks = torch.zeros(R, K, N, dtype=torch.bool)
    masks[0, 0, 5] = masks[0, 1, 0] = masks[0, 2, 10] = masks[0, 2, 11] = True
    masks[1, 0, 15] = masks[1, 1, 3] = masks[1, 2, 6] = True
    boxes = torch.tensor([[0.0, 0.0, 6.0, 6.0]], dtype=torch.float64).expand(R, K, 4)
    regions = Regions(boxes, torch.zeros(R, K), masks, torch.zeros(R, K, d))
    got = refined_boxes(patch, regions, query, GRID, CELL)
    for r in range(R):
        cos = [float(patch[r, n] @ query[r]) for n in range(N)]
        mean = sum(cos) / N
        for k in range(K):
            own = [(n // 4, n % 4) for n in range(N) if masks[r, k, n]]
            sx = sy = total = 0.0
            for n in range(N):
                row, col = divmod(n, 4)
                if any(abs(row - a) <= 1 and abs(col - b) <= 1 for a, b in own):
                    w = max(cos[n] - mean, 0.0)
                    sx, sy, total = sx + w * (col * 4 + 2), sy + w * (row * 4 + 2), total + w
            want = [sx / total - 3, sy / total - 3, sx / total + 3, sy / total + 3] if total > 0 else [0, 0, 6, 6]
            want = [min(max(v, 0.0), 16.0) for v in want]
            assert got[r, k].tolist() == pytest.approx(want), (r, k)
