"""Box IoU and greedy NMS of the region head (loupe_core/model/region_head.py) against references.

``box_iou``: a NumPy loop over every pair, written from the definition (IoU of two empty boxes
taken as 0, as box_iou's clamped union gives; torchvision gives NaN there), and
``torchvision.ops.box_iou`` on boxes of positive area. ``greedy_nms``: ``torchvision.ops.nms``
(which keeps boxes in decreasing score and drops those with IoU > threshold to a kept one, the
rule greedy_nms applies), compared on the kept list before greedy_nms's fill-up, and a NumPy loop of the same rule on
random boxes (test_model.py has one on anchor boxes).

torchvision is optional. PyPI's torchvision beside the CPU wheel of torch imports only through
``loupe_core.model.towers.import_timm`` (which needs timm; see its docstring), and then its
compiled ops, ``nms`` among them, do not load: the torchvision tests skip with the reason.
"""
import numpy as np
import pytest
import torch

from loupe_core.model.region_head import anchor_boxes, box_iou, greedy_nms


def _torchvision_ops():
    try:
        import torchvision.ops
        return torchvision.ops
    except ImportError as exc:
        pytest.skip(f"torchvision is not installed ({exc})")
    except RuntimeError as exc:  # PyPI's torchvision beside the CPU torch: see the module docstring
        if "torchvision::nms" not in str(exc):
            raise
    try:
        from loupe_core.model.towers import import_timm

        import_timm()  # defines the two missing op schemas and imports torchvision again
    except ValueError as exc:
        pytest.skip(f"torchvision does not import beside this torch, and timm is missing: {exc}")
    import torchvision.ops
    return torchvision.ops


def _random_boxes(g, n, size=32.0, degenerate=False):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2
    if degenerate:  # some zero-width / zero-height / empty boxes, some repeated boxes
        wh[::5, 0] = 0
        wh[1::7] = 0
        xy[3::6], wh[3::6] = xy[0], wh[0]
    else:
        wh = wh + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def numpy_box_iou(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.zeros((len(a), len(b)))
    for i, (ax0, ay0, ax1, ay1) in enumerate(a):
        for j, (bx0, by0, bx1, by1) in enumerate(b):
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            inter = iw * ih
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@pytest.mark.parametrize("degenerate", [False, True])
def test_box_iou_against_a_numpy_loop(rng_seed, degenerate):
    g = torch.Generator().manual_seed(rng_seed)
    a, b = _random_boxes(g, 23, degenerate=degenerate), _random_boxes(g, 17, degenerate=degenerate)
    np.testing.assert_allclose(box_iou(a, b).numpy(), numpy_box_iou(a, b), rtol=1e-12, atol=1e-12)
    # touching boxes share an edge, not an area; a box inside another: area ratio
    touching = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0], [0.5, 0.5, 1.5, 1.5]])
    np.testing.assert_allclose(box_iou(touching, touching).numpy(), numpy_box_iou(touching, touching), atol=1e-7)
    assert box_iou(touching, touching)[0, 1] == 0 and box_iou(touching, touching)[0, 2] == pytest.approx(0.25)


def test_box_iou_against_torchvision(rng_seed):
    ops = _torchvision_ops()
    g = torch.Generator().manual_seed(rng_seed)
    a, b = _random_boxes(g, 31), _random_boxes(g, 19)
    torch.testing.assert_close(box_iou(a, b), ops.box_iou(a, b), rtol=1e-12, atol=1e-12)
    boxes = anchor_boxes((4, 4), 8.0, [[1, 1], [2, 2], [3, 3], [2, 1]])
    torch.testing.assert_close(box_iou(boxes, boxes), ops.box_iou(boxes, boxes))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_greedy_nms_against_torchvision(rng_seed, threshold):
    ops = _torchvision_ops()
    g = torch.Generator().manual_seed(rng_seed)
    boxes = _random_boxes(g, 40).float()
    scores = torch.randperm(40, generator=g).float() / 40  # distinct scores: one order for both
    try:
        want = ops.nms(boxes, scores, threshold).tolist()
    except RuntimeError as exc:
        if "custom C++ ops" not in str(exc):
            raise
        pytest.skip(f"torchvision imports, but its compiled ops (nms) do not load beside this torch: {exc}"[:300])
    iou = box_iou(boxes, boxes)
    got = greedy_nms(scores, iou, len(want), threshold).tolist()
    assert got == want
    # asked for more than survive: the survivors first, then the best suppressed ones
    everything = greedy_nms(scores, iou, 40, threshold).tolist()
    assert everything[:len(want)] == want
    rest = [int(i) for i in torch.argsort(scores, descending=True) if int(i) not in want]
    assert everything[len(want):] == rest


def numpy_nms(boxes, scores, threshold):
    """Indices kept by greedy NMS: in decreasing score, keep a box unless IoU > threshold to a kept one."""
    iou = numpy_box_iou(boxes, boxes)
    kept = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if all(iou[i, j] <= threshold for j in kept):
            kept.append(int(i))
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_greedy_nms_against_a_numpy_loop(rng_seed, threshold):
    g = torch.Generator().manual_seed(rng_seed)
    boxes = _random_boxes(g, 40, degenerate=True)
    scores = torch.randn(40, generator=g, dtype=torch.float64)
    want = numpy_nms(boxes.numpy(), scores.numpy(), threshold)
    iou = box_iou(boxes, boxes)
    for top_k in (1, 3, len(want)):
        assert greedy_nms(scores, iou, top_k, threshold).tolist() == want[:top_k]
    everything = greedy_nms(scores, iou, 40, threshold).tolist()
    assert everything == want + [int(i) for i in np.argsort(-scores.numpy(), kind="stable") if int(i) not in want]
