"""CI regression on the trained mini model (checkpoints/mini) and real easy-VQA test questions.

Each method at a few budgets must stay within TOLERANCE accuracy points of the value recorded in
results/mini/regression.json (written by ``python scripts/eval_mini.py --limit 240 --budgets 64 16 --regression``).
A broken method (wrong sort order, wrong layer, lost raster order) moves accuracy by far more than that.
"""
import json
from pathlib import Path

import pytest

from eval.mini_protocol import mini_config
from svdprune.runner import run

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "mini" / "regression.json"
TOLERANCE = 2.5  # points; the run is deterministic on one machine, this absorbs BLAS differences across CPUs

if not REFERENCE.exists() or not (ROOT / "checkpoints" / "mini" / "config.json").exists():
    pytest.skip("the mini checkpoint or its regression reference is not in this checkout", allow_module_level=True)

reference = json.loads(REFERENCE.read_text())
# vanilla ignores the budget: the reference repeats it under every budget, it is checked once at 576
CASES = [(method, int(budget), accuracy) for method, by_budget in sorted(reference["accuracy"].items())
         if method != "vanilla" for budget, accuracy in sorted(by_budget.items())]
CASES.append(("vanilla", 576, next(iter(reference["accuracy"]["vanilla"].values()))))


def test_vanilla_is_a_real_model(tmp_path):
    # a trained model: far above always giving the majority answer of each question type (~43%).
    # The project's 90% target is not reached yet (checkpoints/mini/README.md: shapes are barely recognised).
    assert run(mini_config("vanilla", 576, reference["limit"], tmp_path))["accuracy"] >= 75.0


@pytest.mark.parametrize("method, budget, expected", CASES, ids=[f"{m}-{b}" for m, b, _ in CASES])
def test_accuracy_matches_recorded(method, budget, expected, tmp_path):
    accuracy = run(mini_config(method, budget, reference["limit"], tmp_path))["accuracy"]
    assert abs(accuracy - expected) <= TOLERANCE, f"{method} k={budget}: {accuracy:.2f} vs recorded {expected:.2f}"
