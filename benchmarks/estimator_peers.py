"""The project's Shapley estimators beside shapiq, SHAP and Captum at equal game evaluations (issue 29).

    python benchmarks/estimator_peers.py [--seeds 20] [--budgets 256 1024 4096]
                                         [--games mlp10 mlp14 mlp20 unanimity20 interactions14]
                                         [--no-peers] [--json out.json] [--table out.json]
                                         [--merge earlier.json]
    (run from the repository root with PYTHONPATH=. so that this tree's package is imported)

Games (one random instance per seed; value of a coalition z in {0, 1}^n):
  mlpN           random tanh MLP (N inputs, 32 hidden) at x * z: absent features at baseline 0
  deepmlpN       an expensive game for timing: N -> 4096 -> 128 -> 1 tanh MLP (~0.1 ms a row)
  unanimity20    sum of 30 unanimity games a_T [T subset S], |T| uniform in 1..8, a_T ~ N(0, 1)
  interactions14 strong interactions on 14 players: 3 XOR pairs, a threshold game
                 [|S n G| >= 2] on a group of 4, a 4-way unanimity game and a small linear part
Reference: exact enumeration (``method="exact"``, tested against brute-force Eq. 3), for
unanimity games the closed form phi_i = sum_{T containing i} a_T / |T|.
Every estimator gets the same budget B of game evaluations; each call's actual evaluations are
counted by the game wrapper (a peer that overspends is marked). Error: relative MSE
||phi_hat - phi||^2 / ||phi||^2, mean over seeds (with its standard error over seeds);
seconds per call (1 thread for torch and NumPy's BLAS: on a shared machine, say so).
Peers take the game as NumPy (shapiq, SHAP) or torch (Captum) on the coalition's 0/1 vector
(SHAP's and Captum's maskers put the baseline 0 where a feature is absent, so a model of the
masked input x = z is the game).
"""
import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shapley_kernels as sk  # noqa: E402
from shapley_kernels.approximators import APPROXIMATORS  # noqa: E402

OURS = ("auto", "permutation", "kernel", "kadd2", "kadd3", "svarm", "unbiased_kernel", "stratified")


def mlp_game(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    w1 = torch.randn(n, 32, generator=gen, dtype=torch.float64) / n ** 0.5
    b1 = 0.5 * torch.randn(32, generator=gen, dtype=torch.float64)
    w2 = torch.randn(32, generator=gen, dtype=torch.float64) / 32 ** 0.5
    return lambda z: torch.tanh((z.double() * x) @ w1 + b1) @ w2


def deep_mlp_game(n: int, seed: int):
    """An expensive game: n -> 4096 -> 128 -> 1 tanh MLP at x * z (~1.2 MFLOP, ~0.1 ms a row)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    w1 = torch.randn(n, 4096, generator=gen, dtype=torch.float64) / n ** 0.5
    w2 = torch.randn(4096, 128, generator=gen, dtype=torch.float64) / 64
    w3 = torch.randn(128, generator=gen, dtype=torch.float64) / 128 ** 0.5
    return lambda z: torch.tanh(torch.tanh((z.double() * x) @ w1) @ w2) @ w3


def unanimity_game(n: int, seed: int):
    """(game, exact phi float64[n]) of 30 random unanimity games."""
    gen = torch.Generator().manual_seed(seed)
    members = torch.zeros(30, n, dtype=torch.bool)
    for t in range(30):
        size = int(torch.randint(1, 9, (1,), generator=gen))
        members[t, torch.randperm(n, generator=gen)[:size]] = True
    weight = torch.randn(30, generator=gen, dtype=torch.float64)
    exact = (members.double() * (weight / members.sum(1))[:, None]).sum(0)
    members_d = members.double()
    return (lambda z: ((z.double() @ members_d.T) == members.sum(1)).double() @ weight), exact


def interaction_game(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    xor = order[:6].view(3, 2)
    group, unanimity = order[6:10], order[10:14]
    w = torch.randn(6, generator=gen, dtype=torch.float64)
    linear = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)

    def game(z):
        z = z.bool()
        value = ((z[:, xor[:, 0]] ^ z[:, xor[:, 1]]).double() * w[:3]).sum(1)
        value = value + w[3] * (z[:, group].sum(1) >= 2).double() + w[4] * z[:, unanimity].all(1).double()
        return value + z.double() @ linear
    return game


def make_game(name: str, seed: int):
    """(n, game bool[C, n] -> float64[C], exact phi float64[n])."""
    if name.startswith("mlp") or name.startswith("deepmlp"):
        n = int(name.removeprefix("deep")[3:])
        game = (deep_mlp_game if name.startswith("deep") else mlp_game)(n, seed)
    elif name.startswith("unanimity"):
        n = int(name[9:])
        game, exact = unanimity_game(n, seed)
        return n, game, exact
    else:
        n = int(name[12:])
        game = interaction_game(n, seed)
    return n, game, sk.shapley_values(game, n, method="exact", max_batch=2 ** 16)


class Counted:
    """The game for every caller (torch bool, NumPy 0/1 or torch 0/1), counting evaluated rows."""

    def __init__(self, game):
        self.game, self.rows = game, 0

    def torch_bool(self, z):
        self.rows += z.shape[0]
        return self.game(z)

    def numpy(self, z):
        z = np.asarray(z)
        z = z.reshape(-1, z.shape[-1])
        self.rows += z.shape[0]
        return self.game(torch.from_numpy(z != 0)).numpy()

    def captum(self, x):
        self.rows += x.shape[0]
        return self.game(x != 0)


def ours(name, counted, n, budget, seed):
    if name == "auto":
        return sk.shapley_values(counted.torch_bool, n, budget=budget, seed=seed)
    if name == "stratified":  # the old default: num_samples = B // (2n), no budget argument
        return sk.shapley_values(counted.torch_bool, n, method="sampling", num_samples=max(2, budget // (2 * n)), seed=seed)
    if budget < APPROXIMATORS[name].minimum_budget(n):
        return None
    return sk.shapley_values(counted.torch_bool, n, method="sampling", estimator=name, budget=budget, seed=seed)


def peers():
    """name -> fn(counted, n, budget, seed) -> phi float64[n] (or None where it cannot run)."""
    import shapiq
    import shap
    from captum.attr import KernelShap, ShapleyValueSampling

    def shapiq_run(cls, **kw):
        def run(counted, n, budget, seed):
            est = cls(n=n, random_state=seed, **kw)
            return torch.from_numpy(np.asarray(est.approximate(budget, counted.numpy).get_n_order_values(1), dtype=np.float64))
        return run

    def shap_permutation(counted, n, budget, seed):
        if budget < 2 * n + 1:
            return None
        masker = shap.maskers.Independent(np.zeros((1, n)))
        explainer = shap.PermutationExplainer(counted.numpy, masker, seed=seed)
        return torch.from_numpy(np.asarray(explainer(np.ones((1, n)), max_evals=budget, silent=True).values[0], dtype=np.float64))

    def shap_kernel(counted, n, budget, seed):
        np.random.seed(seed)
        explainer = shap.KernelExplainer(counted.numpy, np.zeros((1, n)))
        return torch.from_numpy(np.asarray(explainer.shap_values(np.ones((1, n)), nsamples=budget - 2, silent=True), dtype=np.float64).reshape(-1)[:n])

    def captum_svs(counted, n, budget, seed):
        torch.manual_seed(seed)
        perms = (budget - 1) // n
        out = ShapleyValueSampling(counted.captum).attribute(torch.ones(1, n, dtype=torch.float64), baselines=0.0,
                                                             n_samples=perms, perturbations_per_eval=64)
        return out[0]

    def captum_kernel(counted, n, budget, seed):
        torch.manual_seed(seed)
        out = KernelShap(counted.captum).attribute(torch.ones(1, n, dtype=torch.float64), baselines=0.0,
                                                   n_samples=budget - 1, perturbations_per_eval=64)
        return out[0]

    return {"shapiq KernelSHAP": shapiq_run(shapiq.KernelSHAP, pairing_trick=True),
            "shapiq kADDSHAP": shapiq_run(shapiq.kADDSHAP, max_order=2),
            "shapiq SVARM": shapiq_run(shapiq.SVARM),
            "shapiq PermutationSV": shapiq_run(shapiq.PermutationSamplingSV),
            "shapiq UnbiasedKernelSHAP": shapiq_run(shapiq.UnbiasedKernelSHAP, pairing_trick=True),
            "shap Permutation": shap_permutation, "shap Kernel": shap_kernel,
            "captum ShapleyValueSampling": captum_svs, "captum KernelShap": captum_kernel}


def markdown(results) -> str:
    """Two markdown tables from the result rows: the default against the best peer per cell,
    and every method's relative MSE per cell."""
    cells = sorted({(r["game"], r["budget"]) for r in results}, key=lambda c: (c[0], c[1]))
    by = {(r["game"], r["budget"], r["method"]): r for r in results}
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = ["| game | B | ours auto rel. MSE | best peer (which) | peer / auto | auto ms | fastest peer ms (which) |",
             "|---|---|---|---|---|---|---|"]
    for game, budget in cells:
        auto = by.get((game, budget, "ours auto"))
        peer_rows = [by[(game, budget, m)] for m in methods if not m.startswith("ours") and (game, budget, m) in by
                     and by[(game, budget, m)]["max_evaluations"] <= budget]
        if auto is None or not peer_rows:
            continue
        best = min(peer_rows, key=lambda r: r["rel_mse"])
        fast = min(peer_rows, key=lambda r: r["seconds"])
        ratio = best["rel_mse"] / auto["rel_mse"] if auto["rel_mse"] > 0 else float("inf")
        lines.append(f"| {game} | {budget} | {auto['rel_mse']:.3g} +- {auto['rel_mse_se']:.2g} | "
                     f"{best['rel_mse']:.3g} +- {best['rel_mse_se']:.2g} ({best['method']}) | {ratio:.3g} | "
                     f"{auto['seconds'] * 1e3:.2f} | {fast['seconds'] * 1e3:.2f} ({fast['method']}) |")
    lines += ["", "| game | B | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for game, budget in cells:
        row = [f"{by[(game, budget, m)]['rel_mse']:.2g}" if (game, budget, m) in by else "-" for m in methods]
        lines.append(f"| {game} | {budget} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--games", nargs="+", default=["mlp10", "mlp14", "mlp20", "unanimity20", "interactions14"])
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", default=None, help="print the markdown tables of a --json file and exit")
    parser.add_argument("--merge", default=None, help="a --json file whose rows of methods not run now are kept "
                                                      "(e.g. the peers, with --no-peers; same games and seeds)")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print(markdown(json.load(f)["results"]))
        return
    torch.set_num_threads(1)
    methods = {f"ours {name}": (lambda name: lambda c, n, b, s: ours(name, c, n, b, s))(name) for name in OURS}
    if not args.no_peers:
        import warnings
        warnings.filterwarnings("ignore")
        methods.update(peers())
    results = []
    for game_name in args.games:
        instances = [make_game(game_name, seed) for seed in range(args.seeds)]  # exact once per seed
        for budget in args.budgets:
            cell = {name: {"err": [], "sec": [], "evals": []} for name in methods}
            for seed, (n, game, exact) in enumerate(instances):
                for name, run in methods.items():
                    counted = Counted(game)
                    start = time.perf_counter()
                    try:
                        value = run(counted, n, budget, seed)
                    except Exception as exc:  # a peer that cannot run this cell: recorded, not fatal
                        cell[name]["error"] = f"{type(exc).__name__}: {exc}"[:200]
                        continue
                    seconds = time.perf_counter() - start
                    if value is None:
                        continue
                    value = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
                    cell[name]["err"].append(float(((value - exact) ** 2).sum() / (exact ** 2).sum()))
                    cell[name]["sec"].append(seconds)
                    cell[name]["evals"].append(counted.rows)
            for name, rec in cell.items():
                if not rec["err"]:
                    continue
                err = np.asarray(rec["err"])
                row = {"game": game_name, "budget": budget, "method": name, "rel_mse": float(err.mean()),
                       "rel_mse_se": float(err.std(ddof=1) / len(err) ** 0.5) if len(err) > 1 else 0.0,
                       "seconds": float(np.median(rec["sec"])), "evaluations": float(np.mean(rec["evals"])),
                       "max_evaluations": int(max(rec["evals"])), "seeds": len(err)}
                results.append(row)
                print(f"{game_name:15s} B={budget:5d} {name:28s} relMSE {row['rel_mse']:.3g} +- {row['rel_mse_se']:.2g}"
                      f"  evals {row['evaluations']:.0f} (max {row['max_evaluations']})  {row['seconds'] * 1e3:.2f} ms", flush=True)
    if args.merge:
        with open(args.merge) as f:
            ran = {r["method"] for r in results}
            results += [r for r in json.load(f)["results"] if r["method"] not in ran]
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "seeds": args.seeds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
