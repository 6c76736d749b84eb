"""Patch Shapley values of a ViT (64 patches) through the token engine beside Captum (issue 29).

    PYTHONPATH=. python benchmarks/vit_patch_peers.py [--seeds 5] [--budgets 1025 4097]
                                                      [--reference-budget 65600] [--dim 64] [--depth 2]

Game (one random image-text pair and random towers per seed): the 64 image patches are the
players, the text is always present, v(S) = cos(f_I(S n X_I), f_T(X_T)) with absent patches at
the "zero" baseline (their embeddings zeroed before position embeddings; ``dual_encoder_game``).
Tower weights are Xavier-normal (the towers' own std-0.02 init gives a nearly additive game
on which every sampler is near exact). Captum sees the same game as a model of the masked input: forward(x float[B, 64, D]) = cos(f_I(x),
f_T(X_T)) with baselines=0 and one feature group per patch, so both sides run the same encoder
on the same masked tokens. Every method gets the same number B of masked forwards (counted).
Reference: the project's antithetic permutation sampler at ``--reference-budget`` forwards (no
exact enumeration at n = 64); its own error is the floor of every MSE below.
Methods, all at default settings unless named:
  ours auto / ours permutation   ``shapley_values(game, 64, budget=B[, estimator="permutation"])``
  captum ShapleyValueSampling    n_samples = (B - 1) // 64 permutations, perturbations_per_eval 64
  captum FeatureAblation         64 + 1 forwards (leave-one-out; no budget), throughput only
Reported: relative MSE ||phi_hat - phi_ref||^2 / ||phi_ref||^2 (mean over seeds +- its standard
error) and coalitions per second (forwards / wall seconds, median over seeds; 1 thread; the
machine may be shared: say so where the numbers are recorded).
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import shapley_kernels as sk  # noqa: E402
from shapley_kernels.token_level import TransformerTower, dual_encoder_game  # noqa: E402

from estimator_peers import Counted  # noqa: E402

PATCHES, TEXT_TOKENS = 64, 8


def patch_game(seed: int, dim: int, depth: int):
    """(game over the 64 patches for sk, Captum forward, patch tokens float[64, dim])."""
    torch.manual_seed(seed)
    image = TransformerTower(dim=dim, depth=depth, heads=4, max_tokens=PATCHES, out_dim=32).eval()
    text = TransformerTower(dim=dim, depth=depth, heads=4, max_tokens=TEXT_TOKENS, out_dim=32).eval()
    for weight in [p for tower in (image, text) for p in tower.parameters() if p.dim() == 2]:
        torch.nn.init.xavier_normal_(weight)  # trained-scale weights: the default init (std 0.02) is near-additive
    patches, words = torch.randn(PATCHES, dim), torch.randn(TEXT_TOKENS, dim)
    joint = dual_encoder_game(image, text, patches, words)
    text_present = torch.ones(1, TEXT_TOKENS, dtype=torch.bool)

    def game(z: torch.Tensor) -> torch.Tensor:
        return joint(torch.cat([z, text_present.expand(z.shape[0], -1)], dim=1))

    with torch.inference_mode():
        text_emb = text(words[None])

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return F.cosine_similarity(image(x), text_emb, dim=-1)

    return game, forward, patches


def captum_svs(forward, patches, budget, seed):
    from captum.attr import ShapleyValueSampling
    torch.manual_seed(seed)
    groups = torch.arange(PATCHES)[:, None].expand(PATCHES, patches.shape[1]).contiguous()[None]
    return ShapleyValueSampling(forward).attribute(patches[None], baselines=0.0, feature_mask=groups,
                                                   n_samples=(budget - 1) // PATCHES, perturbations_per_eval=64)[0, :, 0]


def captum_ablation(forward, patches):
    from captum.attr import FeatureAblation
    groups = torch.arange(PATCHES)[:, None].expand(PATCHES, patches.shape[1]).contiguous()[None]
    return FeatureAblation(forward).attribute(patches[None], baselines=0.0, feature_mask=groups,
                                              perturbations_per_eval=64)[0, :, 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1025, 4097])
    parser.add_argument("--reference-budget", type=int, default=64 * 1025)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings("ignore")
    rows = {}
    for seed in range(args.seeds):
        game, forward, patches = patch_game(seed, args.dim, args.depth)
        ref = sk.shapley_values(game, PATCHES, method="sampling", estimator="permutation",
                                budget=args.reference_budget, seed=10_000 + seed).double()
        for budget in args.budgets:
            runs = {
                "ours auto": lambda c: sk.shapley_values(c.torch_bool, PATCHES, budget=budget, seed=seed),
                "ours permutation": lambda c: sk.shapley_values(c.torch_bool, PATCHES, method="sampling",
                                                                estimator="permutation", budget=budget, seed=seed),
                "captum ShapleyValueSampling": lambda c: captum_svs(c.torch_bool, patches, budget, seed),
                "captum FeatureAblation": lambda c: captum_ablation(c.torch_bool, patches),
            }
            for name, run in runs.items():  # interleaved: every method once per seed and budget
                counted = Counted(game if name.startswith("ours") else forward)  # counts rows of any input
                start = time.perf_counter()
                phi = run(counted).double().reshape(-1)
                seconds = time.perf_counter() - start
                rec = rows.setdefault((budget, name), {"err": [], "rate": [], "rows": []})
                rec["err"].append(float(((phi - ref) ** 2).sum() / (ref ** 2).sum()))
                rec["rate"].append(counted.rows / seconds)
                rec["rows"].append(counted.rows)
    print(f"dim {args.dim}, depth {args.depth}, {args.seeds} seeds, reference {args.reference_budget} forwards, "
          f"torch {torch.__version__}, 1 thread")
    print("| B | method | forwards | rel. MSE vs reference | coalitions/s |\n|---|---|---|---|---|")
    for (budget, name), rec in rows.items():
        err = np.asarray(rec["err"])
        se = err.std(ddof=1) / len(err) ** 0.5 if len(err) > 1 else 0.0
        mse = "- (no budget)" if name.endswith("FeatureAblation") else f"{err.mean():.3g} +- {se:.2g}"
        print(f"| {budget} | {name} | {max(rec['rows'])} | {mse} | {np.median(rec['rate']):.0f} |")


if __name__ == "__main__":
    main()
