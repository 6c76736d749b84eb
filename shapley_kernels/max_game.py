"""Exact Shapley values of regions in maximum games, in closed form (no sampling, no enumeration).

A maximum game on n players with values x float[n] is v(S) = max(0, max_{i in S} x_i) (v of the
empty coalition is 0). It is the game of late-interaction similarity: a query's best cosine with
the patches present in S (FILIP's token-wise similarity restricted to S), floored at 0.

Writing v = sum_t (y_(t) - y_(t+1)) * [S meets the t best players], with y = max(x, 0) sorted
in decreasing order and y_(n+1) = 0, each term is the game "S holds one of the t best players",
whose Shapley value is 1/t for each of those t players. Hence the player of rank k gets

    phi_(k) = sum_{t >= k} (y_(t) - y_(t+1)) / t,

and ties get equal values. A region R (a set of players) taken as one player [R] turns the game
into a maximum game on the n - |R| + 1 players {[R]} and the players outside R, with the value
max_{i in R} x_i for [R]; its Shapley value phi([R]) follows from the same formula
(spec section 2's region-as-one-player reduction, as in ``region_interaction``'s ``"phi"``).

Scores (``score=``):

- ``"phi"``: phi([R]);
- ``"excess"``: phi([R]) - |R| / n * v(N), the region's value beyond the share that an equal
  split of v(N) would give its |R| players. phi([R]) grows, if only a little, whenever R swallows
  more players; the excess is largest for the region that holds all the high-valued players and
  few others (docs/fine_grained_alignment.md).
- ``"shapley_iou"``: the intersection over union of R with the game's soft player set
  w = phi / max_i phi_i (each player's own Shapley value, phi_(k) above, scaled to a maximum of 1;
  w = 0 where v(N) = 0): sum_{i in R} w_i / (|R| + sum_i w_i - sum_{i in R} w_i), in [0, 1].
  phi([R]) and the excess score how much of the game R holds; the IoU scores how well R fits the
  players that hold it, as a box fits an object: it falls as R swallows players of low value.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from .checks import check_finite, check_tensor

MAX_GAME_SCORES = ("phi", "excess", "shapley_iou")


def _sorted(values: torch.Tensor):
    """(the decreasing order long[G, n] of values float[G, n], the gaps a_t - a_(t+1) float[G, n]
    of the sorted values a, a_(n+1) = 0): what both closed forms start from."""
    ordered, order = values.sort(dim=-1, descending=True, stable=True)
    gaps = ordered - torch.cat([ordered[..., 1:], torch.zeros_like(ordered[..., :1])], dim=-1)
    return order, gaps


def _player_phi(order: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """Each player's Shapley value float[G, n] in the maximum games of ``_sorted``'s order and
    gaps: phi_(k) = sum_{t >= k} (y_(t) - y_(t+1)) / t for the player of rank k (module docstring)."""
    n = gaps.shape[-1]
    t = torch.arange(1, n + 1, device=gaps.device, dtype=gaps.dtype)
    shares = (gaps / t).flip(-1).cumsum(dim=-1).flip(-1)                  # by rank
    return torch.empty_like(shares).scatter_(-1, order, shares)


def _region_phi(order: torch.Tensor, gaps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """phi([R]) float[G, K] of K regions in the maximum games of ``_sorted``'s order and gaps
    (values >= 0); regions bool[G, K, n], each game's own.

    Level form of the closed form: v(S) is the integral over s > 0 of [S meets {j: x_j >= s}],
    whose Shapley value gives each of those players 1 / #{j: x_j >= s}; with R as one player,
    phi([R]) = sum_t (a_t - a_(t+1)) [c_t >= 1] / (1 + t - c_t), where a is x sorted in decreasing
    order (a_(n+1) = 0) and c_t the number of R's players among the t best: one cumulative sum
    over R's membership in rank order, O(K n) per game after its sort. Gaps of width 0 (ties)
    add nothing.
    """
    n = gaps.shape[-1]
    in_rank_order = regions.gather(-1, order[:, None, :].expand(regions.shape))              # [G, K, n]
    count = in_rank_order.cumsum(dim=-1)                                                       # c_t
    t = torch.arange(1, n + 1, device=gaps.device)
    shares = gaps[:, None, :] / (1 + t - count).to(gaps.dtype)                                 # 1 + t - c_t >= 1
    return torch.where(count > 0, shares, torch.zeros((), dtype=gaps.dtype, device=gaps.device)).sum(dim=-1)


# Elements of the largest intermediate (a chunk of games x K x n): bounds memory for any batch.
_CHUNK_ELEMENTS = 1 << 21


def max_game_region_values(values: torch.Tensor, regions: torch.Tensor,
                           score: Union[str, Sequence[str]] = "phi"):
    """Exact region scores in the maximum games v(S) = max(0, max_{i in S} x_i).

    values float[..., n]: each game's player values (batch dims ``...``, e.g. [B, Q] for B
    images and Q queries); regions bool[..., K, n] (batch dims broadcastable to ``values``'s,
    each region non-empty). Returns float[..., K] (the broadcast batch dims): the score of each
    region as one player; a tuple or list of scores gives a dict {score: float[..., K]}.
    Cost: one sort of n values per game and O(K n) per game after it, in chunks of games whose
    [games, K, n] intermediates hold at most about 2^21 elements (no Python loop over games).
    """
    check_tensor("values", values, dtype_kind="float")
    check_tensor("regions", regions)
    check_finite("values", values)
    if values.dim() < 1 or values.shape[-1] == 0:
        raise ValueError(f"values must be float[..., n] with n >= 1, got shape {list(values.shape)}")
    n = values.shape[-1]
    if regions.dtype != torch.bool or regions.dim() < 2 or regions.shape[-1] != n:
        raise ValueError(f"regions must be bool[..., K, {n}], got {regions.dtype} {list(regions.shape)}")
    if bool((~regions.any(dim=-1)).any()):
        raise ValueError("regions must each hold at least one player")
    names = (score,) if isinstance(score, str) else tuple(score)
    for name in names:
        if name not in MAX_GAME_SCORES:
            raise ValueError(f"score must be one of {list(MAX_GAME_SCORES)} (or a tuple of them), got {name!r}")
    try:
        batch = torch.broadcast_shapes(values.shape[:-1], regions.shape[:-2])
    except RuntimeError:
        raise ValueError(f"regions' batch dims {list(regions.shape[:-2])} do not broadcast with values' "
                         f"{list(values.shape[:-1])}") from None
    K = regions.shape[-2]
    y = values.clamp(min=0.0).expand(*batch, n).reshape(-1, n)                   # [G, n]
    flat_regions = regions.reshape(-1, K, n)
    # each game's row of flat_regions (regions are broadcast, never copied per game)
    region_of_game = torch.arange(flat_regions.shape[0], device=regions.device).reshape(regions.shape[:-2])
    region_of_game = region_of_game.expand(batch).reshape(-1)
    out = {name: y.new_empty(y.shape[0], K) for name in names}
    step = max(1, _CHUNK_ELEMENTS // max(1, K * n))
    for start in range(0, y.shape[0], step):   # chunks of games: memory bounded, one sort per game
        rows = slice(start, start + step)
        games = flat_regions[region_of_game[rows]]                                    # [g, K, n]
        sizes = games.sum(dim=-1).to(y.dtype)                                         # [g, K]
        order, gaps = _sorted(y[rows])     # shared by every score
        if "phi" in names or "excess" in names:
            phi = _region_phi(order, gaps, games)
            if "phi" in names:
                out["phi"][rows] = phi
            if "excess" in names:
                out["excess"][rows] = phi - sizes / n * y[rows].amax(dim=-1, keepdim=True)   # v(N)
        if "shapley_iou" in names:
            players = _player_phi(order, gaps)
            top = players.amax(dim=-1, keepdim=True)
            soft = players / torch.where(top > 0, top, torch.ones_like(top))       # w, 0 where v(N) = 0
            inside = (games.to(y.dtype) * soft[:, None, :]).sum(dim=-1)             # [g, K]
            out["shapley_iou"][rows] = inside / (sizes + soft.sum(dim=-1, keepdim=True) - inside)
    out = {name: value.reshape(*batch, K) for name, value in out.items()}
    return out[score] if isinstance(score, str) else {name: out[name] for name in names}
