"""Unbiased Monte Carlo estimates of Shapley values and interactions (spec Eq. 6, 7, 10).

For a target T of k players (one player, a pair, or a coalition R), each sample draws a size c
uniform over {0..n-k} and then S uniform among the size-c subsets of N\\T, and evaluates

    Shapley     (k = 1):  v(S + i) - v(S)                                   2 evaluations
    interaction (k >= 2): v(S + T) - sum_{x in T} v(S + x) + (k - 1) v(S)   k + 2 evaluations

(k = 2 gives Eq. 10's v(S+ij) - v(S+i) - v(S+j) + v(S), 4 evaluations). The estimate is the
sample mean. Estimators (same expectation, same evaluations):
  "paper":      q ~ U(0, 1) independently per sample; stderr = sample std / sqrt(num_samples).
  "stratified": one q per stratum j of (0, 1) split into num_samples equal strata
                (``_strata``); collapsed-strata stderr.
  "control_variate": "stratified" plus cross-fitted control variates, the players'
                presence bits minus q (mean 0 given q; ``_strata.crossfit_control``).
"""
import torch

from ._strata import crossfit_control, iid_stderr, strata_stderr, stratified_uniform

# bool elements of drawn coalitions per chunk of targets (~64 MB); fixed so that the random
# stream, and with it the result for a given seed, does not depend on ``max_batch``.
_CHUNK_ELEMENTS = 2 ** 26


def draw_subsets(targets: torch.Tensor, num_samples: int, generator: torch.Generator,
                 stratified: bool = False) -> torch.Tensor:
    """S for every (target, sample): bool[T, num_samples, n], never holding a target member.

    The q-trick: draw q ~ U(0, 1) once per sample and keep each of the n - k other players with
    probability q. Given q the size is Binomial(n - k, q), and integrating over q,
    P(|S| = c) = C(n-k, c) * B(c + 1, n - k - c + 1) = 1 / (n - k + 1): the size is uniform over
    {0..n-k} and, by symmetry, S is uniform among the subsets of that size. This is exactly the
    spec's two-stage draw, with no sort or permutation on the device. ``stratified``: sample s
    takes its q from stratum s of num_samples equal strata (each q still U(0, 1) on its stratum).
    """
    return _draw(targets, num_samples, generator, stratified)[1]


def _draw(targets, num_samples, generator, stratified):
    """``draw_subsets`` with its q: (q float[T, num_samples, 1], subsets bool[T, num_samples, n])."""
    t, n = targets.shape
    if stratified:
        q = stratified_uniform((t,), num_samples, generator, targets.device)[..., None]
    else:
        q = torch.rand(t, num_samples, 1, generator=generator, device=targets.device)
    keep = torch.rand(t, num_samples, n, generator=generator, device=targets.device) < q
    return q, keep & ~targets[:, None, :]


def sample_terms(evaluate, targets: torch.Tensor, subsets: torch.Tensor, shapley: bool) -> torch.Tensor:
    """The per-sample term of every (target, sample): float64[T, num_samples].

    targets bool[T, n]; subsets bool[T, num_samples, n] (``draw_subsets``);
    ``evaluate(coalitions bool[C, n]) -> float64[C]``. All coalitions of the chunk are built as
    one bool tensor and evaluated together (``evaluate`` splits them into game batches).
    """
    t, num_samples, n = subsets.shape
    full = subsets | targets[:, None, :]  # S + T
    if shapley:
        values = evaluate(torch.cat([full.reshape(-1, n), subsets.reshape(-1, n)]))
        return (values[: t * num_samples] - values[t * num_samples:]).view(t, num_samples)
    owner, player = targets.nonzero(as_tuple=True)  # one row per target member x
    singles = subsets[owner].clone()  # S + x: [members, num_samples, n]
    singles[torch.arange(len(owner), device=targets.device), :, player] = True
    values = evaluate(torch.cat([full.reshape(-1, n), subsets.reshape(-1, n), singles.reshape(-1, n)]))
    rows = t * num_samples
    v_full, v_empty = values[:rows].view(t, num_samples), values[rows:2 * rows].view(t, num_samples)
    single_sum = torch.zeros(t, num_samples, dtype=torch.float64, device=targets.device)
    single_sum.index_add_(0, owner, values[2 * rows:].view(len(owner), num_samples))
    k = targets.sum(1, keepdim=True).to(torch.float64)
    return v_full - single_sum + (k - 1) * v_empty


def sampled_indices(evaluate, targets: torch.Tensor, num_samples: int, generator: torch.Generator,
                    shapley: bool, estimator: str = "paper"):
    """Monte Carlo estimate of every target's index: (value float64[T], stderr float64[T]).

    targets bool[T, n]; num_samples >= 2 per target; estimator "paper", "stratified" or
    "control_variate" (module
    docstring); draws come from ``generator`` in target order, chunked by a fixed element budget.
    """
    stratified = estimator != "paper"
    t, n = targets.shape
    kmax = int(targets.sum(1).max()) if t else 1
    rows_per_target = num_samples * n * (2 if shapley else kmax + 2)
    per_chunk = max(1, _CHUNK_ELEMENTS // rows_per_target)
    value = torch.empty(t, dtype=torch.float64, device=targets.device)
    stderr = torch.empty_like(value)
    for start in range(0, t, per_chunk):
        chunk = targets[start:start + per_chunk]
        q, subsets = _draw(chunk, num_samples, generator, stratified)
        terms = sample_terms(evaluate, chunk, subsets, shapley)
        factor = 1.0
        if estimator == "control_variate":
            terms, factor = crossfit_control(terms, (subsets.double() - q.double()) * ~chunk[:, None, :])
        value[start:start + per_chunk] = terms.mean(1)
        stderr[start:start + per_chunk] = (strata_stderr if stratified else iid_stderr)(terms) * factor
    return value, stderr


def sampling_evaluations(targets: torch.Tensor, num_samples: int, shapley: bool) -> int:
    """Game evaluations ``sampled_indices`` spends: num_samples * sum over targets of 2 (Shapley)
    or k + 2 (interaction of a k-player target)."""
    if shapley:
        return 2 * num_samples * targets.shape[0]
    return num_samples * int((targets.sum(1) + 2).sum())
