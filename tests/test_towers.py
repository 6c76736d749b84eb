"""TransformerTower against plain per-row forwards (float64): keep semantics, packing, grads."""
import pytest
import torch

from shapley_kernels.token_level import TransformerTower


def make_tower(norm_first=True, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = dict(dim=16, depth=2, heads=2, max_tokens=12, out_dim=8, norm_first=norm_first)
    cfg.update(kw)
    return TransformerTower(**cfg).to(dtype).eval()


def random_keep(C, N, gen):
    keep = torch.rand(C, N, generator=gen) < torch.rand(C, 1, generator=gen)
    keep[0] = True
    keep[1] = False
    return keep


@pytest.mark.parametrize("norm_first", [True, False])
def test_keep_all_true_equals_none(norm_first):
    tower = make_tower(norm_first)
    x = torch.randn(5, 9, 16, dtype=torch.float64)
    ref = tower(x)
    for impl in ("pack", "mask"):
        tower.drop_impl = impl
        torch.testing.assert_close(tower(x, torch.ones(5, 9, dtype=torch.bool)), ref)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("impl", ["pack", "mask"])
def test_drop_equals_forward_on_kept_tokens_only(norm_first, impl):
    """Row-by-row reference: a sequence holding only the kept tokens at their own positions."""
    tower = make_tower(norm_first)
    tower.drop_impl = impl
    gen = torch.Generator().manual_seed(1)
    C, N = 40, 10
    x = torch.randn(C, N, 16, generator=gen, dtype=torch.float64)
    keep = random_keep(C, N, gen)
    cls_out, tok_out = tower.encode(x, keep)
    for r in range(C):
        pos = keep[r].nonzero().flatten()
        h = tower._run(x[r:r + 1, pos], pos, None)
        torch.testing.assert_close(cls_out[r], h[0, 0])
        torch.testing.assert_close(tok_out[r, pos], h[0, 1:])
        assert bool((tok_out[r, ~keep[r]] == 0).all())
    torch.testing.assert_close(tower(x, keep), tower.project(cls_out))


def test_dropped_token_has_no_influence():
    tower = make_tower()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 8, 16, generator=gen, dtype=torch.float64)
    keep = random_keep(20, 8, gen)
    y = x.clone()
    y[~keep] = 1e6 * torch.randn(int((~keep).sum()), 16, generator=gen, dtype=torch.float64)
    for impl in ("pack", "mask"):
        tower.drop_impl = impl
        torch.testing.assert_close(tower(y, keep), tower(x, keep), rtol=0, atol=1e-12)


def test_empty_row_is_cls_only_and_finite():
    tower = make_tower()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    keep = torch.zeros(3, 6, dtype=torch.bool)
    out = tower(x, keep)
    assert bool(torch.isfinite(out).all())
    cls_only = tower.project(tower._run(x[:1, :0], torch.arange(0), None)[:, 0])
    torch.testing.assert_close(out, cls_only.expand(3, -1))


def test_gradient_flows_through_packed_path():
    tower = make_tower(dtype=torch.float32).train()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 7, 16, generator=gen, requires_grad=True)
    keep = random_keep(6, 7, gen)
    tower(x, keep).square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert bool((x.grad[~keep] == 0).all()) and float(x.grad[keep].abs().sum()) > 0
    assert all(p.grad is not None for p in tower.parameters())


def test_float32_matches_float64():
    t64 = make_tower()
    t32 = make_tower(dtype=torch.float32)
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    keep = torch.rand(4, 5) < 0.6
    torch.testing.assert_close(t32(x.float(), keep).double(), t64(x, keep), rtol=1e-4, atol=1e-5)


def test_bad_input_raises():
    tower = make_tower()
    with pytest.raises(ValueError, match="dim"):
        tower(torch.randn(2, 3, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_tokens"):
        tower(torch.randn(2, 13, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="keep"):
        tower(torch.randn(2, 3, 16, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="keep"):
        tower(torch.randn(2, 3, 16, dtype=torch.float64), torch.ones(2, 3))
    with pytest.raises(ValueError, match="heads"):
        TransformerTower(dim=10, depth=1, heads=3, max_tokens=4, out_dim=2)


def test_plan_buckets_covers_every_row_with_its_kept_positions():
    from shapley_kernels.token_level.packing import plan_buckets

    gen = torch.Generator().manual_seed(4)
    keep = torch.rand(70, 9, generator=gen) < torch.rand(70, 1, generator=gen)
    buckets = plan_buckets(keep, num_buckets=4, min_rows=8)
    assert 1 < len(buckets) <= 4
    rows = torch.cat([b.rows for b in buckets])
    assert sorted(rows.tolist()) == list(range(70))
    for b in buckets:
        valid = torch.ones_like(b.index, dtype=torch.bool) if b.valid is None else b.valid
        for r, idx, ok in zip(b.rows, b.index, valid):
            assert idx[ok].tolist() == keep[r].nonzero().flatten().tolist()
    same = plan_buckets(torch.ones(64, 5, dtype=torch.bool))
    assert len(same) == 1 and same[0].valid is None


def test_pack_bits_matches_powers_of_two():
    from shapley_kernels.token_level.packing import pack_bits

    gen = torch.Generator().manual_seed(6)
    mask = torch.rand(37, 130, generator=gen) < 0.5
    words = pack_bits(mask, rows_per_step=8)
    assert words.shape == (37, 3)
    for r in range(37):
        for w in range(3):
            cols = mask[r, 64 * w:64 * w + 64].nonzero().flatten().tolist()
            want = sum(1 << c for c in cols)
            assert int(words[r, w]) & (2 ** 64 - 1) == want


def test_implementations_are_chosen_at_construction_with_process_defaults(monkeypatch):
    assert (make_tower().drop_impl, make_tower().attention) == ("pack", "auto")
    assert (make_tower(drop_impl="mask", attention="sdpa").drop_impl, make_tower(attention="sdpa").attention) \
        == ("mask", "sdpa")
    monkeypatch.setenv("SHAPLEY_KERNELS_DROP_IMPL", "mask")
    monkeypatch.setenv("SHAPLEY_KERNELS_ATTENTION", "sdpa")
    tower = make_tower()
    assert (tower.drop_impl, tower.attention, tower.triton_failures) == ("mask", "sdpa", {})
    monkeypatch.delenv("SHAPLEY_KERNELS_DROP_IMPL")
    assert tower.drop_impl == "mask"   # read at construction: a later change of the default leaves it
    monkeypatch.setenv("SHAPLEY_KERNELS_ATTENTION", "flash")
    with pytest.raises(ValueError, match="SHAPLEY_KERNELS_ATTENTION"):
        make_tower()
    with pytest.raises(ValueError, match="drop_impl"):
        make_tower(drop_impl="skip", attention="sdpa")
