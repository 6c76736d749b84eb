"""The generic estimators' ``estimator=`` variants ("control_variate", "stratified", "paper")
against brute-force enumeration (tests/reference.py) and closed-form unanimity games; and the
helpers of benchmarks/estimator_bench.py."""
import importlib.util
import itertools
import os

import pytest
import torch

import shapley_kernels as sk
from reference import brute_coalition_interaction, brute_shapley, brute_sii, random_table, table_game, table_value_fn

ESTIMATORS = ("control_variate", "stratified", "paper")
# 3 standard errors per target is the bound; a test holds 8-18 targets, so the bound is
# 3.5 (a family-wise false alarm of about 0.5-1% per test with fixed seeds, instead of 3-5%)
Z = 3.5
_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "estimator_bench.py")
_spec = importlib.util.spec_from_file_location("estimator_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _case():
    n = 5
    table = random_table(n, torch.Generator().manual_seed(11))
    value_fn = table_value_fn(table)
    pairs = torch.tensor(list(itertools.combinations(range(n), 2)))
    coalitions = torch.zeros(3, n, dtype=torch.bool)
    for r, members in enumerate(([0, 1], [1, 3, 4], [0, 2, 3, 4])):
        coalitions[r, members] = True
    want = (torch.tensor(brute_shapley(value_fn, n), dtype=torch.float64),
            torch.tensor([brute_sii(value_fn, n, int(i), int(j)) for i, j in pairs], dtype=torch.float64),
            torch.tensor([brute_coalition_interaction(value_fn, n, row.nonzero().flatten().tolist())
                          for row in coalitions], dtype=torch.float64))
    calls = ((sk.shapley_values, ()), (sk.interaction_index, (pairs,)), (sk.coalition_interaction, (coalitions,)))
    return table_game(table), n, calls, want


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unbiased_over_200_seeds_and_coverage(estimator):
    """Mean over 200 fixed seeds within Z = 3.5 standard errors (from the runs' spread) of the brute-force
    value for every target of the three estimators; value +- 1.96 stderr covers it 90-98%."""
    game, n, calls, want = _case()
    for (fn, extra), exact in zip(calls, want):
        runs = [fn(game, n, *extra, method="sampling", num_samples=32, seed=seed, return_stderr=True,
                   estimator=estimator) for seed in range(200)]
        values = torch.stack([r.value for r in runs])
        se = values.std(0) / 200 ** 0.5
        assert bool(((values.mean(0) - exact).abs() <= Z * se).all()), (fn.__name__, values.mean(0), exact)
        inside = (values - exact).abs() <= 1.96 * torch.stack([r.stderr for r in runs])
        assert 0.90 <= float(inside.double().mean()) <= 0.98, (fn.__name__, float(inside.double().mean()))
        assert runs[0].evaluations == fn(game, n, *extra, method="sampling", num_samples=32, seed=0,
                                         return_stderr=True, estimator="paper").evaluations


def test_unknown_estimator():
    game, n, calls, _ = _case()
    for fn, extra in calls:
        with pytest.raises(ValueError, match="estimator"):
            fn(game, n, *extra, method="sampling", estimator="kernelshap")


def test_unanimity_closed_forms_match_brute_force():
    n = 6
    masks, weights = bench.random_unanimity(n, 7, torch.Generator().manual_seed(4))
    game = bench.unanimity_game(masks, weights)
    rows = ((torch.arange(2 ** n)[:, None] >> torch.arange(n)) & 1).bool()
    value_fn = table_value_fn(game(rows))
    pairs = torch.tensor(list(itertools.combinations(range(n), 2)))
    coalitions = torch.zeros(4, n, dtype=torch.bool)
    for r, members in enumerate(([0, 1], [2, 3, 5], [0, 1, 2, 3], [4, 5])):
        coalitions[r, members] = True
    phi, sii, inter = bench.unanimity_values(masks, weights, pairs, coalitions)
    torch.testing.assert_close(phi, torch.tensor(brute_shapley(value_fn, n), dtype=torch.float64))
    torch.testing.assert_close(sii, torch.tensor([brute_sii(value_fn, n, int(i), int(j)) for i, j in pairs],
                                                 dtype=torch.float64))
    torch.testing.assert_close(inter, torch.tensor(
        [brute_coalition_interaction(value_fn, n, row.nonzero().flatten().tolist()) for row in coalitions],
        dtype=torch.float64))


def test_benchmark_runs_small():
    result = bench.main(["--runs", "2", "--samples", "4"])
    rows = result["rows"]
    assert {r["estimator"] for r in rows if r["workload"] == "unanimity"} == set(ESTIMATORS)
    assert {r["estimator"] for r in rows if r["workload"] != "unanimity"} == set(ESTIMATORS) | {"antithetic"}
    assert all(r["mse"] >= 0 and r["evaluations"] > 0 for r in rows)
    assert len(result["ratios"]) == sum(r["estimator"] != "paper" for r in rows)


def test_gpu_suite_summary(tmp_path):
    """The CPU-testable part of benchmarks/gpu_suite.sh: its steps table and the estimator JSON
    become one summary JSON (a timed-out step is marked; a missing estimator JSON gives None)."""
    import json

    steps = tmp_path / "steps.tsv"
    steps.write_text("gpu_tests\t0\t100.0\t130.5\tpython -m pytest -m gpu tests\n"
                     "token_bench\t124\t130.5\t220.5\tpython benchmarks/gpu_token_bench.py\n")
    est = tmp_path / "estimator.json"
    est.write_text(json.dumps({"rows": []}))
    out = tmp_path / "gpu_suite.json"
    summary = bench.main(["--collect", str(steps), str(est), str(out)])
    assert json.loads(out.read_text()) == summary
    assert [s["seconds"] for s in summary["steps"]] == [30.5, 90.0]
    assert [s["timed_out"] for s in summary["steps"]] == [False, True]
    assert not summary["all_passed"] and summary["estimator"] == {"rows": []}
    assert bench.collect(str(steps), str(tmp_path / "missing.json"), str(out))["estimator"] is None


def test_gpu_suite_script_is_valid_bash():
    import subprocess

    script = os.path.join(os.path.dirname(_PATH), "gpu_suite.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_estimator_bench_refuses_cuda_without_a_device(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cuda: no CUDA device" in capsys.readouterr().err
