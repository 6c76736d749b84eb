"""Coalition evaluations per second of the token-level engine (pytest-benchmark, CPU).

Run: python -m pytest benchmarks/bench_token_engine.py --benchmark-only -q --bench-threads 1
     (add --benchmark-json=out.json to keep the numbers; extra_info holds evals_per_s).

Towers at 50% keep (every coalition row keeps a uniformly drawn half of the tokens):
  image: ViT-S/16-like, 196 patches, dim 384, 6 heads, depth reduced to 2 (full: 12);
  text:  BERT-Small-like (spec section 6), 60 tokens, hidden 512, 8 heads, depth 2 (full: 4).
Reduced depth and coalition counts (BATCH rows per call) keep one benchmark to seconds on a
2-core CPU; relative speeds are what matter (layers are identical, so cost scales with depth).
--bench-threads (benchmarks/conftest.py) sets torch's threads: on a shared, loaded machine use
1 (two-thread timings swing by 2-3x when the second core is busy).
Modes: "naive" (one coalition per forward, zero baseline), "zero" (batched, zeroed tokens,
full attention) and "drop" (batched, kept tokens packed).
End to end: ``region_interaction`` on the same two towers (1 pair, 2 regions of 4 patches,
8 samples per region = 96 game evaluations per call), zero vs drop; extra_info holds
game_evals_per_s. Full-size GPU runs:
benchmarks/gpu_token_bench.py.
"""
import pytest
import torch

from shapley_kernels.token_level import TransformerTower, region_interaction

BATCH = 32
TOWERS = {
    "vit_s16": dict(dim=384, depth=2, heads=6, tokens=196),
    "bert_small": dict(dim=512, depth=2, heads=8, tokens=60, norm_first=False, layer_norm_eps=1e-12),
}


def half_keep(C, N, gen):
    """bool[C, N]: each row keeps exactly N // 2 tokens, drawn uniformly."""
    order = torch.rand(C, N, generator=gen).argsort(dim=1)
    return order < N // 2


def workload(name):
    cfg = dict(TOWERS[name])
    tokens = cfg.pop("tokens")
    torch.manual_seed(0)
    tower = TransformerTower(max_tokens=tokens, out_dim=256, **cfg).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, tokens, cfg["dim"], generator=gen)
    return tower, x, half_keep(BATCH, tokens, gen)


def run_mode(tower, x, keep, mode):
    with torch.inference_mode():
        if mode == "naive":
            return torch.cat([tower(x[i:i + 1] * keep[i:i + 1, :, None]) for i in range(len(x))])
        if mode == "zero":
            return tower(x * keep[..., None])
        return tower(x, keep)


@pytest.mark.parametrize("mode", ["naive", "zero", "drop"])
@pytest.mark.parametrize("name", list(TOWERS))
def test_coalition_throughput(benchmark, bench_threads, measure, name, mode):
    tower, x, keep = workload(name)
    out = measure(lambda: run_mode(tower, x, keep, mode), expected_seconds=1.0)
    assert out.shape == (BATCH, 256) and bool(torch.isfinite(out).all())
    benchmark.extra_info["coalitions_per_call"] = BATCH
    benchmark.extra_info["threads"] = bench_threads
    benchmark.extra_info["evals_per_s"] = BATCH / benchmark.stats.stats.mean


@pytest.mark.parametrize("baseline", ["zero", "drop"])
def test_region_interaction_throughput(benchmark, bench_threads, measure, baseline):
    image_tower, x_img, _ = workload("vit_s16")
    text_tower, x_txt, _ = workload("bert_small")
    regions = torch.zeros(1, 2, 196, dtype=torch.bool)
    regions[0, 0, [0, 1, 14, 15]] = True
    regions[0, 1, [100, 101, 114, 115]] = True
    est = measure(lambda: region_interaction(image_tower, text_tower, x_img[:1], x_txt[:1], regions,
                                             baseline=baseline, method="sampling", num_samples=8,
                                             seed=0), expected_seconds=3.0)
    assert bool(torch.isfinite(est.value).all())
    benchmark.extra_info["threads"] = bench_threads
    benchmark.extra_info["game_evals_per_s"] = int(est.evaluations.sum()) / benchmark.stats.stats.mean
