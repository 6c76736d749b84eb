"""shapley_kernels.max_game_region_values against brute-force enumeration of spec Eq. 3
(tests/reference.py) on maximum games v(S) = max(0, max_{i in S} x_i)."""
import pytest
import torch

from reference import brute_region_phi, brute_shapley
from shapley_kernels import max_game_region_values


def max_value_fn(x):
    """Value function of the maximum game with values x (list of floats), v(empty) = 0."""
    return lambda s: max([0.0] + [x[i] for i in s])


def random_regions(n, K, generator):
    regions = torch.rand(K, n, generator=generator) < 0.4
    regions[torch.arange(K), torch.randint(n, (K,), generator=generator)] = True
    return regions


@pytest.mark.parametrize("seed", range(4))
def test_region_phi_and_excess_match_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    n, K = 7, 5
    x = torch.randn(3, n, generator=g, dtype=torch.float64)   # negatives included: floored at 0
    x[0, 2] = x[0, 5]                                          # a tie
    regions = random_regions(n, K, g)
    got = max_game_region_values(x, regions, score=("phi", "excess"))
    for b in range(3):
        fn = max_value_fn(x[b].tolist())
        v_all = fn(frozenset(range(n)))
        for k in range(K):
            members = regions[k].nonzero().flatten().tolist()
            phi = brute_region_phi(fn, n, members)
            assert got["phi"][b, k].item() == pytest.approx(phi, abs=1e-12)
            assert got["excess"][b, k].item() == pytest.approx(phi - len(members) / n * v_all, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_shapley_iou_matches_the_iou_with_enumerated_player_values(seed):
    g = torch.Generator().manual_seed(20 + seed)
    n, K = 6, 5
    x = torch.randn(2, 3, n, generator=g, dtype=torch.float64)
    x[0, 1, 1] = x[0, 1, 4]                                    # a tie
    regions = random_regions(n, K, g)
    got = max_game_region_values(x, regions[None], score="shapley_iou")
    assert got.shape == (2, 3, K)
    for b in range(2):
        for q in range(3):
            phi = brute_shapley(max_value_fn(x[b, q].tolist()), n)
            w = [p / max(phi) for p in phi] if max(phi) > 0 else [0.0] * n
            for k in range(K):
                members = regions[k].nonzero().flatten().tolist()
                inside = sum(w[i] for i in members)
                want = inside / (len(members) + sum(w) - inside)
                assert got[b, q, k].item() == pytest.approx(want, abs=1e-12)


def test_shapley_iou_edges():
    x = torch.tensor([[0.0, 0.8, 0.8, 0.0], [-1.0, -2.0, 0.0, -0.5]], dtype=torch.float64)
    regions = torch.tensor([[False, True, True, False], [True, True, True, True], [True, False, False, False]])
    got = max_game_region_values(x, regions, score="shapley_iou")
    # the two tied top players are the whole soft set: the region of exactly them fits it (IoU 1)
    assert torch.allclose(got[0], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(got[1], torch.zeros(3, dtype=torch.float64))     # v(N) = 0: no soft set, no NaN


def test_single_players_are_the_shapley_values_and_sum_to_the_maximum():
    g = torch.Generator().manual_seed(9)
    n = 6
    x = torch.rand(n, generator=g, dtype=torch.float64)
    x[1] = x[4]
    phi = max_game_region_values(x, torch.eye(n, dtype=torch.bool))
    assert torch.allclose(phi, torch.tensor(brute_shapley(max_value_fn(x.tolist()), n), dtype=torch.float64))
    assert phi.sum().item() == pytest.approx(x.max().item())


def test_edges_whole_set_all_zero_and_broadcast():
    x = torch.tensor([[0.3, 0.9, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    whole = torch.ones(1, 3, dtype=torch.bool)
    got = max_game_region_values(x, whole, score=("phi", "excess"))
    assert torch.allclose(got["phi"][:, 0], torch.tensor([0.9, 0.0], dtype=torch.float64))  # [N] gets v(N)
    assert torch.allclose(got["excess"][:, 0], torch.zeros(2, dtype=torch.float64))  # its equal share
    # per-game regions [B, K, n] broadcast against values [B, n]
    regions = torch.tensor([[[True, False, False]], [[False, True, True]]])
    out = max_game_region_values(x, regions)
    assert out.shape == (2, 1) and out[0, 0].item() == pytest.approx(0.3 / 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=torch.tensor([1.0, float("nan")]), regions=torch.ones(1, 2, dtype=torch.bool)), "values"),
    (dict(values=torch.ones(2), regions=torch.zeros(1, 2, dtype=torch.bool)), "at least one player"),
    (dict(values=torch.ones(2), regions=torch.ones(1, 3, dtype=torch.bool)), "regions must be bool"),
    (dict(values=torch.ones(2), regions=torch.ones(1, 2)), "regions must be bool"),
    (dict(values=torch.ones(3, 2), regions=torch.ones(2, 1, 2, dtype=torch.bool)), "broadcast"),
    (dict(values=torch.ones(2), regions=torch.ones(1, 2, dtype=torch.bool), score="interaction"), "score"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        max_game_region_values(**kwargs)


def test_chunks_of_games_give_the_one_chunk_result(monkeypatch):
    """Regions broadcast over a [B, Q] batch of games, one game per chunk against one chunk."""
    import shapley_kernels.max_game as max_game

    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    regions = torch.stack([random_regions(9, 5, g) for _ in range(3)])[:, None]        # [3, 1, 5, 9]
    names = ("phi", "excess", "shapley_iou")
    whole = max_game_region_values(x, regions, score=names)
    monkeypatch.setattr(max_game, "_CHUNK_ELEMENTS", 1)
    chunked = max_game_region_values(x, regions, score=names)
    for name in names:
        assert whole[name].shape == (3, 4, 5)
        torch.testing.assert_close(chunked[name], whole[name], rtol=0, atol=0)
