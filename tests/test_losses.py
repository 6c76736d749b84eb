"""L_CMC, L_TSA, L_FSA, L_UNSIL against float64 loop re-implementations of the spec's equations."""
import math

import pytest
import torch

from loupe_core.objective.losses import ContrastiveBank, cmc_loss, fsa_loss, tsa_loss, unsil_loss


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_cmc(img, txt, scale):
    """Eq. 1 written out: -1/(2N) sum_i [log softmax_j(s_ij)[i] + log softmax_j(s_ji)[i]]."""
    n = img.shape[0]
    s = [[scale * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row = [s[i][j] for j in range(n)]
        col = [s[j][i] for j in range(n)]
        total += row[i] - math.log(sum(math.exp(v) for v in row))
        total += col[i] - math.log(sum(math.exp(v) for v in col))
    return -total / (2 * n)


def ref_tsa(logits, inter, valid):
    """Eq. 8 per image with the min-max [choice]; tied images weight 0; mean over kept images."""
    per_image = []
    for b in range(logits.shape[0]):
        ks = [k for k in range(logits.shape[1]) if valid[b, k]]
        if not ks:
            continue
        vals = [float(inter[b, k]) for k in ks]
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-6:
            continue
        acc = 0.0
        for k in ks:
            lab = (float(inter[b, k]) - lo) / (hi - lo)
            p = 1.0 / (1.0 + math.exp(-float(logits[b, k])))
            acc += lab * math.log(p) + (1 - lab) * math.log(1 - p)
        per_image.append(-acc / len(ks))
    return sum(per_image) / len(per_image) if per_image else 0.0


def ref_fsa(A, inter, region_mask, phrase_mask):
    """Eq. 11 with I' a distribution over the present phrases; regions with no positive I out."""
    per_region = []
    B, K, M = A.shape
    for b in range(B):
        js = [j for j in range(M) if phrase_mask[b, j]]
        for i in range(K):
            if not region_mask[b, i] or not js:
                continue
            pos = {j: max(float(inter[b, i, j]), 0.0) for j in js}
            z = sum(pos.values())
            if z <= 0:
                continue
            lse = math.log(sum(math.exp(float(A[b, i, j])) for j in js))
            per_region.append(-sum(pos[j] / z * (float(A[b, i, j]) - lse) for j in js))
    return sum(per_region) / len(per_region) if per_region else 0.0


def test_cmc_matches_equation_1():
    g = torch.Generator().manual_seed(0)
    img, txt = _unit(torch.randn(5, 8, generator=g)), _unit(torch.randn(5, 8, generator=g))
    got = cmc_loss(img.float(), txt.float(), torch.tensor(14.3))
    assert got.item() == pytest.approx(ref_cmc(img.double(), txt.double(), 14.3), rel=1e-5)
    got64 = cmc_loss(img.double(), txt.double(), torch.tensor(14.3, dtype=torch.float64))
    assert got64.dtype == torch.float64
    assert got64.item() == pytest.approx(ref_cmc(img.double(), txt.double(), 14.3), rel=1e-12)


def test_cmc_bank_equals_full_batch_loss_and_gradient():
    g = torch.Generator().manual_seed(1)
    img, txt = _unit(torch.randn(6, 4, generator=g)), _unit(torch.randn(6, 4, generator=g))
    scale = torch.tensor(10.0)
    full_img, full_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    cmc_loss(full_img, full_txt, scale).backward()
    live_img, live_txt = img[2:4].clone().requires_grad_(), txt[2:4].clone().requires_grad_()
    bank = ContrastiveBank(img.clone(), txt.clone(), 2)
    loss = cmc_loss(live_img, live_txt, scale, bank=bank)
    assert loss.item() == pytest.approx(cmc_loss(img, txt, scale).item(), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(live_img.grad, full_img.grad[2:4], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(live_txt.grad, full_txt.grad[2:4], rtol=1e-5, atol=1e-7)


def test_cmc_bad_bank_offset_and_shapes():
    x = _unit(torch.randn(3, 4))
    with pytest.raises(ValueError, match="offset"):
        cmc_loss(x, x, torch.tensor(1.0), bank=ContrastiveBank(x, x, 2))
    with pytest.raises(ValueError, match="img and txt"):
        cmc_loss(x, x[:2], torch.tensor(1.0))


def test_cmc_huge_scale_is_finite():
    x = _unit(torch.randn(4, 4))
    assert torch.isfinite(cmc_loss(x, x.flip(0), torch.tensor(1e4)))


def test_tsa_matches_equation_8():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    inter = torch.randn(4, 6, generator=g, dtype=torch.float64)
    valid = torch.rand(4, 6, generator=g) > 0.2
    valid[0] = True
    inter[1] = 0.25  # all ties: weight 0
    valid[2] = False
    valid[2, 3] = True  # one candidate: weight 0
    got = tsa_loss(logits, inter, valid)
    assert got.item() == pytest.approx(ref_tsa(logits, inter, valid), rel=1e-10)


def test_tsa_degenerate_is_finite_zero_with_graph():
    logits = torch.randn(2, 1, requires_grad=True)
    loss = tsa_loss(logits, torch.randn(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_tsa_huge_logits_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = tsa_loss(logits, torch.tensor([[0.0, 1.0, 0.5]]), torch.ones(1, 3, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_tsa_does_not_backprop_into_labels():
    logits = torch.randn(1, 3, requires_grad=True)
    inter = torch.randn(1, 3, requires_grad=True)
    tsa_loss(logits, inter, torch.ones(1, 3, dtype=torch.bool)).backward()
    assert inter.grad is None


def test_fsa_matches_equation_11():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 5
    inter = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    region_mask = torch.rand(3, 4, generator=g) > 0.2
    phrase_mask = torch.rand(3, 5, generator=g) > 0.3
    phrase_mask[:, 0] = True
    region_mask[0] = True
    inter[0, 1] = -torch.rand(5, generator=g, dtype=torch.float64)  # all <= 0: region left out
    phrase_mask[2] = False  # no phrase in this caption
    got = fsa_loss(A, inter, region_mask, phrase_mask)
    assert got.item() == pytest.approx(ref_fsa(A, inter, region_mask, phrase_mask), rel=1e-10)


def test_fsa_no_phrases_finite_zero_and_huge_logits():
    A = torch.randn(2, 3, 2, requires_grad=True)
    loss = fsa_loss(A, torch.rand(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(A.grad).all()
    A2 = (torch.tensor([[[1e4, -1e4], [0.0, 0.0]]])).requires_grad_()
    loss2 = fsa_loss(A2, torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]), torch.ones(1, 2, dtype=torch.bool),
                     torch.tensor([[True, False]]))
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(A2.grad).all()


def test_unsil_loss_formula_and_optimum_at_abs_error():
    est = torch.tensor([0.3, -0.2], dtype=torch.float64)
    target = torch.tensor([0.1, 0.4], dtype=torch.float64)
    sigma = torch.tensor([0.5, 0.25], dtype=torch.float64)
    want = ((0.2 ** 2) / 0.5 + 0.5 + (0.6 ** 2) / 0.25 + 0.25) / 2
    assert unsil_loss(est, sigma, target).item() == pytest.approx(want, rel=1e-12)
    # for a fixed error the loss over sigma is minimised at sigma = |error| (lambda = 1)
    grid = torch.linspace(0.01, 0.99, 981, dtype=torch.float64)
    for err in (0.1, 0.35, 0.7):
        values = torch.stack([unsil_loss(torch.tensor([err], dtype=torch.float64), s.reshape(1),
                                         torch.zeros(1, dtype=torch.float64)) for s in grid])
        assert grid[values.argmin()].item() == pytest.approx(err, abs=2e-3)
    # lambda = 4 moves it to |error| / 2
    values = torch.stack([unsil_loss(torch.tensor([0.6], dtype=torch.float64), s.reshape(1),
                                     torch.zeros(1, dtype=torch.float64), lam=4.0) for s in grid])
    assert grid[values.argmin()].item() == pytest.approx(0.3, abs=2e-3)


def test_unsil_loss_gradients_and_sigma_pushed_back_from_saturation():
    """Estimate gradient 2e/sigma; sigma gradient 1 - min(e, 0.9)^2 / sigma^2 (float64 reference)."""
    est = torch.tensor([0.3, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    logit = torch.tensor([0.0, 9.0, 20.0], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(3, dtype=torch.float64)
    sigma = torch.sigmoid(logit)
    loss = unsil_loss(est, sigma, target)
    e, s = est.detach(), sigma.detach()
    assert loss.item() == pytest.approx(float((e.square() / s + s).mean()), rel=1e-12)
    loss.backward()
    torch.testing.assert_close(est.grad, 2 * e / s / 3, rtol=1e-12, atol=0)
    want_sigma = (1 - e.abs().clamp(max=0.9).square() / s.square()) / 3
    torch.testing.assert_close(logit.grad, want_sigma * s * (1 - s), rtol=1e-10, atol=0)
    assert (logit.grad[1:] > 0).all()  # large errors never push a saturated sigma further up


def test_unsil_loss_empty_and_shape_error():
    est = torch.zeros(0, requires_grad=True)
    assert unsil_loss(est, torch.zeros(0), torch.zeros(0)).item() == 0.0
    with pytest.raises(ValueError, match="estimate"):
        unsil_loss(torch.zeros(2), torch.ones(3), torch.zeros(2))


def test_cmc_bank_logit_scale_gradient_adds_up_over_micro_batches():
    g = torch.Generator().manual_seed(4)
    img, txt = _unit(torch.randn(6, 4, generator=g)), _unit(torch.randn(6, 4, generator=g))
    full_scale = torch.tensor(7.0, requires_grad=True)
    cmc_loss(img, txt, full_scale).backward()
    summed = 0.0
    for offset in (0, 2, 4):
        scale = torch.tensor(7.0, requires_grad=True)
        cmc_loss(img[offset:offset + 2], txt[offset:offset + 2], scale,
                 bank=ContrastiveBank(img, txt, offset)).backward()
        summed += scale.grad.item()
    assert summed == pytest.approx(full_scale.grad.item(), rel=1e-5)
