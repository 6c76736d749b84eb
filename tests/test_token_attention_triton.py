"""The Triton bitmask attention kernel against SDPA with the equivalent boolean mask.

Runs under TRITON_INTERPRET=1 on the CPU (tests/conftest.py sets it) or on a CUDA device.
"""
import warnings

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is an optional dependency")
pytestmark = pytest.mark.triton

from shapley_kernels.token_level._triton_attention import bitmask_attention  # noqa: E402
from shapley_kernels.token_level.towers import TransformerTower, sdpa_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qkv(c, h, L, hd, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(c, h, L, hd, generator=gen).to(DEVICE) for _ in range(3)]


@pytest.mark.parametrize("L,hd", [(16, 16), (19, 12)])
def test_kernel_matches_sdpa_with_bool_mask(L, hd):
    q, k, v = qkv(2, 1, L, hd, seed=L)
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(2, L, generator=gen) < 0.5
    mask[:, 0] = True
    mask[1, 1:] = False  # a row that may attend one key only
    mask = mask.to(DEVICE)
    got = bitmask_attention(q, k, v, mask)
    torch.testing.assert_close(got, sdpa_attention(q, k, v, mask), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bitmask_attention(q, k, v), sdpa_attention(q, k, v, None), rtol=1e-4, atol=1e-4)


def test_bits_past_the_first_word_and_huge_logits():
    q, k, v = qkv(1, 2, 70, 16, seed=2)
    q = q * 40.0  # logits in the thousands: the online softmax must stay finite
    mask = torch.zeros(1, 70, dtype=torch.bool, device=DEVICE)
    mask[0, [0, 63, 64, 69]] = True
    got = bitmask_attention(q, k, v, mask)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, sdpa_attention(q, k, v, mask), rtol=1e-4, atol=1e-4)


def test_tower_with_triton_attention_matches_sdpa():
    torch.manual_seed(0)
    tower = TransformerTower(dim=32, depth=1, heads=2, max_tokens=15, out_dim=4).to(DEVICE).eval()
    tower.drop_impl = "mask"
    x = torch.randn(2, 15, 32, device=DEVICE)
    keep = torch.tensor([[1, 0] * 7 + [1], [0] * 15], dtype=torch.bool, device=DEVICE)
    with torch.inference_mode():
        ref = tower(x, keep)
        tower.attention = "triton"
        got = tower(x, keep)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_rejects_training_and_float64():
    q, k, v = qkv(1, 1, 16, 16, seed=3)
    with pytest.raises(ValueError, match="forward-only"):
        bitmask_attention(q.requires_grad_(), k, v)
    with pytest.raises(TypeError, match="float16"):
        bitmask_attention(q.detach().double(), k.double(), v.double())


def test_auto_falls_back_to_sdpa_when_the_kernel_fails(monkeypatch):
    from shapley_kernels.token_level import towers

    real_ready = towers._triton_ready
    monkeypatch.setattr(towers, "_triton_ready", lambda q, failures: towers._input_kind(q) not in failures)
    q, k, v = (t.double() for t in qkv(2, 1, 16, 16, seed=4))  # float64: the kernel refuses it
    mask = torch.ones(2, 16, dtype=torch.bool, device=DEVICE)
    mask[1, 5:] = False
    failures = {}
    with pytest.warns(UserWarning, match="Triton attention failed"):
        got = towers.attend(q, k, v, mask, 0.0, "auto", failures)
    torch.testing.assert_close(got, sdpa_attention(q, k, v, mask))
    kind = towers._input_kind(q)
    assert list(failures) == [kind] and "float16" in failures[kind]
    # recorded for that kind of input only: the next call on it goes straight to SDPA (no warning),
    # another kind of input is still offered to the kernel
    assert not real_ready(q, failures) and towers._input_kind(q.float()) not in failures
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(towers.attend(q, k, v, mask, 0.0, "auto", failures), got)


@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="Triton's interpreter has no bf16 arithmetic: needs a GPU")),
])
def test_half_precision_inputs(dtype):
    q, k, v = qkv(2, 2, 20, 16, seed=5)
    mask = torch.rand(2, 20, generator=torch.Generator().manual_seed(6)) < 0.5
    mask[:, 0] = True
    mask = mask.to(DEVICE)
    got = bitmask_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert got.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(got.float(), sdpa_attention(q, k, v, mask), rtol=tol, atol=tol)
