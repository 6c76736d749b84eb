"""Brute-force references written straight from the spec equations (slow, obviously correct).

Independent of ``shapley_kernels``: plain Python over ``itertools`` subsets with
``math.factorial`` weights, in float64. A *value function* here takes a ``frozenset`` of player
indices and returns a number; ``table_game`` turns a value table into the library's batched-game
interface (``game(coalitions bool[C, n]) -> Tensor[C]``) and ``table_value_fn`` into a value
function, so the same random game feeds both sides of a test.
"""
import itertools
from math import factorial

import torch


def _subsets(players):
    """Every subset of ``players`` as a frozenset, smallest first."""
    players = list(players)
    for size in range(len(players) + 1):
        for combo in itertools.combinations(players, size):
            yield frozenset(combo)


def brute_shapley(value_fn, n):
    """Spec Eq. 3: phi(i) = sum_{S subset N\\{i}} |S|!(n-|S|-1)!/n! [v(S u {i}) - v(S)].

    Returns list[float] of length n.
    """
    phis = []
    for i in range(n):
        others = [p for p in range(n) if p != i]
        total = 0.0
        for s in _subsets(others):
            weight = factorial(len(s)) * factorial(n - len(s) - 1) / factorial(n)
            total += weight * (float(value_fn(s | {i})) - float(value_fn(s)))
        phis.append(total)
    return phis


def brute_sii(value_fn, n, i, j):
    """Spec Eq. 9-10 (Grabisch-Roubens SII of the pair i != j):

    I_ij = sum_{S subset N\\{i,j}} |S|!(n-|S|-2)!/(n-1)! [v(S+i+j) - v(S+i) - v(S+j) + v(S)].
    """
    others = [p for p in range(n) if p not in (i, j)]
    total = 0.0
    for s in _subsets(others):
        weight = factorial(len(s)) * factorial(n - len(s) - 2) / factorial(n - 1)
        total += weight * (float(value_fn(s | {i, j})) - float(value_fn(s | {i}))
                           - float(value_fn(s | {j})) + float(value_fn(s)))
    return total


def _reduced_shapley(value_fn, outside, unit):
    """Shapley value of the super-player ``unit`` (a frozenset acting as one player) in the
    game over the players ``outside`` plus ``unit``, by Eq. 3 with n = |outside| + 1."""
    n = len(outside) + 1
    total = 0.0
    for s in _subsets(outside):
        weight = factorial(len(s)) * factorial(n - len(s) - 1) / factorial(n)
        total += weight * (float(value_fn(s | unit)) - float(value_fn(s)))
    return total


def brute_region_phi(value_fn, n, members):
    """Spec Eq. 3 for a coalition taken as one player: phi([S] | N\\S u {[S]}), the Shapley
    value of the super-player [S] in the game over the players outside S plus [S]."""
    members = frozenset(int(m) for m in members)
    return _reduced_shapley(value_fn, [p for p in range(n) if p not in members], members)


def brute_coalition_interaction(value_fn, n, members):
    """Spec Eq. 4: I([S]) = phi([S] | N\\S u {[S]}) - sum_{i in S} phi(i | N\\S u {i}).

    Each phi is a Shapley value in a reduced game where the rest of S is absent; this does NOT
    use the Eq. 7 form, so it checks an Eq. 7 implementation independently.
    """
    members = frozenset(int(m) for m in members)
    outside = [p for p in range(n) if p not in members]
    together = _reduced_shapley(value_fn, outside, members)
    apart = sum(_reduced_shapley(value_fn, outside, frozenset({m})) for m in members)
    return together - apart


def table_index(coalitions):
    """Row index of each coalition in a value table: bit i set <=> player i present.

    coalitions bool[C, n] -> LongTensor[C].
    """
    n = coalitions.shape[1]
    bits = 2 ** torch.arange(n, dtype=torch.long, device=coalitions.device)
    return (coalitions.long() * bits).sum(1)


def table_game(values):
    """Batched game over n players from a value table ``values`` Tensor[2**n].

    Row r of the table is the coalition whose player i is present iff bit i of r is set.
    The game returns ``values[index]`` (the table's dtype); ``game.n`` is n and ``game.calls``
    counts evaluated rows.
    """
    n = int(values.numel()).bit_length() - 1
    if values.dim() != 1 or values.numel() != 2 ** n:
        raise ValueError(f"values must be a 1-D tensor of length 2**n, got shape {tuple(values.shape)}")

    def game(coalitions):
        game.calls += coalitions.shape[0]
        return values.to(coalitions.device)[table_index(coalitions)]

    game.n = n
    game.calls = 0
    return game


def table_value_fn(values):
    """Value function (frozenset -> float) over the same table as ``table_game``."""
    table = values.double().tolist()
    return lambda s: table[sum(1 << p for p in s)]


def random_table(n, generator, dtype=torch.float64):
    """A random game table Tensor[2**n] (standard normal values)."""
    return torch.randn(2 ** n, generator=generator, dtype=torch.float64).to(dtype)
