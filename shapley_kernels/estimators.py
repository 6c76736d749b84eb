"""Generic Shapley estimators for any batched game (api.md, "Generic estimators").

A batched game is ``game(coalitions bool[C, n]) -> Tensor[C]`` (True = player present).

    shapley_values(game, n)                    -> Tensor[n]  phi(i), spec Eq. 3
    interaction_index(game, n, pairs[P, 2])    -> Tensor[P]  pairwise SII, spec Eq. 9-10
    coalition_interaction(game, n, coal[R, n]) -> Tensor[R]  I([R]) of Eq. 4, via its Eq. 7 form

Methods: ``"exact"`` evaluates all 2^n coalitions once (n <= EXACT_MAX_PLAYERS = 24) and
derives every index from that table (``_enumeration``); ``"sampling"`` is a Monte Carlo
estimator; ``"auto"`` is ``choose_method(n, evaluations)``.

Two ways to size a call:
  ``num_samples`` (no ``budget``): samples per target of a per-target sampler (``_sampling``):
      ``estimator="stratified"`` (the default: q stratified over num_samples strata,
      collapsed-strata standard errors), ``"control_variate"`` or ``"paper"`` (the paper's plain
      estimator), same expectation and evaluations; "auto" is exact when 2^n is no more than
      the evaluations sampling would spend. Unchanged draw for draw by ``budget``'s arrival.
  ``budget`` (game evaluations, never exceeded; ``num_samples`` is then ignored): "auto" is
      exact when 2^n <= budget, else (``shapley_values``) the estimator ``choose_estimator(n,
      budget)`` names. ``estimator=`` may name any per-target sampler above (it gets
      floor(budget / evaluations per sample) samples) or, for ``shapley_values``, a budgeted
      estimator of ``approximators`` ("permutation", "kernel", "unbiased_kernel", "kadd2",
      "kadd3", "svarm"; docs/estimators.md says which to use when).
Values are float64 when the game returns float64, float32 otherwise (accumulated in float64
either way). Estimators without a defined standard error ("kernel", "kadd2", "kadd3") return a
NaN ``stderr``.
"""
import numbers
from typing import Optional

import torch

from .defaults import default_max_batch
from .checks import (check_choice, check_device, check_max_batch, check_num_samples, check_seed, check_shape,
                      check_tensor, check_has_values)
from ._enumeration import exact_indices, value_table
from ._estimate import Estimate
from ._budget import check_budget, samples_within
from ._sampling import sampled_indices, sampling_evaluations
from .approximators import APPROXIMATORS, choose_estimator

EXACT_MAX_PLAYERS = 24
"""Largest n for ``method="exact"``: 2^24 ~ 16.8M game evaluations and a 128 MB value table."""

METHODS = ("auto", "exact", "sampling")
SAMPLERS = ("control_variate", "stratified", "paper")
"""Per-target samplers (``_sampling``): every index function, sized by num_samples or budget."""
ESTIMATORS = SAMPLERS + tuple(APPROXIMATORS)
DEFAULT_ESTIMATOR = "stratified"
DEFAULT_NUM_SAMPLES = 500


def choose_method(n: int, sampling_evaluations: int) -> str:
    """What ``method="auto"`` does: ``"exact"`` when n <= EXACT_MAX_PLAYERS and enumeration's
    2^n game evaluations are no more than ``sampling_evaluations`` (the ``budget``, or what
    sampling would spend at the requested ``num_samples``), else ``"sampling"``."""
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


def _resolve_budget(n: int, targets: torch.Tensor, shapley: bool, method: str, estimator, budget):
    """(method, estimator, num_samples or None) for a call with a ``budget``; ValueError naming
    ``budget`` and the minimum when it is not an int or below what the choice needs."""
    check_budget(budget, 1, "any estimator")
    if method == "exact":
        check_budget(budget, 2 ** n, f"method='exact' at n = {n} (2^n)")
        return "exact", estimator, None
    if method == "auto" and choose_method(n, budget) == "exact":
        return "exact", estimator, None
    if shapley and n == 1 and estimator not in SAMPLERS:  # auto or a budgeted estimator: v(N) - v(empty)
        check_budget(budget, 2, "n = 1 (v(empty) and v(N))")
        return "exact", estimator, None
    if estimator is None:
        estimator = choose_estimator(n, budget) if shapley else DEFAULT_ESTIMATOR
    if estimator in SAMPLERS:
        per_sample = sampling_evaluations(targets, 1, shapley)
        if per_sample == 0:  # no target: nothing to evaluate
            return "sampling", estimator, 2
        check_budget(budget, 2 * per_sample, f"estimator {estimator!r} here (2 samples of "
                                             f"{per_sample} evaluations)")
        return "sampling", estimator, samples_within(budget, per_sample)
    if not shapley:
        raise ValueError(f"estimator {estimator!r} estimates Shapley values only (shapley_values); "
                         f"use one of {list(SAMPLERS)} here")
    check_budget(budget, APPROXIMATORS[estimator].minimum_budget(n), f"estimator {estimator!r} at n = {n}")
    return "sampling", estimator, None


def _estimate(game, n: int, targets: torch.Tensor, shapley: bool, method, num_samples, seed,
              max_batch, return_stderr, device, estimator, budget=None):
    """Shared body of the three estimators. targets bool[T, n] on ``device``."""
    if not callable(game):
        raise TypeError(f"game must be callable, got {type(game).__name__}")
    check_choice("method", method, METHODS)
    if estimator is not None:
        check_choice("estimator", estimator, ESTIMATORS)
    max_batch = check_max_batch(max_batch, default_max_batch(device))
    seed = check_seed(seed)
    if not isinstance(return_stderr, bool):
        raise TypeError(f"return_stderr must be a bool, got {type(return_stderr).__name__}")
    if method == "exact" and n > EXACT_MAX_PLAYERS:
        raise ValueError(f"n = {n} is beyond the exact limit EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS}; "
                         f"use method='sampling'")
    if budget is not None:
        method, estimator, num_samples = _resolve_budget(n, targets, shapley, method, estimator, budget)
    else:
        estimator = DEFAULT_ESTIMATOR if estimator is None else estimator
        if estimator not in SAMPLERS:
            raise ValueError(f"estimator {estimator!r} is sized by budget=, not num_samples; "
                             f"pass budget (game evaluations)")
        num_samples = check_num_samples(num_samples, DEFAULT_NUM_SAMPLES)
        if method == "auto":
            method = choose_method(n, sampling_evaluations(targets, num_samples, shapley))
    if method == "sampling" and estimator in SAMPLERS and num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for sampling (a standard error needs "
                         f"two samples), got {num_samples}")
    checked = _CheckedGame(game, max_batch, device)
    if targets.shape[0] == 0:  # nothing asked: no game evaluation
        value = stderr = torch.zeros(0, dtype=torch.float64, device=device)
    elif method == "exact":
        table = value_table(checked, n, max_batch, device)
        value = exact_indices(table, n, targets, shapley)
        stderr = torch.zeros_like(value)
    elif estimator in SAMPLERS:
        value, stderr = sampled_indices(checked, targets, num_samples, _generator(seed, device),
                                        shapley, estimator)
    else:
        value, stderr = APPROXIMATORS[estimator].estimate(checked, n, budget, _generator(seed, device), device)
    value = _representable(value, checked.dtype)
    stderr = stderr.to(checked.dtype) if bool(stderr.isnan().all()) else _representable(stderr, checked.dtype)
    return Estimate(value, stderr, checked.evaluations) if return_stderr else value


def shapley_values(game, n: int, *, method: str = "auto", num_samples: Optional[int] = None,
                   seed: Optional[int] = None, max_batch: Optional[int] = None,
                   return_stderr: bool = False, device=None, estimator: Optional[str] = None,
                   budget: Optional[int] = None):
    """Shapley value phi(i) of every player (spec Eq. 3): Tensor[n].

    game: batched game ``game(bool[C, n]) -> Tensor[C]``; n >= 1 players.
    method: "exact" (n <= EXACT_MAX_PLAYERS), "sampling" or "auto" (``choose_method``).
    num_samples: per player for the per-target samplers (2 evaluations per sample and player,
    default 500). budget: game evaluations the call may spend (never exceeded; then
    num_samples is ignored, "auto" is exact when 2^n <= budget and otherwise samples with
    ``choose_estimator(n, budget)``).
    seed: int for reproducible sampling, None to draw one from torch's global generator.
    max_batch: most coalitions per game call (default 512 on the CPU, 4096 on CUDA). device: where coalitions are
    built and the result lives (default CPU). estimator: a per-target sampler ("stratified", the
    default without budget; "control_variate"; "paper") or, with budget, a budgeted estimator
    ("permutation", "kernel", "unbiased_kernel", "kadd2", "kadd3", "svarm"; module docstring,
    ``approximators``).
    Returns Tensor[n] (float64 if the game returns float64, else float32), or with
    ``return_stderr=True`` an Estimate(value[n], stderr[n], evaluations).
    """
    n = _check_n(n)
    device = torch.device("cpu") if device is None else check_device("device", device)
    targets = torch.eye(n, dtype=torch.bool, device=device)
    return _estimate(game, n, targets, True, method, num_samples, seed, max_batch,
                     return_stderr, device, estimator, budget)


def interaction_index(game, n: int, pairs: torch.Tensor, *, method: str = "auto",
                      num_samples: Optional[int] = None, seed: Optional[int] = None,
                      max_batch: Optional[int] = None, return_stderr: bool = False, device=None,
                      estimator: Optional[str] = None, budget: Optional[int] = None):
    """Pairwise Shapley interaction index of every pair (spec Eq. 9-10): Tensor[P].

    pairs: LongTensor[P, 2] of distinct player indices in 0..n-1. Each sample costs 4 game
    evaluations (v(S+ij), v(S+i), v(S+j), v(S)); a ``budget`` buys floor(budget / (4 P))
    samples per pair of a per-target sampler (default "stratified"). device: default
    ``pairs.device``. Other arguments and the return value as in ``shapley_values``.
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
                     return_stderr, device, estimator, budget)


def coalition_interaction(game, n: int, coalitions: torch.Tensor, *, method: str = "auto",
                          num_samples: Optional[int] = None, seed: Optional[int] = None,
                          max_batch: Optional[int] = None, return_stderr: bool = False,
                          device=None, estimator: Optional[str] = None, budget: Optional[int] = None):
    """Interaction I([R]) of every coalition (spec Eq. 4, computed in its Eq. 7 form): Tensor[R].

    coalitions: bool[R, n], each row with at least 2 members. Each sample costs |R| + 2 game
    evaluations; a ``budget`` buys floor(budget / sum_R (|R| + 2)) samples per coalition of a
    per-target sampler (default "stratified"). device: default ``coalitions.device``. Other
    arguments and the return value as in ``shapley_values``.
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
                     max_batch, return_stderr, device, estimator, budget)
