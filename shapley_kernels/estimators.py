"""Generic Shapley estimators for any batched game (api.md, "Generic estimators").

A batched game is ``game(coalitions bool[C, n]) -> Tensor[C]`` (True = player present).

    shapley_values(game, n)                    -> Tensor[n]  phi(i), spec Eq. 3
    interaction_index(game, n, pairs[P, 2])    -> Tensor[P]  pairwise SII, spec Eq. 9-10
    coalition_interaction(game, n, coal[R, n]) -> Tensor[R]  I([R]) of Eq. 4, via its Eq. 7 form

Methods: ``"exact"`` evaluates all 2^n coalitions once (n <= EXACT_MAX_PLAYERS = 24) and
derives every index from that table (``_enumeration``); ``"sampling"`` is an unbiased Monte
Carlo estimator with ``num_samples`` samples per target (``_sampling``): ``estimator=
"stratified"`` (default: q stratified over num_samples strata, collapsed-strata standard
errors) or ``"paper"`` (the paper's plain estimator), same expectation and evaluations; ``"auto"`` is
``choose_method(n, evaluations sampling would spend)``. Values are float64 when the game
returns float64, float32 otherwise (accumulated in float64 either way).
"""
import numbers
from typing import Optional

import torch

from .checks import (check_choice, check_device, check_max_batch, check_num_samples, check_seed, check_shape,
                      check_tensor, check_has_values)
from ._enumeration import exact_indices, value_table
from ._estimate import Estimate
from ._sampling import sampled_indices, sampling_evaluations

EXACT_MAX_PLAYERS = 24
"""Largest n for ``method="exact"``: 2^24 ~ 16.8M game evaluations and a 128 MB value table."""

METHODS = ("auto", "exact", "sampling")
ESTIMATORS = ("control_variate", "stratified", "paper")
DEFAULT_NUM_SAMPLES = 500


def choose_method(n: int, sampling_evaluations: int) -> str:
    """What ``method="auto"`` does: ``"exact"`` when n <= EXACT_MAX_PLAYERS and enumeration's
    2^n game evaluations are no more than ``sampling_evaluations`` (what sampling would spend at
    the requested ``num_samples``), else ``"sampling"``."""
    if n <= EXACT_MAX_PLAYERS and 2 ** n <= sampling_evaluations:
        return "exact"
    return "sampling"


class _CheckedGame:
    """Calls the user's game in batches of at most ``max_batch`` rows and checks every answer.

    ``self(coalitions bool[C, n]) -> float64[C]`` on ``device``. Tracks ``evaluations`` (rows
    evaluated) and ``dtype`` (float64 if the game ever returned float64, else float32).
    """

    def __init__(self, game, max_batch: int, device: torch.device):
        self.game, self.max_batch, self.device = game, max_batch, device
        self.evaluations = 0
        self.dtype = torch.float32

    def _call(self, coalitions: torch.Tensor) -> torch.Tensor:
        count = coalitions.shape[0]
        out = self.game(coalitions)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"game must return a torch.Tensor, got {type(out).__name__} "
                            f"for {count} coalitions")
        if tuple(out.shape) != (count,):
            raise ValueError(f"game must return shape [{count}] for {count} coalitions, "
                             f"got {list(out.shape)}")
        if out.is_complex() or out.dtype == torch.bool:
            raise TypeError(f"game must return real values, got {out.dtype}")
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(f"game returned {bad} non-finite (NaN or inf) values for a batch of "
                             f"{count} coalitions")
        if out.dtype == torch.float64:
            self.dtype = torch.float64
        self.evaluations += count
        return out.to(device=self.device, dtype=torch.float64)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        if coalitions.shape[0] <= self.max_batch:
            return self._call(coalitions)
        return torch.cat([self._call(chunk) for chunk in coalitions.split(self.max_batch)])


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return int(n)


def _representable(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``x`` as ``dtype``; ValueError when finite game values gave a result that overflows it."""
    out = x.to(dtype)
    if not bool(torch.isfinite(out).all()):
        where = "float64 accumulation" if not bool(torch.isfinite(x).all()) else f"the game's {dtype}"
        raise ValueError(f"the game values overflow: the result exceeds the range of {where} "
                         f"(largest |value| {float(x.abs().nan_to_num(float('inf')).max()):.3g}); rescale the game")
    return out


def _generator(seed, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``seed`` (None: a seed from torch's global RNG)."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    return torch.Generator(device=device).manual_seed(int(seed))


def _estimate(game, n: int, targets: torch.Tensor, shapley: bool, method, num_samples, seed,
              max_batch, return_stderr, device, estimator):
    """Shared body of the three estimators. targets bool[T, n] on ``device``."""
    if not callable(game):
        raise TypeError(f"game must be callable, got {type(game).__name__}")
    check_choice("method", method, METHODS)
    check_choice("estimator", estimator, ESTIMATORS)
    num_samples = check_num_samples(num_samples, DEFAULT_NUM_SAMPLES)
    max_batch = check_max_batch(max_batch)
    seed = check_seed(seed)
    if not isinstance(return_stderr, bool):
        raise TypeError(f"return_stderr must be a bool, got {type(return_stderr).__name__}")
    if method == "exact" and n > EXACT_MAX_PLAYERS:
        raise ValueError(f"n = {n} is beyond the exact limit EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS}; "
                         f"use method='sampling'")
    if method == "auto":
        method = choose_method(n, sampling_evaluations(targets, num_samples, shapley))
    if method == "sampling" and num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for sampling (a standard error needs "
                         f"two samples), got {num_samples}")
    checked = _CheckedGame(game, max_batch, device)
    if targets.shape[0] == 0:  # nothing asked: no game evaluation
        value = stderr = torch.zeros(0, dtype=torch.float64, device=device)
    elif method == "exact":
        table = value_table(checked, n, max_batch, device)
        value = exact_indices(table, n, targets, shapley)
        stderr = torch.zeros_like(value)
    else:
        value, stderr = sampled_indices(checked, targets, num_samples, _generator(seed, device),
                                        shapley, estimator)
    value, stderr = _representable(value, checked.dtype), _representable(stderr, checked.dtype)
    return Estimate(value, stderr, checked.evaluations) if return_stderr else value


def shapley_values(game, n: int, *, method: str = "auto", num_samples: Optional[int] = None,
                   seed: Optional[int] = None, max_batch: Optional[int] = None,
                   return_stderr: bool = False, device=None, estimator: str = "stratified"):
    """Shapley value phi(i) of every player (spec Eq. 3): Tensor[n].

    game: batched game ``game(bool[C, n]) -> Tensor[C]``; n >= 1 players.
    method: "exact" (n <= EXACT_MAX_PLAYERS), "sampling" (2 evaluations per sample and player,
    ``num_samples`` per player, default 500) or "auto" (``choose_method``).
    seed: int for reproducible sampling, None to draw one from torch's global generator.
    max_batch: most coalitions per game call (default 4096). device: where coalitions are
    built and the result lives (default CPU). estimator: "stratified" (default) or "paper"
    (module docstring), for sampling.
    Returns Tensor[n] (float64 if the game returns float64, else float32), or with
    ``return_stderr=True`` an Estimate(value[n], stderr[n], evaluations).
    """
    n = _check_n(n)
    device = torch.device("cpu") if device is None else check_device("device", device)
    targets = torch.eye(n, dtype=torch.bool, device=device)
    return _estimate(game, n, targets, True, method, num_samples, seed, max_batch,
                     return_stderr, device, estimator)


def interaction_index(game, n: int, pairs: torch.Tensor, *, method: str = "auto",
                      num_samples: Optional[int] = None, seed: Optional[int] = None,
                      max_batch: Optional[int] = None, return_stderr: bool = False, device=None,
                      estimator: str = "stratified"):
    """Pairwise Shapley interaction index of every pair (spec Eq. 9-10): Tensor[P].

    pairs: LongTensor[P, 2] of distinct player indices in 0..n-1. Each sample costs 4 game
    evaluations (v(S+ij), v(S+i), v(S+j), v(S)). device: default ``pairs.device``. Other
    arguments and the return value as in ``shapley_values``.
    """
    n = _check_n(n)
    check_tensor("pairs", pairs, dims=2, dtype_kind="int")
    check_has_values("pairs", pairs)
    check_shape("pairs", pairs, (None, 2))
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= n):
        raise ValueError(f"pairs must hold player indices in 0..{n - 1}, got values in "
                         f"{int(pairs.min())}..{int(pairs.max())}")
    if bool((pairs[:, 0] == pairs[:, 1]).any()):
        raise ValueError("pairs must hold two distinct players per row (found i == j)")
    device = pairs.device if device is None else check_device("device", device)
    pairs = pairs.to(device=device, dtype=torch.long)
    targets = torch.zeros(pairs.shape[0], n, dtype=torch.bool, device=device)
    targets.scatter_(1, pairs, True)
    return _estimate(game, n, targets, False, method, num_samples, seed, max_batch,
                     return_stderr, device, estimator)


def coalition_interaction(game, n: int, coalitions: torch.Tensor, *, method: str = "auto",
                          num_samples: Optional[int] = None, seed: Optional[int] = None,
                          max_batch: Optional[int] = None, return_stderr: bool = False,
                          device=None, estimator: str = "stratified"):
    """Interaction I([R]) of every coalition (spec Eq. 4, computed in its Eq. 7 form): Tensor[R].

    coalitions: bool[R, n], each row with at least 2 members. Each sample costs |R| + 2 game
    evaluations. device: default ``coalitions.device``. Other arguments and the return value
    as in ``shapley_values``.
    """
    n = _check_n(n)
    check_tensor("coalitions", coalitions, dims=2, dtype_kind="bool")
    check_has_values("coalitions", coalitions)
    check_shape("coalitions", coalitions, (None, n))
    sizes = coalitions.sum(1)
    if bool((sizes < 2).any()):
        row = int((sizes < 2).nonzero()[0])
        raise ValueError(f"coalitions must each have at least 2 members; row {row} has "
                         f"{int(sizes[row])}")
    device = coalitions.device if device is None else check_device("device", device)
    return _estimate(game, n, coalitions.to(device), False, method, num_samples, seed,
                     max_batch, return_stderr, device, estimator)
