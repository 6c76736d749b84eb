"""The ceiling of control variates (linear, quadratic, learned) on a trained run's candidates (issue 13).

    python benchmarks/cv_ceiling.py --checkpoint RUN [--strata 2048] [--unpaired] [--seed 7]
                                    [--captions first|longest] [--learned] [--json out.json]

``control_variate`` fits its coefficients on 16-64 strata and loses to "antithetic" on real
candidates (benchmarks/RESULTS.md). This asks what any control variate linear in the players'
presence bits could give at best, with its coefficients known: one pilot of ``--strata`` strata
of the default estimator's draws (``--unpaired``: without its complementary pairs) on workload (b) of
estimator_bench.py (2 test pairs x the head's top 4 candidates), then, per candidate and score
(Eq. 7, phi([R])), the held-out residual variance of the per-unit terms after a degree-6
polynomial in q (which stands in for E[term | q], what the strata already remove), against the
same with feature sets added:

  "all patches"          x_i - q for every patch outside R
  "all patches x (1, q)" the same and (x_i - q) q: coefficients linear in q
  "neighbours of R"      x_i - q for the patches next to R (8-neighbourhood on the patch grid)
  "counts"               neighbour and other present counts minus their means given q
  "all patches + adjacent pairs"
                         "all patches" and (x_i - q)(x_j - q) for every pair of patches outside R
                         that touch on the grid (4-neighbourhood): a quadratic surrogate, whose
                         centred part, unlike the linear one, does not cancel within a
                         complementary pair
  "max game"             a non-linear surrogate: the same term (Eq. 7's or phi's) on the same
                         image halves in the maximum game g(S) = max(0, max_{p in S} c_p), c_p the
                         cosine of patch p's embedding (full image) with the text's embedding,
                         minus its exact conditional mean given q (``expected_max``). Low-order
                         polynomial surrogates cannot help: a pairwise game's Eq. 7 term does not
                         depend on S, and its phi term is linear in S.

Beside these least-squares families, two learned surrogates bound what any function of the
presence bits and q could remove (``learned_gains``): gradient-boosted trees
(``sklearn.ensemble.HistGradientBoostingRegressor``) and a one-hidden-layer MLP
(``sklearn.neural_network.MLPRegressor``), each fitted to the q polynomial's residual on the
same halves. Their gain bounds a non-linear control variate that a fit from this many units can
find: such a surrogate has a usable mean given q (a tree ensemble's is a sum over its leaves of
products of q and 1 - q along each path; any cheap surrogate's can be averaged without bias over
many draws of its own at the same q). It is a ceiling, not an estimator: the fit uses the pilot's
units, far more than one call spends.

The units are the strata, or with complementary pairs the pair means (the second member's
deviations are the first's negatives, so a control variate whose coefficients do not depend on
q cancels within a pair). Fitted on a random half of the units and scored on the other half,
both ways. The gain, residual variance without features / with them, bounds the variance cut of
that family of control variates on top of the estimator's own draws.
"""
import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from estimator_bench import real_workload  # noqa: E402

from shapley_kernels.token_level import region as region_module  # noqa: E402

POLY_DEGREE = 6


def unit_terms(encoders, x_img, x_txt, text_mask, regions, baseline, strata: int, paired: bool, seed: int):
    """The pilot: the default estimator's draws and terms for ``strata`` strata
    (``region.stratified_terms``), without the averaging.

    Returns (q float64[B, U], bits bool[B, K, U, N_I] (the image half S of each unit's first
    member), {"interaction": float64[B, K, U], "phi": float64[B, K, U]}), U = strata, or
    strata / 2 pair means (``region.pair_means``) when ``paired`` (strata even, >= 4).
    ``paired=False``: the same estimator without its complementary pairs.
    """
    img, txt = encoders
    B, _, N_I = regions.shape
    image_mask = torch.ones(B, N_I, dtype=torch.bool, device=regions.device)
    generator = torch.Generator(device=regions.device).manual_seed(seed)
    if paired and (strata % 2 or strata < 4):
        raise ValueError(f"strata: complementary pairs need an even number >= 4, got {strata}")
    with torch.inference_mode():
        q, bits, _, terms = region_module.stratified_terms(img, txt, x_img, x_txt, regions, image_mask, text_mask,
                                                           baseline, strata, generator, None, torch.float64,
                                                           True, "antithetic", paired)
    q = q[..., 0].double()
    if paired:
        terms = region_module.pair_means(terms)
        q, bits = q[:, :strata // 2], bits[:, :, :strata // 2]
    return q, bits, terms


def feature_sets(bits: torch.Tensor, q: torch.Tensor, region: torch.Tensor, grid) -> dict:
    """Control-variate features of one candidate: bits bool[U, N_I], q float64[U], region
    bool[N_I] on a patch grid (rows, columns), row-major -> {name: float64[U, F]} (module
    docstring; "max game" is added by ``gains_table``)."""
    deviation = bits.double() - q[:, None]
    cells = region.view(1, 1, *grid).double()
    near = (torch.nn.functional.max_pool2d(cells, 3, 1, 1).flatten() > 0) & ~region
    outside = ~region
    neighbours = deviation[:, near]
    count_near = neighbours.sum(1, keepdim=True)
    count_far = deviation[:, outside & ~near].sum(1, keepdim=True)
    return {"all patches": deviation[:, outside],
            "all patches x (1, q)": torch.cat([deviation[:, outside], deviation[:, outside] * q[:, None]], 1),
            "neighbours of R": neighbours,
            "counts": torch.cat([count_near, count_far], 1),
            "all patches + adjacent pairs": torch.cat([deviation[:, outside],
                                                       adjacent_products(deviation, outside, grid)], 1)}


def adjacent_products(deviation: torch.Tensor, players: torch.Tensor, grid) -> torch.Tensor:
    """(x_i - q)(x_j - q) for every pair i < j of players that touch on the patch grid (same
    row and next column, or same column and next row): deviation float64[U, N] (row-major over
    the grid (rows, columns)), players bool[N] -> float64[U, E]."""
    rows, cols = grid
    index = torch.arange(rows * cols, device=deviation.device).view(rows, cols)
    edges = torch.cat([torch.stack([index[:, :-1].flatten(), index[:, 1:].flatten()], 1),
                       torch.stack([index[:-1].flatten(), index[1:].flatten()], 1)])
    edges = edges[players[edges[:, 0]] & players[edges[:, 1]]]
    return deviation[:, edges[:, 0]] * deviation[:, edges[:, 1]]


def patch_text_cosines(encoders, x_img, x_txt, text_mask) -> torch.Tensor:
    """c float64[B, N_I]: cosine of each patch's final embedding (whole image) with the text's
    global embedding, from the towers' ``encode`` and ``project``."""
    img, txt = encoders
    with torch.inference_mode():
        _, final = img.encode(x_img)
        cls, _ = txt.encode(x_txt, text_mask)
        patches = torch.nn.functional.normalize(img.project(final), dim=-1)
        text = torch.nn.functional.normalize(txt.project(cls), dim=-1)
    return (patches * text[:, None]).sum(-1).double()


def max_value(c: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The maximum game max(0, max_{p present} c_p): c float64[N], present bool[..., N] -> float64[...]."""
    return torch.where(present, c, torch.zeros((), dtype=c.dtype)).amax(-1).clamp(min=0)


def expected_max(c: torch.Tensor, players: torch.Tensor, forced: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """E[max(0, max over forced u S of c)] with each player of bool[N] ``players`` in S
    independently with probability q float64[U], forced bool[N] always present: float64[U].
    With the players' c sorted descending, the i-th (0-based) is the largest present one with
    probability q (1 - q)^i."""
    floor = max_value(c, forced)
    ranked = torch.maximum(c[players].sort(descending=True).values, floor)
    rank = torch.arange(len(ranked), dtype=c.dtype, device=c.device)
    weight = q[:, None] * (1 - q[:, None]) ** rank
    return (weight * ranked).sum(1) + (1 - q) ** len(ranked) * floor


def max_game_residual(c: torch.Tensor, bits: torch.Tensor, q: torch.Tensor, region: torch.Tensor,
                      score: str) -> torch.Tensor:
    """The maximum game's term ("interaction": Eq. 7's, "phi": phi's) on image halves bits
    bool[U, N] (S, outside region bool[N]) at q float64[U], minus its exact mean given q: float64[U]."""
    empty = torch.zeros_like(region)
    if score == "phi":  # v(S u R) - v(S)
        coalitions = [(region, 1.0), (empty, -1.0)]
    else:  # v(S u R) - sum_x v(S u {x}) + (n_R - 1) v(S)
        singles = torch.eye(len(region), dtype=torch.bool, device=region.device)[region]
        coalitions = [(region, 1.0), (empty, float(region.sum()) - 1.0)] + [(one, -1.0) for one in singles]
    return sum(w * (max_value(c, bits | forced) - expected_max(c, ~region, forced, q)) for forced, w in coalitions)


def heldout_residual(y: torch.Tensor, design: torch.Tensor, seed: int) -> float:
    """Mean squared held-out residual of least squares y float64[U] ~ design float64[U, F]:
    fitted on a random half of the units (``_halves``), scored on the other, both ways."""
    halves = _halves(len(y), seed)
    squared = 0.0
    for fit, score in (halves, halves[::-1]):
        coef = torch.linalg.lstsq(design[fit], y[fit], driver="gelsd").solution
        squared += float(((y[score] - design[score] @ coef) ** 2).sum())
    return squared / len(y)


def _halves(units: int, seed: int):
    """The two halves of the units that every fit and score uses: a random split by ``seed``."""
    order = torch.randperm(units, generator=torch.Generator().manual_seed(seed))
    return order[: units // 2], order[units // 2:]


def _q_polynomial(q: torch.Tensor) -> torch.Tensor:
    """float64[U, POLY_DEGREE + 1]: 1, q, ..., q^POLY_DEGREE."""
    return torch.stack([q ** p for p in range(POLY_DEGREE + 1)], 1)


def learned_gains(y: torch.Tensor, q: torch.Tensor, bits: torch.Tensor, seed: int = 0) -> dict:
    """Gain bound of the learned surrogates for one candidate's unit terms y float64[U] at q
    float64[U] with presence bits bool[U, F] (module docstring): per half, the q polynomial is
    fitted by least squares, then each learner on its residual from features (q, bits); scored
    on the other half, both ways. Returns {name: held-out residual variance with the polynomial
    alone / with the learner}."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neural_network import MLPRegressor

    learners = {
        "boosted trees": lambda: HistGradientBoostingRegressor(
            learning_rate=0.05, max_iter=400, max_leaf_nodes=15, min_samples_leaf=20, l2_regularization=1.0,
            early_stopping=True, validation_fraction=0.15, n_iter_no_change=20, random_state=seed),
        "MLP": lambda: MLPRegressor(hidden_layer_sizes=(64,), alpha=1e-3, learning_rate_init=1e-3, max_iter=500,
                                    early_stopping=True, validation_fraction=0.15, n_iter_no_change=20,
                                    random_state=seed),
    }
    poly = _q_polynomial(q)
    x = torch.cat([q[:, None], bits.double() - q[:, None]], 1).numpy()
    base, squared = 0.0, dict.fromkeys(learners, 0.0)
    halves = _halves(len(y), seed)
    for fit, score in (halves, halves[::-1]):
        coef = torch.linalg.lstsq(poly[fit], y[fit], driver="gelsd").solution
        residual = y - poly @ coef
        scale = float(residual[fit].std()) or 1.0  # the learners fit unit-scale targets
        base += float((residual[score] ** 2).sum())
        for name, make in learners.items():
            model = make().fit(x[fit], (residual[fit] / scale).numpy())
            predicted = torch.from_numpy(model.predict(x[score])).double() * scale
            squared[name] += float(((residual[score] - predicted) ** 2).sum())
    return {name: base / value for name, value in squared.items()}


def ceiling_gains(y: torch.Tensor, q: torch.Tensor, features: dict, seed: int = 0) -> dict:
    """Gain bound of each feature set for one candidate's unit terms y float64[U] at q float64[U]:
    held-out residual variance with the q polynomial alone / with the features added."""
    poly = _q_polynomial(q)
    base = heldout_residual(y, poly, seed)
    return {"within_q_variance": base,
            **{name: base / heldout_residual(y, torch.cat([poly, f], 1), seed) for name, f in features.items()}}


def gains_table(encoders, x_img, x_txt, text_mask, regions, baseline, grid, strata: int, paired: bool,
                seed: int, learned: bool = False) -> list:
    """One row per (score, pair, candidate): its variance given q and each feature set's gain
    bound (``ceiling_gains``), from one pilot (``unit_terms``); regions bool[B, K, N_I] on the
    patch grid (rows, columns). ``learned``: the learned surrogates' gains too (``learned_gains``)."""
    q, bits, terms = unit_terms(encoders, x_img, x_txt, text_mask, regions, baseline, strata, paired, seed)
    cosines = patch_text_cosines(encoders, x_img, x_txt, text_mask)
    rows = []
    for name in ("interaction", "phi"):
        t = terms[name]
        for b, k in itertools.product(range(regions.shape[0]), range(regions.shape[1])):
            region = regions[b, k]
            size = int(region.sum())
            if name == "interaction" and size < 2:  # Eq. 7 is 0 exactly for one patch
                continue
            features = feature_sets(bits[b, k], q[b], region, grid)
            surrogate = max_game_residual(cosines[b], bits[b, k], q[b], region, name)
            if paired:  # the unit's second member: the complement within X\R at 1 - q
                surrogate = (surrogate + max_game_residual(cosines[b], ~bits[b, k] & ~region, 1 - q[b],
                                                           region, name)) / 2
            features["max game"] = surrogate[:, None]
            gains = ceiling_gains(t[b, k], q[b], features)
            if learned:
                gains.update(learned_gains(t[b, k], q[b], bits[b, k][:, ~region]))
            rows.append(dict(score=name, pair=b, region=k, patches=size, **gains))
    return rows


def run(checkpoint: str, strata: int, paired: bool, seed: int, captions: str, learned: bool = False) -> list:
    """``gains_table`` on workload (b) of estimator_bench.py (a ViT's square patch grid)."""
    encoders, x_img, x_txt, text_mask, regions, baseline = real_workload(checkpoint, "cpu", captions=captions)
    side = int(round(regions.shape[-1] ** 0.5))
    if side * side != regions.shape[-1]:
        raise ValueError(f"checkpoint: expected a square patch grid, got {regions.shape[-1]} patches")
    encoders = tuple(e.double().eval() for e in encoders)
    return gains_table(encoders, x_img, x_txt, text_mask, regions, baseline, (side, side), strata, paired, seed,
                       learned)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--strata", type=int, default=2048)
    parser.add_argument("--unpaired", action="store_true", help="plain stratified draws, no complementary pairs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--captions", choices=("first", "longest"), default="first")
    parser.add_argument("--learned", action="store_true",
                        help="also the learned surrogates' gains (boosted trees, MLP; scikit-learn)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = run(args.checkpoint, args.strata, not args.unpaired, args.seed, args.captions, args.learned)
    names = [k for k in rows[0] if k not in ("score", "pair", "region", "patches", "within_q_variance")]
    print("| score | pair | region | patches | variance given q | " + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for r in rows:
        print(f"| {r['score']} | {r['pair']} | {r['region']} | {r['patches']} | {r['within_q_variance']:.2e} | "
              + " | ".join(f"{r[n]:.2f}x" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, strata=args.strata, paired=not args.unpaired,
                           seed=args.seed, captions=args.captions, learned=args.learned, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
