"""The ceiling of linear control variates on a trained run's candidates (issue 13).

    python benchmarks/cv_ceiling.py --checkpoint RUN [--strata 2048] [--unpaired] [--seed 7]
                                    [--captions first|longest] [--json out.json]

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
    """The pilot: the default estimator's draws for ``strata`` strata, without the averaging.

    Returns (q float64[B, U], bits bool[B, K, U, N_I] (the image half S of each unit's first
    member), {"interaction": float64[B, K, U], "phi": float64[B, K, U]}), U = strata, or
    strata / 2 pair means when ``paired``.
    """
    img, txt = encoders
    B, K, N_I = regions.shape
    image_mask = torch.ones(B, N_I, dtype=torch.bool, device=regions.device)
    generator = torch.Generator(device=regions.device).manual_seed(seed)
    with torch.inference_mode():
        q, s_img, s_txt = region_module._draw_stratified(regions, image_mask, text_mask, strata, generator,
                                                         paired, region_module.TEXT_POOL_HALVES)
        text_dir = region_module._expected_text_directions(txt, x_txt, q[..., 0], s_txt, text_mask, baseline,
                                                           None, torch.float64)
        text_dir = text_dir[:, None].expand(B, K, *text_dir.shape[1:])
        phi, inter = region_module._sample_terms(img, x_img, regions, image_mask, s_img, text_dir, True,
                                                 baseline, None, torch.float64)
    q = q[..., 0].double()
    terms = {"interaction": inter, "phi": phi}
    if paired:
        h = strata // 2
        terms = {name: (t[..., :h] + t[..., h:].flip(-1)) / 2 for name, t in terms.items()}
        q, s_img = q[:, :h], s_img[:, :, :h]
    return q, s_img, terms


def feature_sets(bits: torch.Tensor, q: torch.Tensor, region: torch.Tensor, side: int) -> dict:
    """Control-variate features of one candidate: bits bool[U, N_I], q float64[U], region
    bool[N_I] on a side x side patch grid -> {name: float64[U, F]} (module docstring)."""
    deviation = bits.double() - q[:, None]
    grid = region.view(1, 1, side, side).double()
    near = (torch.nn.functional.max_pool2d(grid, 3, 1, 1).flatten() > 0) & ~region
    outside = ~region
    neighbours = deviation[:, near]
    count_near = neighbours.sum(1, keepdim=True)
    count_far = deviation[:, outside & ~near].sum(1, keepdim=True)
    return {"all patches": deviation[:, outside],
            "all patches x (1, q)": torch.cat([deviation[:, outside], deviation[:, outside] * q[:, None]], 1),
            "neighbours of R": neighbours,
            "counts": torch.cat([count_near, count_far], 1)}


def heldout_residual(y: torch.Tensor, design: torch.Tensor, generator: torch.Generator) -> float:
    """Mean squared held-out residual of least squares y float64[U] ~ design float64[U, F]:
    fitted on a random half of the units, scored on the other, both ways."""
    order = torch.randperm(len(y), generator=generator)
    halves = order[: len(y) // 2], order[len(y) // 2:]
    squared = 0.0
    for fit, score in (halves, halves[::-1]):
        coef = torch.linalg.lstsq(design[fit], y[fit], driver="gelsd").solution
        squared += float(((y[score] - design[score] @ coef) ** 2).sum())
    return squared / len(y)


def ceiling_gains(y: torch.Tensor, q: torch.Tensor, features: dict, seed: int = 0) -> dict:
    """Gain bound of each feature set for one candidate's unit terms y float64[U] at q float64[U]:
    held-out residual variance with the q polynomial alone / with the features added."""
    poly = torch.stack([q ** p for p in range(POLY_DEGREE + 1)], 1)
    base = heldout_residual(y, poly, torch.Generator().manual_seed(seed))
    return {"within_q_variance": base,
            **{name: base / heldout_residual(y, torch.cat([poly, f], 1), torch.Generator().manual_seed(seed))
               for name, f in features.items()}}


def run(checkpoint: str, strata: int, paired: bool, seed: int, captions: str) -> list:
    encoders, x_img, x_txt, text_mask, regions, baseline = real_workload(checkpoint, "cpu", captions=captions)
    encoders = tuple(e.double().eval() for e in encoders)
    q, bits, terms = unit_terms(encoders, x_img, x_txt, text_mask, regions, baseline, strata, paired, seed)
    side = int(round(regions.shape[-1] ** 0.5))
    rows = []
    for name, t in terms.items():
        for b, k in itertools.product(range(regions.shape[0]), range(regions.shape[1])):
            size = int(regions[b, k].sum())
            if name == "interaction" and size < 2:  # Eq. 7 is 0 exactly for one patch
                continue
            gains = ceiling_gains(t[b, k], q[b], feature_sets(bits[b, k], q[b], regions[b, k], side))
            rows.append(dict(score=name, pair=b, region=k, patches=size, **gains))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--strata", type=int, default=2048)
    parser.add_argument("--unpaired", action="store_true", help="plain stratified draws, no complementary pairs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--captions", choices=("first", "longest"), default="first")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = run(args.checkpoint, args.strata, not args.unpaired, args.seed, args.captions)
    names = [k for k in rows[0] if k not in ("score", "pair", "region", "patches", "within_q_variance")]
    print("| score | pair | region | patches | variance given q | " + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for r in rows:
        print(f"| {r['score']} | {r['pair']} | {r['region']} | {r['patches']} | {r['within_q_variance']:.2e} | "
              + " | ".join(f"{r[n]:.2f}x" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, strata=args.strata, paired=not args.unpaired,
                           seed=args.seed, captions=args.captions, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
