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
