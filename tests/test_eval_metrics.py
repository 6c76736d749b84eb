"""Evaluation metrics on plain tensors against references written from the definitions.

Retrieval: a slow per-query loop that sorts candidates (wrong ones first among equal scores,
the pessimistic tie rule). Classification: per-class Python loops. Grounding: IoU of
hand-computed boxes. Linear probe: the optimality condition of the regularised logistic loss,
with its gradient written by hand. Detection lives in test_eval_detection.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from loupe_core.eval.classification import class_embeddings, zero_shot_accuracy
from loupe_core.eval.grounding import grounding_accuracy, paired_box_iou
from loupe_core.eval.linear_probe import fit_linear_probe, linear_probe_accuracy
from loupe_core.eval.retrieval import retrieval_recalls


# ---------------------------------------------------------------- retrieval
def _rank_of_first_positive(scores, positive):
    """Position (0-based) of the first positive after sorting by score, negatives first on ties."""
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], positive[c]))
    return next(pos for pos, c in enumerate(order) if positive[c])


def reference_recalls(sim, text_image, ks=(1, 5, 10)):
    n_img, n_txt = len(sim), len(sim[0])
    out = {}
    for k in ks:
        i2t = [_rank_of_first_positive(sim[i], [text_image[t] == i for t in range(n_txt)]) < k
               for i in range(n_img)]
        t2i = [_rank_of_first_positive([sim[i][t] for i in range(n_img)], [text_image[t] == i for i in range(n_img)]) < k
               for t in range(n_txt)]
        out[f"i2t_r{k}"] = 100.0 * sum(i2t) / n_img
        out[f"t2i_r{k}"] = 100.0 * sum(t2i) / n_txt
    return out


@pytest.mark.parametrize("quantise", [False, True])
def test_retrieval_matches_loop_reference(rng_seed, quantise):
    g = torch.Generator().manual_seed(rng_seed)
    n_img, per = 12, 5
    img = F.normalize(torch.randn(n_img, 8, generator=g), dim=1)
    text_image = torch.arange(n_img).repeat_interleave(per)
    txt = F.normalize(img[text_image] + 0.9 * torch.randn(n_img * per, 8, generator=g), dim=1)
    sim = img @ txt.T
    if quantise:  # many exact ties
        sim = (sim * 2).round() / 2
    got = retrieval_recalls(sim, text_image)
    want = reference_recalls(sim.tolist(), text_image.tolist())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["rsum"] == pytest.approx(sum(want.values()))


def test_retrieval_perfect_and_constant_and_one_image():
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = (text_image[None, :] == torch.arange(3)[:, None]).float()
    assert all(v == 100.0 for k, v in retrieval_recalls(perfect, text_image).items() if k != "rsum")
    constant = retrieval_recalls(torch.zeros(3, 6), text_image, ks=(1, 2, 3))
    assert constant["i2t_r1"] == 0.0 and constant["t2i_r1"] == 0.0  # ties count against the model
    assert constant["t2i_r3"] == 100.0 and constant["i2t_r3"] == 0.0  # 4 wrong captions tie: rank 4
    single = retrieval_recalls(torch.tensor([[0.3, -1e30]]), torch.tensor([0, 0]))
    assert single["i2t_r1"] == 100.0 and single["t2i_r1"] == 100.0


def test_retrieval_huge_and_float64_scores():
    sim = torch.tensor([[1e300, -1e300], [-1e300, 1e300]], dtype=torch.float64)
    out = retrieval_recalls(sim, torch.tensor([0, 1]), ks=(1,))
    assert out["i2t_r1"] == 100.0 and out["t2i_r1"] == 100.0


@pytest.mark.parametrize("sim, text_image, match", [
    (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0, 0]), "sim contains NaN"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), "one entry per column"),
    (torch.zeros(2, 2), torch.tensor([0, 2]), r"image indices in \[0, 2\)"),
    (torch.zeros(2, 2), torch.tensor([0, 0]), "image 1 has no caption"),
])
def test_retrieval_errors(sim, text_image, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recalls(sim, text_image)


def test_retrieval_type_errors():
    with pytest.raises(TypeError, match="text_image"):
        retrieval_recalls(torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match="ks"):
        retrieval_recalls(torch.zeros(1, 1), torch.tensor([0]), ks=(0,))


# ---------------------------------------------------------------- classification
def test_class_embeddings_and_accuracy_match_loops(rng_seed):
    g = torch.Generator().manual_seed(rng_seed)
    C, T, d, N = 4, 3, 6, 20
    template_emb = torch.randn(C, T, d, generator=g, dtype=torch.float64)
    images = torch.randn(N, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (N,), generator=g)
    got = class_embeddings(template_emb)
    for c in range(C):
        mean = [sum(template_emb[c, t, k].item() / math.sqrt(sum(x * x for x in template_emb[c, t].tolist()))
                    for t in range(T)) / T for k in range(d)]
        norm = math.sqrt(sum(x * x for x in mean))
        assert got[c].tolist() == pytest.approx([x / norm for x in mean], abs=1e-12)
    correct = 0
    for n in range(N):
        cos = [sum(a * b for a, b in zip(images[n].tolist(), got[c].tolist())) for c in range(C)]
        correct += max(range(C), key=lambda c: cos[c]) == labels[n].item()
    assert zero_shot_accuracy(images, got, labels) == pytest.approx(100.0 * correct / N)


def test_classification_one_class_and_ties():
    assert zero_shot_accuracy(torch.randn(3, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([0, 0, 0])) == 100.0
    tie = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical classes: the first wins
    assert zero_shot_accuracy(torch.tensor([[1.0, 1.0]]), tie, torch.tensor([0])) == 100.0


def test_classification_errors():
    with pytest.raises(ValueError, match="template_emb contains inf"):
        class_embeddings(torch.full((1, 1, 2), float("inf")))
    with pytest.raises(ValueError, match="labels must lie"):
        zero_shot_accuracy(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="class_emb must have"):
        zero_shot_accuracy(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))


# ---------------------------------------------------------------- grounding
def test_paired_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0],
                      [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 4.0],
                      [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    # overlap 1x1 of two 2x2 boxes: 1 / 7; identical: 1; disjoint: 0; half: 8/16; both empty: 0
    assert paired_box_iou(a, b).tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.5, 0.0])


def test_grounding_accuracy_hand_computed():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]],
                          [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]],
                          [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]])
    scores = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.7]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    # row 0: right box; row 1: top box disjoint from truth; row 2: half box, IoU exactly 0.5 counts
    assert grounding_accuracy(boxes, scores, gt) == pytest.approx(200.0 / 3)
    assert grounding_accuracy(boxes, scores, gt, iou_threshold=0.51) == pytest.approx(100.0 / 3)
    tie = torch.zeros(3, 2)  # ties: the first region
    assert grounding_accuracy(boxes, tie, gt) == pytest.approx(200.0 / 3)


def test_grounding_errors():
    with pytest.raises(ValueError, match="region_boxes must have shape"):
        grounding_accuracy(torch.zeros(1, 3, 4), torch.zeros(1, 2), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="region_scores contains NaN"):
        grounding_accuracy(torch.zeros(1, 1, 4), torch.full((1, 1), float("nan")), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="a and b"):
        paired_box_iou(torch.zeros(2, 4), torch.zeros(3, 4))


# ---------------------------------------------------------------- linear probe
def test_linear_probe_reaches_the_optimum(rng_seed):
    g = torch.Generator().manual_seed(rng_seed)
    N, d, C, lam = 40, 5, 3, 1e-2
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    probe = fit_linear_probe(x, y, C, weight_decay=lam)
    W, b = probe.weight, probe.bias
    # gradient of mean CE + lam/2 ||W||^2, by hand: X^T (P - Y) / N + lam W and sum(P - Y) / N
    logits = x @ W.T + b
    p = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    resid = p - F.one_hot(y, C).double()
    assert (x.T @ resid / N + lam * W.T).abs().max() < 1e-6
    assert (resid.sum(dim=0) / N).abs().max() < 1e-6
    again = fit_linear_probe(x, y, C, weight_decay=lam)
    assert torch.equal(again.weight, W) and torch.equal(again.bias, b)  # deterministic


def test_linear_probe_accuracy_separable_and_one_class():
    x = torch.tensor([[-2.0, 0.0], [-1.0, 0.5], [1.0, 0.0], [2.0, -0.5]])
    y = torch.tensor([0, 0, 1, 1])
    assert linear_probe_accuracy(x, y, torch.tensor([[-3.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1]), 2) == 100.0
    assert linear_probe_accuracy(x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long), 1) == 100.0


def test_linear_probe_errors():
    with pytest.raises(ValueError, match="num_classes"):
        fit_linear_probe(torch.zeros(2, 2), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="features contains NaN"):
        fit_linear_probe(torch.full((2, 2), float("nan")), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="test_features must have width"):
        linear_probe_accuracy(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2, 3), torch.tensor([0, 1]), 2)
