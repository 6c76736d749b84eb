"""dual_encoder_game against plain one-coalition-at-a-time forwards (float64, CPU)."""
import pytest
import torch

from shapley_kernels.token_level import TransformerTower, dual_encoder_game


def towers(dtype=torch.float64):
    torch.manual_seed(0)
    img = TransformerTower(dim=16, depth=2, heads=2, max_tokens=16, out_dim=8).to(dtype).eval()
    txt = TransformerTower(dim=12, depth=1, heads=3, max_tokens=16, out_dim=8,
                           norm_first=False).to(dtype).eval()
    return img, txt


def one_row(tower, tokens, keep, baseline):
    """Plain forward of one coalition half: tokens float[N, D], keep bool[N] -> float[d]."""
    tower.drop_impl = "mask"
    if baseline == "zero":
        out = tower(tokens[None] * keep[None, :, None], None)
    else:
        out = tower(tokens[None], keep[None])
    tower.drop_impl = "pack"
    return out[0]


def plain_values(img, txt, x_img, x_txt, coalitions, baseline):
    n_i = x_img.shape[0]
    vals = []
    for row in coalitions:
        a = one_row(img, x_img, row[:n_i], baseline)
        b = one_row(txt, x_txt, row[n_i:], baseline)
        vals.append(a @ b / (a.norm() * b.norm()))
    return torch.stack(vals)


@pytest.mark.parametrize("baseline", ["zero", "drop"])
@pytest.mark.parametrize("n_i,n_t", [(1, 1), (7, 5), (12, 3)])
def test_batched_game_equals_plain_forward(baseline, n_i, n_t):
    img, txt = towers()
    gen = torch.Generator().manual_seed(n_i * 31 + n_t)
    x_img = torch.randn(n_i, 16, generator=gen, dtype=torch.float64)
    x_txt = torch.randn(n_t, 12, generator=gen, dtype=torch.float64)
    C = 25
    coalitions = torch.rand(C, n_i + n_t, generator=gen) < torch.rand(C, 1, generator=gen)
    coalitions = torch.cat([coalitions, coalitions[:5], torch.zeros(1, n_i + n_t, dtype=torch.bool),
                            torch.ones(1, n_i + n_t, dtype=torch.bool)])
    game = dual_encoder_game(img, txt, x_img, x_txt, baseline=baseline, max_batch=7)
    got = game(coalitions)
    assert got.dtype == torch.float64 and got.shape == (C + 7,)
    torch.testing.assert_close(got, plain_values(img, txt, x_img, x_txt, coalitions, baseline))


def test_drop_all_kept_equals_unmasked_forward():
    img, txt = towers()
    x_img, x_txt = torch.randn(6, 16, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    full = torch.ones(1, 10, dtype=torch.bool)
    a, b = img(x_img[None])[0], txt(x_txt[None])[0]
    want = a @ b / (a.norm() * b.norm())
    for baseline in ("zero", "drop"):
        torch.testing.assert_close(dual_encoder_game(img, txt, x_img, x_txt, baseline=baseline)(full)[0], want)


def test_all_absent_side_is_cls_only_and_finite():
    img, txt = towers()
    x_img, x_txt = torch.randn(5, 16, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    coalitions = torch.tensor([[0] * 5 + [1] * 3, [1] * 5 + [0] * 3, [0] * 8], dtype=torch.bool)
    for baseline in ("zero", "drop"):
        vals = dual_encoder_game(img, txt, x_img, x_txt, baseline=baseline)(coalitions)
        assert bool(torch.isfinite(vals).all())
    cls_img = img(x_img[None], torch.zeros(1, 5, dtype=torch.bool))[0]
    t = txt(x_txt[None])[0]
    drop = dual_encoder_game(img, txt, x_img, x_txt, baseline="drop")(coalitions[:1])[0]
    torch.testing.assert_close(drop, cls_img @ t / (cls_img.norm() * t.norm()))


class CountingEncoder(torch.nn.Module):
    """Wraps a tower and records every row it encodes (to check deduplication)."""

    def __init__(self, tower):
        super().__init__()
        self.tower, self.rows = tower, []

    def forward(self, tokens, keep):
        self.rows.append(tokens.shape[0])
        return self.tower(tokens, keep)


def test_dedup_encodes_each_distinct_half_once_and_keeps_values():
    img, txt = towers()
    x_img, x_txt = torch.randn(4, 16, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    coalitions = torch.rand(60, 7, generator=gen) < 0.5
    ci, ct = CountingEncoder(img), CountingEncoder(txt)
    got = dual_encoder_game(ci, ct, x_img, x_txt, baseline="drop", max_batch=4)(coalitions)
    assert sum(ci.rows) == len(torch.unique(coalitions[:, :4], dim=0))
    assert sum(ct.rows) == len(torch.unique(coalitions[:, 4:], dim=0))
    assert max(ci.rows + ct.rows) <= 4
    torch.testing.assert_close(got, plain_values(img, txt, x_img, x_txt, coalitions, "drop"))


def test_padding_masks_remove_players():
    img, txt = towers()
    x_img, x_txt = torch.randn(6, 16, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    im = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    tm = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    gen = torch.Generator().manual_seed(9)
    coalitions = torch.rand(12, 7, generator=gen) < 0.5
    got = dual_encoder_game(img, txt, x_img, x_txt, baseline="drop", image_mask=im, text_mask=tm)(coalitions)
    full = torch.zeros(12, 10, dtype=torch.bool)
    full[:, torch.cat([im, tm]).nonzero().flatten()] = coalitions
    torch.testing.assert_close(got, plain_values(img, txt, x_img, x_txt, full, "drop"))


def test_float32_output_and_no_graph():
    img, txt = towers(torch.float32)
    game = dual_encoder_game(img, txt, torch.randn(3, 16), torch.randn(2, 12))
    out = game(torch.ones(2, 5, dtype=torch.bool))
    assert out.dtype == torch.float32 and not out.requires_grad


def test_errors():
    img, txt = towers()
    x_img, x_txt = torch.randn(3, 16, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="baseline"):
        dual_encoder_game(img, txt, x_img, x_txt, baseline="mean")
    bad = x_img.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="image_tokens"):
        dual_encoder_game(img, txt, bad, x_txt)
    with pytest.raises(ValueError, match="image_tokens"):
        dual_encoder_game(img, txt, x_img[None], x_txt)
    with pytest.raises(TypeError, match="text_encoder"):
        dual_encoder_game(img, "bert", x_img, x_txt)
    game = dual_encoder_game(img, txt, x_img, x_txt)
    with pytest.raises(ValueError, match="coalitions"):
        game(torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="coalitions"):
        game(torch.ones(2, 5))
    with pytest.raises(ValueError, match="max_batch"):
        dual_encoder_game(img, txt, x_img, x_txt, max_batch=0)


def test_drop_refused_for_windowed_encoder():
    img, txt = towers()

    class Windowed(torch.nn.Module):
        supports_drop = False

        def forward(self, tokens, keep):
            return tokens.mean(1)[:, :8]

    x_img, x_txt = torch.randn(3, 16, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="supports_drop"):
        dual_encoder_game(Windowed(), txt, x_img, x_txt, baseline="drop")
    assert dual_encoder_game(Windowed(), txt, x_img, x_txt)(torch.ones(1, 5, dtype=torch.bool)).shape == (1,)


def test_default_chunks_follow_the_token_budget(monkeypatch):
    from shapley_kernels import defaults

    monkeypatch.setattr(defaults, "TOKENS_PER_CALL_CPU", 12)
    img, txt = towers()
    x_img, x_txt = torch.randn(4, 16, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
    ci, ct = CountingEncoder(img), CountingEncoder(txt)
    coalitions = torch.rand(30, 10, generator=torch.Generator().manual_seed(8)) < 0.5
    got = dual_encoder_game(ci, ct, x_img, x_txt, baseline="zero")(coalitions)
    assert max(ci.rows) == 3 and max(ct.rows) == 2  # 12 // 4 and 12 // 6 rows per call
    torch.testing.assert_close(got, plain_values(img, txt, x_img, x_txt, coalitions, "zero"))
