"""Estimator efficiency: error against game evaluations and wall time, "paper" vs the variance-reduced ones.

    python benchmarks/estimator_bench.py [--device cpu|cuda] [--runs 40] [--json out.json]
                                         [--checkpoint RUN [--reference-samples 20000]
                                          [--captions first|longest]]

Workloads (issue 13, item 3):
  (a) tiny encoders: ``region_interaction`` on random TransformerTowers (12 patches, 6 words,
      n = 18), 2 pairs x 4 candidate regions of 2-4 patches; the reference is exact enumeration
      (``method="exact"``, itself tested against brute force). Scores "interaction" and "phi".
  (b) ``--checkpoint RUN``: a trained run's real towers and candidates: the first ``pairs`` test
      images with their first referring expression (``--captions longest``: their longest, 12-13
      real tokens, beyond the text half's enumeration), the head's top 4 regions after NMS each,
      ``region_interaction`` (Eq. 7, the run's token baseline) on the real token grid; the
      reference is a ``--reference-samples`` estimate by the default estimator ("antithetic":
      unbiased, its own standard error reported), since exact enumeration over 64 patches is out
      of reach.
  (c) shapiq-style games: sums of unanimity games v(S) = sum_T a_T [T subset S] over n = 14
      players, whose values are known in closed form (``unanimity_values``); the generic
      ``shapley_values``, ``interaction_index`` (all pairs) and ``coalition_interaction``.
For each estimator and num_samples: ``runs`` seeded runs give the MSE against the reference
(mean over runs and targets), the instability (spec section 5), the mean game evaluations per
run and the mean wall time per call. All estimators spend the same game evaluations at the same
num_samples ("antithetic" encodes 2^l text halves per pair of l <= 7 real text tokens, and
num_samples x TEXT_POOL_HALVES for longer texts, instead of num_samples), so the MSE ratio paper / new at equal num_samples is the ratio at equal
evaluations (MSE ~ 1 / evaluations: a ratio r means the paper needs r x the evaluations for
the same error). Prints a markdown table and writes JSON with --json.
"""
import argparse
import itertools
import json
import platform
import time

import torch

import shapley_kernels as sk
from shapley_kernels.token_level import TransformerTower, region_interaction

ESTIMATORS = ("paper", "stratified", "control_variate")  # the generic estimators' (workload (c))
REGION_ESTIMATORS = ESTIMATORS + ("antithetic",)  # region_interaction's (workloads (a), (b))
REFERENCE_ESTIMATOR = "antithetic"  # (b)'s reference: the lowest-variance unbiased one


# ------------------------------------------------------------------ (c) unanimity games
def random_unanimity(n: int, terms: int, generator: torch.Generator, max_size: int = 5):
    """A sum of ``terms`` unanimity games: (masks bool[terms, n], weights float64[terms]),
    sizes uniform in 1..max_size, weights standard normal."""
    masks = torch.zeros(terms, n, dtype=torch.bool)
    for t in range(terms):
        size = int(torch.randint(1, max_size + 1, (1,), generator=generator))
        masks[t, torch.randperm(n, generator=generator)[:size]] = True
    return masks, torch.randn(terms, generator=generator, dtype=torch.float64)


def unanimity_game(masks: torch.Tensor, weights: torch.Tensor):
    """Batched game v(S) = sum_T a_T [T subset S]: game(bool[C, n]) -> float64[C]."""
    def game(coalitions):
        inside = ~(masks[None].to(coalitions.device) & ~coalitions[:, None, :]).any(-1)  # [C, terms]
        return inside.double() @ weights.to(coalitions.device)
    return game


def unanimity_values(masks: torch.Tensor, weights: torch.Tensor, pairs: torch.Tensor,
                     coalitions: torch.Tensor):
    """Closed forms for v = sum_T a_T u_T: phi_i = sum_{T ni i} a_T / |T|; the pairwise SII
    I_ij = sum_{T sup {i,j}} a_T / (|T| - 1); the Eq. 4 interaction of R,
    I([R]) = sum_{T: |T n R| >= 2} a_T / (|T \\ R| + 1) (u_T restricted to the game over N\\R
    plus [R] is the unanimity game of (T \\ R) + [R] when T meets R; each phi(x | N\\R + x) is
    a_T / (|T \\ R| + 1) only when T n R = {x}). Returns (phi float64[n], sii float64[P],
    inter float64[R])."""
    size = masks.sum(1).double()
    phi = (masks.double() * (weights / size)[:, None]).sum(0)
    both = masks[:, pairs[:, 0]] & masks[:, pairs[:, 1]]  # [terms, P]
    sii = (both.double() * (weights / (size - 1).clamp(min=1))[:, None]).sum(0)
    meet = (masks[:, None, :] & coalitions[None]).sum(-1)  # [terms, R]
    outside = (masks[:, None, :] & ~coalitions[None]).sum(-1)
    inter = ((meet >= 2).double() * weights[:, None] / (outside + 1).double()).sum(0)
    return phi, sii, inter


# ------------------------------------------------------------------ (a) tiny encoders
def tiny_workload(device):
    """Two pairs of random tokens for random towers (12 patches in a 4 x 3 grid, 6 words) and 4
    candidate regions per pair: (towers, x_img, x_txt, regions)."""
    torch.manual_seed(0)
    img = TransformerTower(dim=16, depth=2, heads=2, max_tokens=12, out_dim=8).double().eval().to(device)
    txt = TransformerTower(dim=16, depth=2, heads=2, max_tokens=6, out_dim=8,
                           norm_first=False).double().eval().to(device)
    gen = torch.Generator().manual_seed(1)
    x_img = torch.randn(2, 12, 16, generator=gen, dtype=torch.float64).to(device)
    x_txt = torch.randn(2, 6, 16, generator=gen, dtype=torch.float64).to(device)
    regions = torch.zeros(2, 4, 12, dtype=torch.bool)
    for b, boxes in enumerate(([[0, 1], [4, 5, 8, 9], [2, 3, 6], [10, 11]],
                               [[0, 4], [1, 2, 5, 6], [7, 11], [8, 9, 10]])):
        for k, cells in enumerate(boxes):
            regions[b, k, cells] = True
    return (img, txt), x_img, x_txt, regions.to(device)


def _summary(runs: torch.Tensor, exact: torch.Tensor, seconds: float, evaluations: float) -> dict:
    mse = float(((runs - exact) ** 2).mean())
    return dict(mse=mse, rmse=mse ** 0.5, instability=sk.instability(runs), seconds_per_call=seconds,
                evaluations=evaluations)


def bench_tiny(device, runs: int, samples_list):
    (img, txt), x_img, x_txt, regions = tiny_workload(device)
    exact = region_interaction(img, txt, x_img, x_txt, regions, method="exact", score=("interaction", "phi"))
    out = []
    for num_samples, estimator in itertools.product(samples_list, REGION_ESTIMATORS):
        values = {"interaction": [], "phi": []}
        start, evals = time.perf_counter(), 0
        for seed in range(runs):
            got = region_interaction(img, txt, x_img, x_txt, regions, method="sampling", num_samples=num_samples,
                                     seed=seed, estimator=estimator, score=("interaction", "phi"))
            for name in values:
                values[name].append(got[name].value.cpu())
            evals += int(got["interaction"].evaluations.sum())
        seconds = (time.perf_counter() - start) / runs
        for name, vals in values.items():
            out.append(dict(workload="tiny_encoders", target=name, estimator=estimator, num_samples=num_samples,
                            **_summary(torch.stack(vals), exact[name].value.cpu(), seconds, evals / runs)))
    return out


def real_workload(checkpoint: str, device, pairs: int = 2, regions: int = 4, captions: str = "first"):
    """A trained run's towers, the tokens of ``pairs`` test pairs and the head's top ``regions``
    candidates: ((image_tower, text_tower), x_img float[P, N_I, D], x_txt float[P, L, D],
    text_mask bool[P, L], token-grid regions bool[P, K, N_I], token baseline). ``captions``:
    each image's "first" referring expression or its "longest" (in words)."""
    from loupe_core.eval import splits
    from loupe_core.eval.encode import image_tensor, tokenize
    from loupe_core.pipeline import load_run, resolve_data

    objective, cfg, _, _ = load_run(checkpoint, device)
    model = objective.model
    tokenizer, files = resolve_data(cfg, None, None)
    split = splits.load("grounding", files["grounding"], cfg.model.image_size)
    first = {}
    for r, i in enumerate(split.expression_image):
        kept = first.setdefault(int(i), r)
        if captions == "longest" and len(split.expressions[r].split()) > len(split.expressions[kept].split()):
            first[int(i)] = r
    images = sorted(first)[:pairs]
    with torch.no_grad():
        x_img, feats = model.encode_image_tokens(image_tensor(split.images[images], device))
        ids, mask = tokenize(tokenizer, [split.expressions[first[i]] for i in images], cfg.model.text_max_tokens)
        x_txt, _ = model.encode_text_tokens(ids.to(device), mask.to(device))
        top = model.propose_regions(feats, regions)
        masks = model.token_masks(top.boxes, top.patch_masks)
    return ((model.image_tower, model.text_tower), x_img.double(), x_txt.double(), mask.to(device), masks,
            cfg.loss.token_baseline)


def bench_real(checkpoint: str, device, runs: int, samples_list, reference_samples: int, captions: str = "first"):
    (img, txt), x_img, x_txt, text_mask, regions, baseline = real_workload(checkpoint, device, captions=captions)
    img, txt = img.double().eval(), txt.double().eval()
    common = dict(text_mask=text_mask, baseline=baseline, method="sampling", score=("interaction", "phi"))
    with torch.no_grad():
        reference = region_interaction(img, txt, x_img, x_txt, regions, num_samples=reference_samples,
                                       seed=10**6, estimator=REFERENCE_ESTIMATOR, **common)
    out = []
    for num_samples, estimator in itertools.product(samples_list, REGION_ESTIMATORS):
        values = {"interaction": [], "phi": []}
        start, evals = time.perf_counter(), 0
        with torch.no_grad():
            for seed in range(runs):
                got = region_interaction(img, txt, x_img, x_txt, regions, num_samples=num_samples, seed=seed,
                                         estimator=estimator, **common)
                for name in values:
                    values[name].append(got[name].value.cpu())
                evals += int(got["interaction"].evaluations.sum())
        seconds = (time.perf_counter() - start) / runs
        for name, vals in values.items():
            ref = reference[name]
            out.append(dict(workload="trained_default" if captions == "first" else f"trained_default_{captions}", target=name, estimator=estimator, num_samples=num_samples,
                            reference_stderr=float(ref.stderr.max()),
                            **_summary(torch.stack(vals), ref.value.cpu(), seconds, evals / runs)))
    return out


def bench_unanimity(device, runs: int, samples_list, n: int = 14, terms: int = 30):
    gen = torch.Generator().manual_seed(2)
    masks, weights = random_unanimity(n, terms, gen)
    game = unanimity_game(masks, weights)
    pairs = torch.tensor(list(itertools.combinations(range(n), 2)))
    coalitions = torch.zeros(8, n, dtype=torch.bool)
    for r in range(8):
        coalitions[r, torch.randperm(n, generator=gen)[:2 + r % 3]] = True
    phi, sii, inter = unanimity_values(masks, weights, pairs, coalitions)
    cases = (("shapley_values", sk.shapley_values, (), phi),
             ("interaction_index", sk.interaction_index, (pairs.to(device),), sii),
             ("coalition_interaction", sk.coalition_interaction, (coalitions.to(device),), inter))
    out = []
    for (name, fn, extra, exact), num_samples, estimator in itertools.product(cases, samples_list, ESTIMATORS):
        vals, evals = [], 0
        start = time.perf_counter()
        for seed in range(runs):
            est = fn(game, n, *extra, method="sampling", num_samples=num_samples, seed=seed,
                     return_stderr=True, estimator=estimator, device=device)
            vals.append(est.value.cpu())
            evals += est.evaluations
        seconds = (time.perf_counter() - start) / runs
        out.append(dict(workload="unanimity", target=name, estimator=estimator, num_samples=num_samples,
                        **_summary(torch.stack(vals), exact, seconds, evals / runs)))
    return out


def ratios(rows):
    """MSE(paper) / MSE(stratified) at equal num_samples (equal evaluations), per row pair."""
    key = lambda r: (r["workload"], r["target"], r["num_samples"])
    paper = {key(r): r for r in rows if r["estimator"] == "paper"}
    return [dict(workload=r["workload"], target=r["target"], num_samples=r["num_samples"],
                 estimator=r["estimator"], mse_ratio=paper[key(r)]["mse"] / r["mse"],
                 time_ratio=paper[key(r)]["seconds_per_call"] / r["seconds_per_call"])
            for r in rows if r["estimator"] != "paper" and key(r) in paper]


def collect(steps_tsv: str, estimator_json: str, out_json: str) -> dict:
    """benchmarks/gpu_suite.sh's summary: steps.tsv rows (name, exit status, start, end, command)
    and the estimator benchmark's JSON (None when that step wrote none) into one JSON file."""
    steps = []
    with open(steps_tsv) as f:
        for line in f:
            name, rc, start, end, command = line.rstrip("\n").split("\t", 4)
            steps.append(dict(name=name, exit_status=int(rc), seconds=round(float(end) - float(start), 2),
                              command=command, timed_out=int(rc) in (124, 137)))
    estimator = None
    try:
        with open(estimator_json) as f:
            estimator = json.load(f)
    except (OSError, ValueError):
        pass
    summary = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
                   cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   all_passed=all(s["exit_status"] == 0 for s in steps), steps=steps, estimator=estimator)
    with open(out_json, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", default=None, help="a trained run: adds workload (b)")
    parser.add_argument("--reference-samples", type=int, default=20000, help="samples of (b)'s reference")
    parser.add_argument("--captions", choices=("first", "longest"), default="first",
                        help="(b): each image's first referring expression or its longest")
    parser.add_argument("--collect", nargs=3, metavar=("STEPS_TSV", "ESTIMATOR_JSON", "OUT_JSON"),
                        help="only write benchmarks/gpu_suite.sh's summary JSON (see collect)")
    args = parser.parse_args(argv)
    if args.collect:
        return collect(*args.collect)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device (torch.cuda.is_available() is False)")
    rows = bench_tiny(device, args.runs, args.samples) + bench_unanimity(device, args.runs, args.samples)
    if args.checkpoint:
        rows += bench_real(args.checkpoint, device, args.runs, args.samples, args.reference_samples, args.captions)
    result = dict(machine=f"{platform.machine()} {platform.processor() or ''}".strip(), torch=torch.__version__,
                  device=str(device), threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  runs=args.runs, rows=rows, ratios=ratios(rows))
    print("| workload | target | estimator | num_samples | evaluations | MSE paper / this | s per call paper / this |")
    print("|---|---|---|---|---|---|---|")
    evals = {(r["workload"], r["target"], r["num_samples"]): r["evaluations"] for r in rows}
    for r in result["ratios"]:
        print(f"| {r['workload']} | {r['target']} | {r['estimator']} | {r['num_samples']} | "
              f"{evals[(r['workload'], r['target'], r['num_samples'])]:.0f} | {r['mse_ratio']:.2f} | {r['time_ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
