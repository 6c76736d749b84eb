"""The objective's refactors change no loss: short runs of the named configs give the per-step
losses (every term and logged diagnostic) and final metrics recorded in
``tests/fixtures/objective_reference.json`` (written by ``tests/fixtures/make_objective_reference.py``
from the code before the change), draw for draw. The cheap cases run here; the others
(the sampled Table 4 rows, ``default``) are re-run by the script."""
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
import make_objective_reference as ref  # noqa: E402

REFERENCE = __import__("json").load(open(ref.PATH))
TOLERANCE = dict(rel=1e-5, abs=1e-7)  # float32 sums in another order: a few ulps


def _same(recorded: dict, now: dict, where: str) -> list:
    diffs = [f"{where}: {key} missing now" for key in recorded if key not in now]
    diffs += [f"{where}: {key} new" for key in now if key not in recorded]
    for key in sorted(set(recorded) & set(now)):
        a, b = recorded[key], now[key]
        if not (math.isnan(a) and math.isnan(b)) and b != pytest.approx(a, **TOLERANCE):
            diffs.append(f"{where}: {key} {a!r} recorded, {b!r} now")
    return diffs


@pytest.mark.parametrize("name", ref.CHEAP)
def test_a_short_run_gives_the_recorded_losses_and_metrics(name, tmp_path):
    recorded, now = REFERENCE[name], ref.run_case(name, str(tmp_path))
    assert len(now["losses"]) == len(recorded["losses"])
    diffs = [d for step, (a, b) in enumerate(zip(recorded["losses"], now["losses"]))
             for d in _same(a, b, f"step {step + 1}")]
    diffs += _same(recorded["metrics"], now["metrics"], "final metrics")
    assert diffs == []


def test_the_reference_holds_every_case():
    assert set(ref.CASES) <= set(REFERENCE), "re-run tests/fixtures/make_objective_reference.py"
