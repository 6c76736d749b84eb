"""The fine-grained contrastive term against a loop written from its definition; config wiring."""
import math

import pytest

import torch
import torch.nn.functional as F

from loupe_core.objective.losses import fine_contrastive_loss, late_interaction_similarity


def _reference_similarity(q, qmask, p):
    """s[t, i] = mean over present queries of t of max over patches of i of the cosine (float64 loops)."""
    Bt, Bi = q.shape[0], p.shape[0]
    out = torch.zeros(Bt, Bi, dtype=torch.float64)
    for t in range(Bt):
        present = [k for k in range(q.shape[1]) if qmask[t, k]]
        for i in range(Bi):
            best = [max(float(q[t, k].double() @ p[i, j].double()) for j in range(p.shape[1])) for k in present]
            out[t, i] = sum(best) / len(best) if best else 0.0
    return out


def test_late_interaction_similarity_matches_loops():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 4, 5, generator=g), dim=-1)
    p = F.normalize(torch.randn(2, 6, 5, generator=g), dim=-1)
    qmask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    got = late_interaction_similarity(q, qmask, p)
    torch.testing.assert_close(got.double(), _reference_similarity(q, qmask, p), atol=1e-6, rtol=1e-6)


def test_late_interaction_similarity_without_query_slots_is_zero_with_graph():
    q = torch.zeros(3, 0, 5, requires_grad=True)
    p = torch.randn(2, 6, 5, requires_grad=True)
    s = late_interaction_similarity(q, torch.zeros(3, 0, dtype=torch.bool), p)
    s.sum().backward()
    assert s.shape == (3, 2) and float(s.abs().sum()) == 0.0 and float(p.grad.abs().sum()) == 0.0


def test_fine_contrastive_loss_is_the_symmetric_cross_entropy_of_the_kept_captions():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
    p = F.normalize(torch.randn(4, 5, 8, generator=g), dim=-1)
    qmask = torch.ones(4, 3, dtype=torch.bool)
    qmask[2] = False  # caption without a query: out of both directions
    scale = torch.tensor(7.0)
    got = fine_contrastive_loss(q, qmask, p, scale)
    s = 7.0 * _reference_similarity(q, qmask, p)
    keep = [0, 1, 3]
    t2i = -sum(math.log(math.exp(s[t, t]) / sum(math.exp(s[t, i]) for i in range(4))) for t in keep) / 3
    i2t = -sum(math.log(math.exp(s[i, i]) / sum(math.exp(s[t, i]) for t in keep)) for i in keep) / 3
    assert abs(float(got) - 0.5 * (t2i + i2t)) < 1e-5
    # no query anywhere: a zero connected to the graph
    p.requires_grad_(True)
    zero = fine_contrastive_loss(q, torch.zeros_like(qmask), p, scale)
    zero.backward()
    assert float(zero) == 0.0 and p.grad is not None and float(p.grad.abs().sum()) == 0.0


def test_fine_contrast_term_trains_patch_embeddings():
    from loupe_core.objective import LoupeObjective

    from test_model import TINY, make_batch  # noqa: E402  (the model tests' tiny config and batch)

    objective = LoupeObjective(TINY, dict(cmc=True, fine_contrast=0.5, fine_queries="phrases"))
    out = objective(make_batch())
    assert "fine" in out.terms and torch.isfinite(out.total)
    out.total.backward()
    assert objective.model.image_tower.parameters().__next__().grad is not None


def test_pacl_similarity_and_loss_match_a_loop_from_the_definition():
    from loupe_core.objective.losses import pacl_loss, pacl_similarity

    g = torch.Generator().manual_seed(3)
    text = torch.nn.functional.normalize(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=-1)
    patches = torch.nn.functional.normalize(torch.randn(3, 4, 5, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(7.0, dtype=torch.float64)
    want = torch.zeros(3, 3, dtype=torch.float64)
    for t in range(3):
        for i in range(3):
            cos = [float(patches[i, p] @ text[t]) for p in range(4)]
            w = torch.softmax(scale * torch.tensor(cos, dtype=torch.float64), dim=0)
            pooled = sum(w[p] * patches[i, p] for p in range(4))
            want[t, i] = pooled @ text[t] / pooled.norm()
    torch.testing.assert_close(pacl_similarity(text, patches, scale), want)
    logits = scale * want
    labels = torch.arange(3)
    ce = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(pacl_loss(text, patches, scale), ce)
    with pytest.raises(ValueError, match="same pairs"):
        pacl_loss(text[:2], patches, scale)


def test_pacl_term_trains_patch_embeddings():
    from loupe_core.objective import LoupeObjective

    from test_model import TINY, make_batch  # noqa: E402

    objective = LoupeObjective(TINY, dict(cmc=False, pacl=1.0))
    out = objective(make_batch())
    assert set(out.terms) == {"pacl"} and torch.isfinite(out.total)
    out.total.backward()
    assert objective.model.image_tower.parameters().__next__().grad is not None
    assert objective.model.region_logit_scale.grad is not None


def test_simclr_loss_matches_nt_xent_written_out():
    from loupe_core.objective.losses import simclr_loss

    g = torch.Generator().manual_seed(5)
    a = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    z = torch.cat([a, b])
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = [float(z[i] @ z[j]) / 0.5 for j in range(6) if j != i]
        others = [j for j in range(6) if j != i]
        total += -logits[others.index(positive)] + math.log(sum(math.exp(x) for x in logits))
    assert float(simclr_loss(a, b, 0.5)) == pytest.approx(total / 6, rel=1e-12)
    with pytest.raises(ValueError, match="view_a"):
        simclr_loss(a, b[:2], 0.5)


def test_random_views_crop_and_flip_as_drawn():
    from loupe_core.data.augment import random_view

    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    whole = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.9], [1.0, 0.5, 0.5, 0.5, 0.1]])   # area 1, ratio 1: no crop
    out = random_view(images, whole)
    torch.testing.assert_close(out[0], images[0])                    # no flip
    torch.testing.assert_close(out[1], images[1].flip(-1))           # flipped
    small = random_view(images, torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.9]] * 2))   # smallest area, top-left
    assert small.shape == images.shape and float(small[0, 0, 0, 0]) < float(images[0].mean())
    with pytest.raises(ValueError, match="uniforms"):
        random_view(images, whole[:1])


def test_simclr_term_trains_the_image_tower_and_its_head():
    from loupe_core.objective import LoupeObjective, StepContext

    from test_model import TINY, make_batch  # noqa: E402

    objective = LoupeObjective(TINY, dict(cmc=True, simclr=1.0))
    out = objective(make_batch(), StepContext(index=3))
    assert set(out.terms) == {"cmc", "simclr"} and torch.isfinite(out.total)
    out.total.backward()
    assert objective.terms["simclr"].head[0].weight.grad is not None
    again = objective(make_batch(), StepContext(index=3)).terms["simclr"]
    assert float(again) == pytest.approx(float(out.terms["simclr"]))   # the views are a function of (step, row)
