"""benchmarks/cv_ceiling.py: its pilot is the default estimator's own draws, and its gain bound
finds a linear signal where there is one and none in noise."""
import importlib.util
import os
import sys

import pytest
import torch

from shapley_kernels._strata import strata_stderr
from shapley_kernels.token_level import region_interaction

_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
sys.path.insert(0, _DIR)
_spec = importlib.util.spec_from_file_location("cv_ceiling", os.path.join(_DIR, "cv_ceiling.py"))
ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceiling)
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


def test_feature_sets_of_a_block_inside_the_grid():
    region = torch.zeros(64, dtype=torch.bool)
    region[[27, 28, 35, 36]] = True  # a 2 x 2 block in the middle of the 8 x 8 grid
    bits = torch.rand(10, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    bits &= ~region
    q = torch.full((10,), 0.5, dtype=torch.float64)
    sets = ceiling.feature_sets(bits, q, region, 8)
    assert {k: v.shape[1] for k, v in sets.items()} == {
        "all patches": 60, "all patches x (1, q)": 120, "neighbours of R": 12, "counts": 2}
    torch.testing.assert_close(sets["counts"].sum(1), sets["all patches"].sum(1))


def _draws(units, players, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(units, generator=gen, dtype=torch.float64)
    bits = torch.rand(units, players, generator=gen, dtype=torch.float64) < q[:, None]
    return q, bits, gen


def test_gain_bound_finds_a_linear_signal():
    q, bits, gen = _draws(800, 10, 1)
    coef = torch.randn(10, generator=gen, dtype=torch.float64)
    y = torch.sin(3 * q) + (bits.double() - q[:, None]) @ coef + 0.01 * torch.randn(800, generator=gen, dtype=torch.float64)
    gains = ceiling.ceiling_gains(y, q, {"bits": bits.double() - q[:, None]})
    assert gains["bits"] > 100


def test_gain_bound_is_about_one_on_noise():
    q, bits, gen = _draws(800, 10, 2)
    y = torch.sin(3 * q) + torch.randn(800, generator=gen, dtype=torch.float64)
    gains = ceiling.ceiling_gains(y, q, {"bits": bits.double() - q[:, None]})
    assert 0.8 < gains["bits"] < 1.1
    assert gains["within_q_variance"] == pytest.approx(1.0, rel=0.2)
