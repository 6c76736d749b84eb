"""The evaluation budget of an estimator call (api.md, ``budget=``).

A budget is the number of game evaluations (coalitions) a call may spend, never exceeded. Every
estimator has a minimum (what it needs for one estimate with a standard error, or for one
solvable regression); a budget that is not an int, or is below that minimum, is a ValueError
naming ``budget`` and the minimum.
"""
import numbers


def check_budget(budget, minimum: int, what: str) -> int:
    """``budget`` as a Python int >= ``minimum``; else ValueError naming ``budget``, the minimum
    and ``what`` needs it (e.g. "estimator 'permutation' at n = 10")."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise ValueError(f"budget must be an int >= {minimum} (the minimum of {what}), "
                         f"got {budget!r} of type {type(budget).__name__}")
    if budget < minimum:
        raise ValueError(f"budget must be at least {minimum} (the minimum of {what}), got {int(budget)}")
    return int(budget)


def samples_within(budget: int, evaluations_per_sample: int) -> int:
    """Samples per target a per-target sampler can afford: floor(budget / evaluations per
    sample), where one sample of every target costs ``evaluations_per_sample`` in all."""
    return budget // evaluations_per_sample
