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


def _region_phi(order: torch.Tensor, gaps: torch.Tensor, members: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """phi([R]) float[G, K] of K regions in the maximum games of ``_sorted``'s order and gaps
    (values >= 0).

    members long[G, K, m]: each region's players, padded; valid bool[G, K, m]: which are real.

    Level form of the closed form: v(S) is the integral over s > 0 of [S meets {j: x_j >= s}],
    whose Shapley value gives each of those players 1 / #{j: x_j >= s}; with R as one player,
    phi([R]) = sum_t (a_t - a_(t+1)) [t >= r_1] / (1 + t - c_t), where a is x sorted in decreasing
    order (a_(n+1) = 0), r_1 < ... < r_m the ranks of R's m players and c_t = j on
    r_j <= t < r_(j+1). With W_j(t) = sum_{t' <= t, t' >= j} (a_t' - a_(t'+1)) / (1 + t' - j), one
    prefix sum per game and j, phi([R]) = sum_j W_j(r_(j+1) - 1) - W_j(r_j - 1) (r_(m+1) = n + 1):
    one sort per game and O(K m) per game after it. Gaps of width 0 (ties) add nothing.
    """
    (G, n), (K, m) = gaps.shape, members.shape[1:]
    t = torch.arange(1, n + 1, device=gaps.device)
    j = torch.arange(1, m + 1, device=gaps.device)
    denominator = (1 + t[None, :] - j[:, None]).to(gaps.dtype)                                   # [m, n]
    terms = torch.where(denominator > 0, gaps[:, None, :] / denominator.clamp(min=1), torch.zeros(()))
    prefix = torch.cat([torch.zeros_like(terms[..., :1]), terms.cumsum(dim=-1)], dim=-1)           # W_j(0..n)
    rank = torch.empty_like(order).scatter_(-1, order, t.expand_as(order))                          # [G, n], 1-based
    member_rank = torch.where(valid, rank[:, None, :].expand(G, K, n).gather(-1, members), n + 1)
    member_rank = member_rank.sort(dim=-1).values                                                   # r_1..r_m
    following = torch.cat([member_rank[..., 1:], torch.full_like(member_rank[..., :1], n + 1)], dim=-1)
    flat = prefix.reshape(G, m * (n + 1))
    offset = (j - 1) * (n + 1)
    upper = flat.gather(1, (offset + following - 1).reshape(G, K * m)).reshape(G, K, m)
    lower = flat.gather(1, (offset + member_rank - 1).reshape(G, K * m)).reshape(G, K, m)
    return (upper - lower).sum(dim=-1)


def max_game_region_values(values: torch.Tensor, regions: torch.Tensor,
                           score: Union[str, Sequence[str]] = "phi"):
    """Exact region scores in the maximum games v(S) = max(0, max_{i in S} x_i).

    values float[..., n]: each game's player values (batch dims ``...``, e.g. [B, Q] for B
    images and Q queries); regions bool[..., K, n] (batch dims broadcastable to ``values``'s,
    each region non-empty). Returns float[..., K] (the broadcast batch dims): the score of each
    region as one player; a tuple or list of scores gives a dict {score: float[..., K]}.
    Cost: one sort of n values per game and O(K n) per game after it.
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
    y = values.clamp(min=0.0).expand(*batch, n)
    sizes = regions.sum(dim=-1)                                                  # [..., K], regions' own batch
    order, gaps = _sorted(y.reshape(-1, n))     # one sort per game, shared by every score
    out = {}
    if "phi" in names or "excess" in names:
        m = int(sizes.max())
        members = regions.to(torch.uint8).topk(m, dim=-1).indices               # players first, then padding
        valid = regions.gather(-1, members)
        out["phi"] = _region_phi(order, gaps, members.expand(*batch, K, m).reshape(-1, K, m),
                                 valid.expand(*batch, K, m).reshape(-1, K, m)).reshape(*batch, K)
    if "excess" in names:
        total = y.amax(dim=-1, keepdim=True)                                     # v(N)
        out["excess"] = out["phi"] - sizes.to(y.dtype) / n * total
    if "shapley_iou" in names:
        players = _player_phi(order, gaps).reshape(*batch, n)
        top = players.amax(dim=-1, keepdim=True)
        soft = players / torch.where(top > 0, top, torch.ones_like(top))       # w, 0 where v(N) = 0
        inside = (regions.to(y.dtype) @ soft[..., None]).squeeze(-1)             # [..., K]
        out["shapley_iou"] = inside / (sizes.to(y.dtype) + soft.sum(dim=-1, keepdim=True) - inside)
    return out[score] if isinstance(score, str) else {name: out[name] for name in names}
