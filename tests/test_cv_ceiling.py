"""benchmarks/cv_ceiling.py: its pilot is the default estimator's own draws, and its gain bound
finds a linear signal where there is one and none in noise."""
import os
import sys

import pytest
import torch

from shapley_kernels._strata import strata_stderr
from shapley_kernels.token_level import region_interaction

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import cv_ceiling as ceiling  # noqa: E402
import estimator_bench  # noqa: E402


@pytest.mark.parametrize("strata,paired", [(8, True), (7, False)])
def test_pilot_units_average_to_the_default_estimate(strata, paired):
    """The units are region_interaction's "antithetic" units with the same seed (odd
    num_samples: no complementary pairs): their mean is its estimate and their collapsed-strata
    standard error its standard error, so the pilot measures the shipped estimator's draws."""
    towers, x_img, x_txt, regions = estimator_bench.tiny_workload("cpu")
    text_mask = torch.ones(x_txt.shape[:2], dtype=torch.bool)
    q, bits, terms = ceiling.unit_terms(towers, x_img, x_txt, text_mask, regions, "zero", strata, paired, seed=5)
    units = strata // 2 if paired else strata
    assert q.shape == (2, units) and bits.shape == (2, 4, units, 12)
    assert not bool((bits & regions[:, :, None, :]).any())  # S lies outside R
    got = region_interaction(*towers, x_img, x_txt, regions, text_mask=text_mask, method="sampling",
                             num_samples=strata, seed=5, estimator="antithetic", score=("interaction", "phi"))
    for name in ("interaction", "phi"):
        torch.testing.assert_close(terms[name].mean(-1), got[name].value)
        torch.testing.assert_close(strata_stderr(terms[name]), got[name].stderr)


def test_gains_table_on_the_tiny_towers():
    towers, x_img, x_txt, regions = estimator_bench.tiny_workload("cpu")
    text_mask = torch.ones(x_txt.shape[:2], dtype=torch.bool)
    rows = ceiling.gains_table(towers, x_img, x_txt, text_mask, regions, "zero", (4, 3), 64, True, seed=2)
    assert len(rows) == 2 * 8  # every candidate holds at least 2 patches
    for row in rows:
        gains = [row[name] for name in ("all patches", "all patches x (1, q)", "neighbours of R", "counts",
                                        "all patches + adjacent pairs", "max game")]
        assert row["within_q_variance"] > 0 and all(0 < g < float("inf") for g in gains)


def test_feature_sets_of_a_block_inside_the_grid():
    region = torch.zeros(64, dtype=torch.bool)
    region[[27, 28, 35, 36]] = True  # a 2 x 2 block in the middle of the 8 x 8 grid
    bits = torch.rand(10, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    bits &= ~region
    q = torch.full((10,), 0.5, dtype=torch.float64)
    sets = ceiling.feature_sets(bits, q, region, (8, 8))
    # 112 grid edges, 12 of them touching the block (8 from outside, 4 inside it): 100 adjacent pairs
    assert {k: v.shape[1] for k, v in sets.items()} == {
        "all patches": 60, "all patches x (1, q)": 120, "neighbours of R": 12, "counts": 2,
        "all patches + adjacent pairs": 160}
    torch.testing.assert_close(sets["counts"].sum(1), sets["all patches"].sum(1))


def test_adjacent_products_against_a_loop_over_the_grid():
    grid = (3, 4)
    gen = torch.Generator().manual_seed(4)
    deviation = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    players = torch.ones(12, dtype=torch.bool)
    players[[5, 11]] = False
    expected = []
    for i in range(12):
        for j in range(i + 1, 12):
            (ri, ci), (rj, cj) = divmod(i, 4), divmod(j, 4)
            if players[i] and players[j] and abs(ri - rj) + abs(ci - cj) == 1:
                expected.append(deviation[:, i] * deviation[:, j])
    got = ceiling.adjacent_products(deviation, players, grid)
    assert got.shape == (5, len(expected)) == (5, 11)  # 17 edges, 6 touching patch 5 or 11
    torch.testing.assert_close(got.sort(1).values, torch.stack(expected, 1).sort(1).values)


def _draws(units, players, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(units, generator=gen, dtype=torch.float64)
    bits = torch.rand(units, players, generator=gen, dtype=torch.float64) < q[:, None]
    return q, bits, gen


def test_gain_bound_finds_a_linear_signal():
    q, bits, gen = _draws(800, 10, 1)
    coef = torch.randn(10, generator=gen, dtype=torch.float64)
    noise = 0.01 * torch.randn(800, generator=gen, dtype=torch.float64)
    y = torch.sin(3 * q) + (bits.double() - q[:, None]) @ coef + noise
    gains = ceiling.ceiling_gains(y, q, {"bits": bits.double() - q[:, None]})
    assert gains["bits"] > 100


def test_gain_bound_is_about_one_on_noise():
    q, bits, gen = _draws(800, 10, 2)
    y = torch.sin(3 * q) + torch.randn(800, generator=gen, dtype=torch.float64)
    gains = ceiling.ceiling_gains(y, q, {"bits": bits.double() - q[:, None]})
    assert 0.8 < gains["bits"] < 1.1
    assert gains["within_q_variance"] == pytest.approx(1.0, rel=0.2)


def test_expected_max_against_enumeration():
    """E[max(0, max over forced u S of c)] against the sum over every S of the 6 players."""
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(8, generator=gen, dtype=torch.float64)
    players = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    q = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0], dtype=torch.float64)
    index = players.nonzero().flatten()
    subsets = ((torch.arange(64)[:, None] >> torch.arange(6)) & 1).bool()  # [64, 6]
    for forced in (torch.zeros(8, dtype=torch.bool), torch.tensor([0, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)):
        present = forced.repeat(64, 1)
        present[:, index] = subsets
        values = ceiling.max_value(c, present)  # [64]
        size = subsets.sum(1).double()
        weights = q[:, None] ** size * (1 - q[:, None]) ** (6 - size)  # [5, 64]
        torch.testing.assert_close(ceiling.expected_max(c, players, forced, q), weights @ values)
    assert float(ceiling.max_value(c, torch.zeros(8, dtype=torch.bool))) == 0.0


def test_max_game_residual_is_the_term_minus_its_mean():
    """Averaged over every S of the players outside R with its probability at q, the residual
    is 0, and on one S it is Eq. 7's (phi's) term of the maximum game minus that mean."""
    c = torch.tensor([0.3, -0.2, 0.9, 0.1, 0.5, 0.7], dtype=torch.float64)
    region = torch.tensor([0, 0, 1, 0, 1, 0], dtype=torch.bool)
    players = (~region).nonzero().flatten()
    subsets = torch.zeros(16, 6, dtype=torch.bool)
    subsets[:, players] = ((torch.arange(16)[:, None] >> torch.arange(4)) & 1).bool()
    q = torch.full((16,), 0.3, dtype=torch.float64)
    weights = 0.3 ** subsets.sum(1).double() * 0.7 ** (4 - subsets.sum(1).double())
    v = lambda present: ceiling.max_value(c, present)  # noqa: E731
    one = torch.eye(6, dtype=torch.bool)
    terms = {"phi": v(subsets | region) - v(subsets),
             "interaction": v(subsets | region) - v(subsets | one[2]) - v(subsets | one[4]) + v(subsets)}
    for score, term in terms.items():
        residual = ceiling.max_game_residual(c, subsets, q, region, score)
        assert float(weights @ residual) == pytest.approx(0.0, abs=1e-12)
        torch.testing.assert_close(residual, term - weights @ term)


def test_learned_gains_find_an_interaction_and_nothing_in_noise():
    """A term with a three-way and a pairwise interaction of presence bits, beyond any linear
    feature set: both learners recover most of it; on pure noise neither gains."""
    q, bits, gen = _draws(1600, 12, 5)
    x = bits.double()
    signal = torch.sin(3 * q) + 2 * x[:, 0] * x[:, 1] * (1 - x[:, 2]) - x[:, 3] * x[:, 4]
    noise = 0.05 * torch.randn(1600, generator=gen, dtype=torch.float64)
    found = ceiling.learned_gains(signal + noise, q, bits)
    assert found["boosted trees"] > 10 and found["MLP"] > 5, found
    plain = ceiling.learned_gains(torch.sin(3 * q) + torch.randn(1600, generator=gen, dtype=torch.float64), q, bits)
    assert all(0.8 < g < 1.1 for g in plain.values()), plain
