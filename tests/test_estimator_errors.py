"""Bad input to the generic estimators and to instability: a clear error naming the argument."""
import pytest
import torch

import shapley_kernels as sk
from reference import random_table, table_game

N = 4
GAME = table_game(random_table(N, torch.Generator().manual_seed(0)))
PAIRS = torch.tensor([[0, 1], [2, 3]])
COALITIONS = torch.tensor([[True, True, False, False]])


def _constant_game(value, shape=None):
    """A game answering ``value`` for every row (shape [C] unless ``shape`` is given)."""
    def game(coalitions):
        return torch.full(shape or (coalitions.shape[0],), value, dtype=torch.float64)
    return game


ESTIMATORS = [
    lambda game, n, **kw: sk.shapley_values(game, n, **kw),
    lambda game, n, **kw: sk.interaction_index(game, n, PAIRS, **kw),
    lambda game, n, **kw: sk.coalition_interaction(game, n, COALITIONS, **kw),
]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(game=None), TypeError, "game must be callable"),
    (dict(game=lambda c: [0.0] * c.shape[0]), TypeError, "game must return a torch.Tensor"),
    (dict(game=_constant_game(1.0, shape=(3,))), ValueError, r"game must return shape \[16\] for 16 coalitions"),
    (dict(game=lambda c: torch.zeros(c.shape[0], 1)), ValueError, "game must return shape"),
    (dict(game=_constant_game(float("nan"))), ValueError, "game returned 16 non-finite"),
    (dict(game=_constant_game(float("inf"))), ValueError, "game returned .* non-finite"),
    (dict(game=lambda c: torch.zeros(c.shape[0], dtype=torch.bool)), TypeError, "game must return real"),
    (dict(method="magic"), ValueError, "method must be one of"),
    (dict(num_samples=0), ValueError, "num_samples must be positive"),
    (dict(num_samples=-5), ValueError, "num_samples must be positive"),
    (dict(num_samples=2.5), TypeError, "num_samples must be an int"),
    (dict(num_samples=1, method="sampling"), ValueError, "num_samples must be at least 2"),
    (dict(max_batch=0), ValueError, "max_batch must be positive"),
    (dict(max_batch=-1), ValueError, "max_batch must be positive"),
    (dict(seed="abc", method="sampling"), TypeError, "seed must be an int"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(return_stderr="yes"), TypeError, "return_stderr must be a bool"),
])
def test_common_argument_errors(estimator, kwargs, error, match):
    kwargs = dict(kwargs)
    game = kwargs.pop("game", GAME)
    kwargs.setdefault("method", "exact")
    with pytest.raises(error, match=match):
        estimator(game, N, **kwargs)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_while_sampling_is_reported(estimator):
    with pytest.raises(ValueError, match="game returned .* non-finite"):
        estimator(_constant_game(float("nan")), N, method="sampling", num_samples=3, seed=0)


@pytest.mark.parametrize("n, error, match", [
    (0, ValueError, "n must be at least 1"),
    (-3, ValueError, "n must be at least 1"),
    (2.0, TypeError, "n must be an int"),
    (True, TypeError, "n must be an int"),
])
def test_bad_n(n, error, match):
    with pytest.raises(error, match=match):
        sk.shapley_values(GAME, n, method="exact")


def test_exact_beyond_limit_names_n():
    n = sk.EXACT_MAX_PLAYERS + 1
    with pytest.raises(ValueError, match=f"n = {n} is beyond the exact limit"):
        sk.shapley_values(GAME, n, method="exact")
    pairs = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="beyond the exact limit"):
        sk.interaction_index(GAME, n, pairs, method="exact")


@pytest.mark.parametrize("pairs, error, match", [
    ([[0, 1]], TypeError, "pairs must be a torch.Tensor"),
    (torch.tensor([[0.0, 1.0]]), TypeError, "pairs must be an integer tensor"),
    (torch.tensor([0, 1]), ValueError, "pairs must have 2 dimensions"),
    (torch.tensor([[0, 1, 2]]), ValueError, r"pairs must have shape \[\*, 2\]"),
    (torch.tensor([[0, N]]), ValueError, "pairs must hold player indices in 0..3"),
    (torch.tensor([[-1, 2]]), ValueError, "pairs must hold player indices"),
    (torch.tensor([[2, 2]]), ValueError, "pairs must hold two distinct players"),
])
def test_bad_pairs(pairs, error, match):
    with pytest.raises(error, match=match):
        sk.interaction_index(GAME, N, pairs, method="exact")


@pytest.mark.parametrize("coalitions, error, match", [
    (torch.tensor([[1, 1, 0, 0]]), TypeError, "coalitions must be a bool tensor"),
    (torch.tensor([True, True, False, False]), ValueError, "coalitions must have 2 dimensions"),
    (torch.tensor([[True, True, False]]), ValueError, r"coalitions must have shape \[\*, 4\]"),
    (torch.tensor([[True, True, False, False], [False, False, True, False]]), ValueError,
     "coalitions must each have at least 2 members; row 1 has 1"),
    (torch.zeros(1, N, dtype=torch.bool), ValueError, "row 0 has 0"),
])
def test_bad_coalitions(coalitions, error, match):
    with pytest.raises(error, match=match):
        sk.coalition_interaction(GAME, N, coalitions, method="exact")


@pytest.mark.parametrize("runs, error, match", [
    ([[1.0], [2.0]], TypeError, "runs must be a torch.Tensor"),
    (torch.ones(1, 3), ValueError, "runs must hold at least 2 runs"),
    (torch.tensor(1.0), ValueError, "runs must hold at least 2 runs"),
    (torch.ones(3, 0), ValueError, "at least one entry per run"),
    (torch.zeros(3, 4), ValueError, "runs are all zero"),
    (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), ValueError, "runs contains NaN"),
    (torch.ones(2, 3, dtype=torch.long), TypeError, "runs must be a floating-point tensor"),
])
def test_bad_runs(runs, error, match):
    with pytest.raises(error, match=match):
        sk.instability(runs)
