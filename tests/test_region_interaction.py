"""region_interaction (spec Eq. 7) against enumeration written straight from the equations."""
import itertools
from math import comb

import pytest
import torch

from reference import brute_coalition_interaction, table_value_fn
from shapley_kernels.token_level import (TransformerTower, choose_region_method, dual_encoder_game,
                                         region_interaction)


def towers():
    torch.manual_seed(0)
    img = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6).double().eval()
    txt = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6,
                           norm_first=False).double().eval()
    return img, txt


def value_fn_of(game, n):
    """The game's full value table (one batched call), as a frozenset -> float function."""
    rows = ((torch.arange(2 ** n)[:, None] >> torch.arange(n)) & 1).bool()
    return table_value_fn(game(rows))


def eq7_enumeration(value_fn, n, region):
    """Eq. 7 exactly: sum over S subset X\\R of w(|S|) [v(S u R) - sum_x v(S u {x}) + (n_R - 1) v(S)],
    w(c) = 1 / ((m + 1) C(m, c)), m = n - n_R."""
    others = [p for p in range(n) if p not in region]
    m = len(others)
    total = 0.0
    for c in range(m + 1):
        for subset in itertools.combinations(others, c):
            s = frozenset(subset)
            term = (value_fn(s | set(region)) - sum(value_fn(s | {x}) for x in region)
                    + (len(region) - 1) * value_fn(s))
            total += term / ((m + 1) * comb(m, c))
    return total


def setup_pairs():
    gen = torch.Generator().manual_seed(3)
    x_img = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    x_txt = torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    image_mask = torch.ones(2, 6, dtype=torch.bool)
    image_mask[1, 4:] = False
    text_mask = torch.ones(2, 4, dtype=torch.bool)
    text_mask[0, 3] = False
    regions = torch.zeros(2, 3, 6, dtype=torch.bool)
    regions[0, 0, [0, 1]] = True
    regions[0, 1, [2, 3, 5]] = True
    regions[0, 2, 4] = True
    regions[1, 0, [1, 2]] = True
    regions[1, 1, [0, 1, 3]] = True
    regions[1, 2, [0, 3]] = True
    return x_img, x_txt, image_mask, text_mask, regions


def enumerated(img, txt, x_img, x_txt, image_mask, text_mask, regions, baseline):
    want = torch.zeros(regions.shape[:2], dtype=torch.float64)
    for b in range(regions.shape[0]):
        game = dual_encoder_game(img, txt, x_img[b], x_txt[b], baseline=baseline,
                                 image_mask=image_mask[b], text_mask=text_mask[b])
        players = regions[b][:, image_mask[b]]
        value_fn = value_fn_of(game, game.n_players)
        for k in range(regions.shape[1]):
            want[b, k] = eq7_enumeration(value_fn, game.n_players, players[k].nonzero().flatten().tolist())
    return want


@pytest.mark.parametrize("baseline", ["zero", "drop"])
def test_sampling_agrees_with_enumeration(baseline):
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    want = enumerated(img, txt, x_img, x_txt, im, tm, regions, baseline)
    est = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                             baseline=baseline, method="sampling", num_samples=3000, seed=0, max_batch=64)
    assert est.value.dtype == torch.float64 and est.value.shape == (2, 3)
    assert bool((est.stderr[regions.sum(-1) > 1] > 0).all())
    assert bool(((est.value - want).abs() <= 4 * est.stderr + 1e-9).all()), (est.value, want, est.stderr)
    assert est.value[0, 2] == 0 and est.stderr[0, 2] == 0  # one-patch region: Eq. 7 gives 0
    sizes = regions.sum(-1)
    assert est.evaluations.tolist() == (3000 * (sizes + 2).sum(1)).tolist()


@pytest.mark.parametrize("baseline", ["zero", "drop"])
def test_exact_equals_brute_force_eq4_and_eq7(baseline):
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    est = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm,
                             baseline=baseline, method="exact")
    assert bool((est.stderr == 0).all()) and est.value[0, 2] == 0
    torch.testing.assert_close(est.value, enumerated(img, txt, x_img, x_txt, im, tm, regions, baseline))
    for b in range(2):
        game = dual_encoder_game(img, txt, x_img[b], x_txt[b], baseline=baseline,
                                 image_mask=im[b], text_mask=tm[b])
        n = game.n_players
        assert est.evaluations[b] == 2 ** n
        value_fn = value_fn_of(game, n)
        for k in range(3):
            members = regions[b, k][im[b]].nonzero().flatten().tolist()
            want = brute_coalition_interaction(value_fn, n, members) if len(members) > 1 else 0.0
            assert abs(float(est.value[b, k]) - want) < 1e-10


def test_auto_method_choice():
    assert choose_region_method(9, [2, 3], 500) == "exact"  # 512 <= 500 * 9
    assert choose_region_method(9, [2], 10) == "sampling"  # 512 > 40
    assert choose_region_method(40, [2], 10 ** 12) == "sampling"  # beyond the exact limit
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    auto = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm)
    exact = region_interaction(img, txt, x_img, x_txt, regions, image_mask=im, text_mask=tm, method="exact")
    torch.testing.assert_close(auto.value, exact.value)


def test_seed_reproducible_and_seed_matters():
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    kw = dict(image_mask=im, text_mask=tm, method="sampling", num_samples=20)
    a = region_interaction(img, txt, x_img, x_txt, regions, seed=7, **kw)
    b = region_interaction(img, txt, x_img, x_txt, regions, seed=7, max_batch=5, **kw)
    c = region_interaction(img, txt, x_img, x_txt, regions, seed=8, **kw)
    torch.testing.assert_close(a.value, b.value)
    assert not torch.equal(a.value, c.value)


def test_no_regions_gives_empty_results():
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    for method in ("sampling", "exact"):
        est = region_interaction(img, txt, x_img, x_txt, regions[:, :0], image_mask=im, text_mask=tm,
                                 method=method, num_samples=4, seed=0)
        assert est.value.shape == est.stderr.shape == (2, 0) and est.evaluations.tolist() == [0, 0]


def test_float32_tokens_give_float32():
    img, txt = towers()
    img, txt = img.float(), txt.float()
    x_img, x_txt, im, tm, regions = setup_pairs()
    est = region_interaction(img, txt, x_img.float(), x_txt.float(), regions, image_mask=im,
                             text_mask=tm, method="sampling", num_samples=4, seed=1)
    assert est.value.dtype == torch.float32 and bool(torch.isfinite(est.value).all())


def test_errors():
    img, txt = towers()
    x_img, x_txt, im, tm, regions = setup_pairs()
    empty = regions.clone()
    empty[0, 1] = False
    with pytest.raises(ValueError, match="regions"):
        region_interaction(img, txt, x_img, x_txt, empty, image_mask=im, text_mask=tm)
    with pytest.raises(ValueError, match="padded"):
        region_interaction(img, txt, x_img, x_txt, regions, image_mask=torch.zeros_like(im), text_mask=tm)
    with pytest.raises(ValueError, match="regions"):
        region_interaction(img, txt, x_img, x_txt, regions[:, :, :5])
    bad = x_txt.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="text_tokens"):
        region_interaction(img, txt, x_img, bad, regions)
    with pytest.raises(ValueError, match="baseline"):
        region_interaction(img, txt, x_img, x_txt, regions, baseline="blur")
    with pytest.raises(ValueError, match="method"):
        region_interaction(img, txt, x_img, x_txt, regions, method="kernelshap")
    with pytest.raises(ValueError, match="num_samples"):
        region_interaction(img, txt, x_img, x_txt, regions, method="sampling", num_samples=-3)
    with pytest.raises(ValueError, match="text_tokens"):
        region_interaction(img, txt, x_img, x_txt[:1], regions)
    with pytest.raises(TypeError, match="regions"):
        region_interaction(img, txt, x_img, x_txt, regions.long())
    big = torch.zeros(1, 1, 20, dtype=torch.bool)
    big[0, 0, :2] = True
    with pytest.raises(ValueError, match="exact limit"):
        region_interaction(img, txt, torch.zeros(1, 20, 8), torch.zeros(1, 6, 8), big, method="exact")
