"""budget= (api.md): never exceeded, counted in Estimate.evaluations, clear errors, exact
whenever 2^n fits, and num_samples unchanged draw for draw."""
import pytest
import torch

import shapley_kernels as sk
from reference import brute_coalition_interaction, brute_shapley, brute_sii, random_table, table_game, table_value_fn
from shapley_kernels.approximators import APPROXIMATORS
from shapley_kernels.token_level import TransformerTower, region_interaction

ESTIMATORS = sorted(APPROXIMATORS) + ["stratified", "paper", "control_variate"]


def _table(n, seed):
    return random_table(n, torch.Generator().manual_seed(seed))


def _counting(game):
    """The game, recording the rows of every call (an independent count of evaluations)."""
    calls = []

    def counted(coalitions):
        calls.append(coalitions.shape[0])
        return game(coalitions)
    counted.calls = calls
    return counted


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n", [2, 3, 6, 9])
def test_budget_never_exceeded_and_counted(estimator, n, rng_seed):
    table = _table(n, rng_seed)
    minimum = 4 * n if estimator in ("stratified", "paper", "control_variate") else APPROXIMATORS[estimator].minimum_budget(n)
    for budget in sorted({minimum, minimum + 1, minimum + 7, 3 * minimum + 5}):
        game = _counting(table_game(table))
        est = sk.shapley_values(game, n, method="sampling", budget=budget, estimator=estimator, seed=1,
                                max_batch=5, return_stderr=True)
        assert est.evaluations == sum(game.calls) <= budget
        assert max(game.calls) <= 5  # batched by max_batch
        assert est.value.shape == (n,) and bool(torch.isfinite(est.value).all())


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True, None.__class__])
def test_bad_budget_is_value_error_naming_budget(bad):
    game = table_game(_table(4, 0))
    with pytest.raises(ValueError, match="budget"):
        sk.shapley_values(game, 4, budget=bad)


@pytest.mark.parametrize("estimator", sorted(APPROXIMATORS))
def test_budget_below_minimum_names_it(estimator):
    n = 7
    minimum = APPROXIMATORS[estimator].minimum_budget(n)
    game = table_game(_table(n, 1))
    with pytest.raises(ValueError, match=rf"budget must be at least {minimum}\b"):
        sk.shapley_values(game, n, method="sampling", budget=minimum - 1, estimator=estimator)
    with pytest.raises(ValueError, match=rf"budget must be at least {2 ** n}\b"):
        sk.shapley_values(game, n, method="exact", budget=2 ** n - 1)
    with pytest.raises(ValueError, match="budget"):  # interactions: 2 samples of 4 evaluations per pair
        sk.interaction_index(game, n, torch.tensor([[0, 1], [2, 3]]), budget=15)
    with pytest.raises(ValueError, match="shapley_values"):
        sk.interaction_index(game, n, torch.tensor([[0, 1]]), budget=64, estimator=estimator)
    with pytest.raises(ValueError, match="budget="):
        sk.shapley_values(game, n, num_samples=10, estimator=estimator)


@pytest.mark.parametrize("n", [1, 4, 10])
def test_auto_is_exact_whenever_all_coalitions_fit(n, rng_seed):
    table = _table(n, rng_seed)
    want = torch.tensor(brute_shapley(table_value_fn(table), n), dtype=torch.float64)
    assert sk.choose_method(n, 2 ** n) == "exact" and sk.choose_method(n, 2 ** n - 1) == "sampling"
    est = sk.shapley_values(table_game(table), n, budget=2 ** n, return_stderr=True)
    assert est.evaluations == 2 ** n and bool((est.stderr == 0).all())
    torch.testing.assert_close(est.value, want, rtol=1e-10, atol=1e-10)
    if n > 1:  # one evaluation short: sampled, by the documented choice, within the budget
        est = sk.shapley_values(table_game(table), n, budget=2 ** n - 1, seed=0, return_stderr=True)
        assert est.evaluations <= 2 ** n - 1
        assert sk.choose_estimator(n, 2 ** n - 1) in APPROXIMATORS


def test_one_player_needs_two_evaluations():
    game = table_game(torch.tensor([0.5, 2.0], dtype=torch.float64))
    for estimator in (None, "kernel", "svarm"):
        est = sk.shapley_values(game, 1, budget=2, estimator=estimator, return_stderr=True)
        assert est.evaluations == 2 and float(est.value[0]) == 1.5
        with pytest.raises(ValueError, match=r"budget must be at least 2\b"):
            sk.shapley_values(game, 1, budget=1, estimator=estimator)


def test_budget_sizes_per_target_samplers_like_num_samples(rng_seed):
    """estimator="stratified" with budget = 2 n J is num_samples = J, draw for draw."""
    n, J = 6, 9
    game = table_game(_table(n, rng_seed))
    a = sk.shapley_values(game, n, method="sampling", num_samples=J, seed=5, return_stderr=True)
    b = sk.shapley_values(game, n, method="sampling", budget=2 * n * J + 3, estimator="stratified",
                          seed=5, return_stderr=True)
    c = sk.shapley_values(game, n, method="sampling", num_samples=J, seed=5, estimator="stratified",
                          return_stderr=True)
    assert a.evaluations == b.evaluations == 2 * n * J
    torch.testing.assert_close(a.value, b.value, rtol=0, atol=0)
    torch.testing.assert_close(a.value, c.value, rtol=0, atol=0)


def test_budget_on_interactions(rng_seed):
    n = 5
    table = _table(n, rng_seed)
    value_fn = table_value_fn(table)
    pairs = torch.tensor([[0, 1], [2, 4]])
    coalitions = torch.zeros(2, n, dtype=torch.bool)
    coalitions[0, [0, 1, 2]] = True
    coalitions[1, [3, 4]] = True
    for budget in (18, 31, 2 ** n - 1):
        est = sk.interaction_index(table_game(table), n, pairs, budget=budget, seed=2, return_stderr=True)
        assert est.evaluations == 8 * (budget // 8) <= budget
        est = sk.coalition_interaction(table_game(table), n, coalitions, budget=budget, seed=2, return_stderr=True)
        assert est.evaluations == 9 * (budget // 9) <= budget
    none = sk.interaction_index(table_game(table), n, pairs[:0], budget=9, return_stderr=True)
    assert none.value.shape == (0,) and none.evaluations == 0
    exact = sk.interaction_index(table_game(table), n, pairs, budget=2 ** n, return_stderr=True)
    assert exact.evaluations == 2 ** n
    want = torch.tensor([brute_sii(value_fn, n, 0, 1), brute_sii(value_fn, n, 2, 4)], dtype=torch.float64)
    torch.testing.assert_close(exact.value, want, rtol=1e-10, atol=1e-10)
    exact = sk.coalition_interaction(table_game(table), n, coalitions, budget=2 ** n)
    want = torch.tensor([brute_coalition_interaction(value_fn, n, [0, 1, 2]),
                         brute_coalition_interaction(value_fn, n, [3, 4])], dtype=torch.float64)
    torch.testing.assert_close(exact, want, rtol=1e-10, atol=1e-10)


def _region_setup():
    torch.manual_seed(0)
    img = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6).double().eval()
    txt = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6).double().eval()
    gen = torch.Generator().manual_seed(3)
    x_img = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    x_txt = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    regions = torch.zeros(2, 2, 5, dtype=torch.bool)
    regions[:, 0, [0, 1]] = True
    regions[:, 1, [2, 3, 4]] = True
    return img, txt, x_img, x_txt, regions


def test_budget_on_region_interaction():
    img, txt, x_img, x_txt, regions = _region_setup()
    per_sample = (2 + 2) + (3 + 2)  # both regions of a pair, Eq. 7
    sampled = region_interaction(img, txt, x_img, x_txt, regions, method="sampling", num_samples=6, seed=1)
    budgeted = region_interaction(img, txt, x_img, x_txt, regions, budget=6 * per_sample + 4, seed=1,
                                  method="sampling")
    torch.testing.assert_close(budgeted.value, sampled.value, rtol=0, atol=0)
    assert bool((budgeted.evaluations == 6 * per_sample).all())
    exact = region_interaction(img, txt, x_img, x_txt, regions, budget=2 ** 8)
    assert bool((exact.evaluations == 2 ** 8).all()) and bool((exact.stderr == 0).all())
    torch.testing.assert_close(exact.value, region_interaction(img, txt, x_img, x_txt, regions, method="exact").value)
    below = region_interaction(img, txt, x_img, x_txt, regions, budget=2 ** 8 - 1, seed=1)
    assert bool((below.evaluations <= 2 ** 8 - 1).all()) and bool((below.stderr > 0).all())
    for bad, minimum in ((2 * per_sample - 1, 2 * per_sample), (0, 1)):
        with pytest.raises(ValueError, match=rf"budget must be at least {minimum}\b"):
            region_interaction(img, txt, x_img, x_txt, regions, budget=bad, method="sampling")
    with pytest.raises(ValueError, match="budget"):
        region_interaction(img, txt, x_img, x_txt, regions, budget=100.0)
