"""UNSIL networks: shapes, masking, running std buffer, and that L_UNSIL trains them."""
import pytest
import torch

from loupe_core.objective.losses import unsil_loss
from loupe_core.objective.unsil import ARCHITECTURES, Unsil, UnsilInputs


def _inputs(T=5, Na=6, Nb=4, D=8, Dq=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mask_b = torch.rand(T, Nb, generator=g) > 0.3
    mask_b[0] = False  # a caption with no present token
    target_a = torch.zeros(T, Na, dtype=torch.bool)
    target_a[:, 1:3] = True
    return UnsilInputs(torch.randn(T, Dq, generator=g, dtype=dtype),
                       torch.randn(T, Na, D, generator=g, dtype=dtype), torch.ones(T, Na, dtype=torch.bool),
                       target_a, torch.randn(T, Nb, D, generator=g, dtype=dtype), mask_b,
                       torch.zeros(T, Nb, dtype=torch.bool))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_shapes_sigma_range_and_padding_ignored(arch):
    torch.manual_seed(0)
    net = Unsil(arch, 8, 8, 16)
    x = _inputs()
    est, sigma = net(x)
    assert est.shape == (5,) and sigma.shape == (5,)
    assert torch.isfinite(est).all() and ((sigma > 0) & (sigma <= 1)).all()
    garbage = x.seq_b.masked_fill(~x.mask_b[:, :, None], 1e3)
    est2, sigma2 = net(x._replace(seq_b=garbage))
    torch.testing.assert_close(est2, est, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sigma2, sigma, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_float64_and_single_element_sequences(arch):
    net = Unsil(arch, 8, 8, 16).double()
    x = _inputs(T=2, Na=1, Nb=1, dtype=torch.float64)
    est, sigma = net(x)
    assert est.dtype == torch.float64 and torch.isfinite(est).all() and torch.isfinite(sigma).all()


def test_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        Unsil("lstm", 8, 8, 16)
    with pytest.raises(ValueError, match="arch"):
        Unsil("transformer", 8, 8, 16)  # App. D's design that no config selected: removed


def test_running_std_matches_population_std_and_is_checkpointed():
    net = Unsil("mlp_attention", 8, 8, 16)
    assert net.scale() == 1.0
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(n, generator=g, dtype=torch.float64) * 3 + 1 for n in (1, 7, 4, 20)]
    for c in chunks:
        net.observe(c.float())
    want = torch.cat(chunks).float().double().std(unbiased=False).item()
    assert net.scale() == pytest.approx(want, rel=1e-6)
    fresh = Unsil("mlp_attention", 8, 8, 16)
    fresh.load_state_dict(net.state_dict())
    assert fresh.scale() == net.scale()
    tied = Unsil("mlp_attention", 8, 8, 16)
    tied.observe(torch.zeros(5))
    assert tied.scale() == 1.0


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_unsil_loss_trains_the_network(arch):
    torch.manual_seed(0)
    net = Unsil(arch, 8, 8, 16)
    x = _inputs(T=16, seed=3)
    target = torch.tanh(x.query[:, 0] + x.seq_a[:, 1, 0])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        est, sigma = net(x)
        loss = unsil_loss(est, sigma, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_tracked_correlation_is_pearson_with_decayed_history():
    import numpy as np

    from loupe_core.objective.unsil import TRACK_DECAY

    net = Unsil("mlp_attention", 8, 8, 16)
    assert net.correlation() == 0.0
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(10, generator=g), torch.randn(6, generator=g)
    y1, y2 = 2 * x1 + 0.5 * torch.randn(10, generator=g), -x2 + torch.randn(6, generator=g)
    net.track(x1, y1)
    assert net.correlation() == pytest.approx(float(np.corrcoef(x1.numpy(), y1.numpy())[0, 1]), rel=1e-9)
    net.track(x2, y2)
    # weighted Pearson: the first batch weighs TRACK_DECAY, the second 1
    w = np.r_[np.full(10, TRACK_DECAY), np.ones(6)]
    x, y = np.r_[x1.numpy(), x2.numpy()].astype(float), np.r_[y1.numpy(), y2.numpy()].astype(float)
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    want = np.average((x - mx) * (y - my), weights=w) / np.sqrt(np.average((x - mx) ** 2, weights=w)
                                                                 * np.average((y - my) ** 2, weights=w))
    assert net.correlation() == pytest.approx(want, rel=1e-9)
    fresh = Unsil("mlp_attention", 8, 8, 16)
    fresh.load_state_dict(net.state_dict())
    assert fresh.correlation() == net.correlation()
    with pytest.raises(ValueError, match="same shape"):
        net.track(x1, y2)
