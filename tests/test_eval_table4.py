"""Helpers of benchmarks/table4.py (the training runs themselves are the benchmark, not a test)."""
import importlib.util
import json
import os
import statistics

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "table4.py")
_spec = importlib.util.spec_from_file_location("table4", _PATH)
table4 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table4)


def test_seconds_per_iter_skips_warmup(tmp_path):
    history = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "train/samples_per_s": 1.0}, {"step": 2, "train/samples_per_s": 8.0},
            {"step": 3, "train/samples_per_s": 4.0}, {"step": 3, "eval/retrieval/i2t_r1": 10.0}]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert table4.seconds_per_iter(str(history), batch_size=8, warmup=1) == pytest.approx((1.0 + 2.0) / 2)
    with pytest.raises(ValueError, match="warm-up"):
        table4.seconds_per_iter(str(history), batch_size=8, warmup=3)


def test_summary_and_markdown():
    metrics = [{"retrieval/i2t_r1": a, "retrieval/t2i_r1": 1.0, "detection/map@0.3": 2.0, "detection/map@0.5": 3.0,
                "grounding/acc@0.5": 4.0, "diagnostics/diag_truebox_phrase": 50.0, "diagnostics/diag_recall@4": 5.0,
                "diagnostics/diag_label_auc": 0.5, "s_per_iter": s} for a, s in ((10.0, 1.0), (14.0, 3.0), (7.0, 8.0))]
    runs = [{"row": "row1", "seed": 0, "metrics": metrics[0]}, {"row": "row1", "seed": 1, "metrics": metrics[1]},
            {"row": "row3", "seed": 0, "metrics": metrics[2]}]
    summary = table4.summarise(runs)
    assert summary["row1"]["retrieval/i2t_r1"] == pytest.approx((12.0, statistics.stdev([10.0, 14.0])))
    assert summary["row3"]["s_per_iter"] == (8.0, 0.0)
    table = table4.markdown_table(summary)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 | backbone") and lines[3].startswith("| 3 |")
    assert "12.00 ± 2.83" in lines[2] and lines[3].endswith("| 4.00x |")


def test_command_line_rejects_a_budget_without_timed_steps(capsys):
    with pytest.raises(SystemExit):
        table4.main(["--steps", "1", "--warmup", "1"])
    assert "must exceed --warmup" in capsys.readouterr().err
