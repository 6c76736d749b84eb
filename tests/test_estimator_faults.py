"""Bad input to the estimators found by the issue-15 probe: encoder outputs of the wrong shape,
results that overflow, integer arguments of NumPy types or out of range, devices this install
cannot use. Each error is a ValueError (TypeError for a wrong type) naming the argument."""
import numpy as np
import pytest
import torch

import shapley_kernels as sk
from shapley_kernels.token_level import dual_encoder_game, region_interaction

pytestmark = pytest.mark.faults


def _mean_encoder(extra_rows=0, shape=None):
    """Coalition encoder (tokens[C, N, D], keep[C, N]) -> [C + extra_rows, D], or ``shape(C, D)``."""
    def encoder(tokens, keep):
        out = (tokens * keep[..., None]).sum(1)
        if shape is not None:
            return torch.zeros(shape(*out.shape))
        return torch.cat([out, out[:1].expand(extra_rows, -1)]) if extra_rows > 0 else out[: out.shape[0] + extra_rows]
    return encoder


@pytest.mark.parametrize("bad", [dict(extra_rows=1), dict(extra_rows=-1), dict(shape=lambda c, d: (c * d,)),
                                 dict(shape=lambda c, d: (c, 1, d))], ids=["C+1", "C-1", "1-D", "3-D"])
def test_encoder_outputs_of_the_wrong_shape_are_named(bad):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)
    game = dual_encoder_game(_mean_encoder(**bad), _mean_encoder(), img, txt)
    with pytest.raises(ValueError, match=r"image_encoder must return shape \[\d+, d\] .*got"):
        game(torch.ones(5, 5, dtype=torch.bool))
    regions = torch.tensor([[[True, True, False]]])
    with pytest.raises(ValueError, match=r"encoder function must return shape \[\d+, d\]"):
        region_interaction(_mean_encoder(), _mean_encoder(**bad), img[None], txt[None], regions, method="exact")


def test_a_right_encoder_still_gives_the_cosine_game():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    coalitions = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]])
    values = dual_encoder_game(_mean_encoder(), _mean_encoder(), img, txt)(coalitions)
    for row, c in zip(values, coalitions):
        a, b = img[c[:3]].sum(0), txt[c[3:]].sum(0)
        assert abs(float(row) - float(a @ b / (a.norm() * b.norm()))) < 1e-12


def test_finite_game_values_whose_result_overflows_float32_are_refused():
    game = lambda c: torch.where(c[:, 0], torch.tensor(3e38), torch.tensor(-3e38))  # noqa: E731
    with pytest.raises(ValueError, match="overflow.*float32"):
        sk.shapley_values(game, 3)
    game64 = lambda c: torch.where(c[:, 0], torch.tensor(3e38, dtype=torch.float64),  # noqa: E731
                                   torch.tensor(-3e38, dtype=torch.float64))
    phi = sk.shapley_values(game64, 3)  # representable in float64: the exact value, v(N) - v(empty) on player 0
    assert phi.tolist() == [6e38, 0.0, 0.0]
    huge = lambda c: torch.where(c[:, 0], torch.tensor(1.7e308, dtype=torch.float64),  # noqa: E731
                                 torch.tensor(-1.7e308, dtype=torch.float64))
    with pytest.raises(ValueError, match="overflow.*float64 accumulation"):
        sk.shapley_values(huge, 2)


def _linear(c):
    return c.double() @ torch.arange(1.0, c.shape[1] + 1, dtype=torch.float64)


def test_numpy_integers_are_accepted_everywhere_and_give_the_int_result():
    A = torch.randn(1, 3, 2, generator=torch.Generator().manual_seed(2))
    ref = sk.shapley_values(_linear, 4, method="sampling", num_samples=5, seed=3)
    got = sk.shapley_values(_linear, np.int64(4), method="sampling", num_samples=np.int64(5), seed=np.int64(3))
    assert torch.equal(ref, got)
    ref = sk.region_phrase_interaction(A, method="sampling", num_samples=4, seed=3)
    assert torch.equal(ref, sk.region_phrase_interaction(A, method="sampling", num_samples=np.int32(4),
                                                         seed=np.int64(3)))


@pytest.mark.parametrize("call", [
    lambda **kw: sk.shapley_values(_linear, 3, method="sampling", **kw),
    lambda **kw: sk.interaction_index(_linear, 3, torch.tensor([[0, 1]]), method="sampling", **kw),
    lambda **kw: sk.coalition_interaction(_linear, 3, torch.tensor([[True, True, False]]), method="sampling", **kw),
    lambda **kw: sk.region_phrase_interaction(torch.zeros(1, 2, 2), method="sampling", **kw),
    lambda **kw: region_interaction(_mean_encoder(), _mean_encoder(), torch.ones(1, 3, 2), torch.ones(1, 2, 2),
                                    torch.tensor([[[True, True, False]]]), method="sampling", **kw),
], ids=["shapley_values", "interaction_index", "coalition_interaction", "region_phrase_interaction",
        "region_interaction"])
def test_one_rule_for_seed_and_num_samples(call):
    for seed in (2 ** 70, -1):
        with pytest.raises(ValueError, match=r"seed must be in 0\.\.18446744073709551615"):
            call(seed=seed, num_samples=4)
    with pytest.raises(TypeError, match="seed must be an int"):
        call(seed=np.float64(3), num_samples=4)
    with pytest.raises(ValueError, match="num_samples must be at least 2 for sampling"):
        call(seed=0, num_samples=1)
    call(seed=2 ** 64 - 1, num_samples=np.uint8(4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only install")
@pytest.mark.parametrize("device, why", [("cuda", "no CUDA device is available"), ("bogus", "is not a device"),
                                         ("meta", "'meta' devices cannot compute here")])
def test_devices_this_install_cannot_use_are_named(device, why):
    from loupe_core.train.distributed import resolve_device

    with pytest.raises(ValueError, match=f"device={device!r}.*{why}.*this install supports \\['cpu'\\]"):
        sk.shapley_values(_linear, 3, device=device)
    with pytest.raises(ValueError, match=f"device={device!r}.*{why}"):
        sk.interaction_index(_linear, 3, torch.tensor([[0, 1]]), device=device)
    with pytest.raises(ValueError, match=f"train.device={device!r}.*{why}"):
        resolve_device(device)
