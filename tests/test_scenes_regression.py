"""CI regression on the trained scenes model (checkpoints/scenes) and the scenes test split.

Each method at budgets 64 and 16 must stay within TOLERANCE accuracy points of the value recorded in
results/scenes/regression.json (``python scripts/eval_scenes.py --limit 92 --budgets 64 16 --regression``) and
give the recorded answer to at least AGREEMENT of the questions. Opt-in (``SVDPRUNE_SCENES_REGRESSION=1``):
the committed scenes model answers near its priors (vanilla 46%), so it is not yet the discriminating CI check
the benchmark is meant to give, and its runtime exceeds the 2-minute CI budget on 2 cores.
"""
import json
import os

import pytest

from harness.scenes_protocol import ROOT, SCENES_WEIGHTS, checkpoint_sha256, scenes_run

REFERENCE = ROOT / "results" / "scenes" / "regression.json"
TOLERANCE = 3.0  # accuracy points (92 questions: ~1.1 points each); absorbs BLAS differences between machines
AGREEMENT = 0.95  # share of questions answered as recorded

if os.environ.get("SVDPRUNE_SCENES_REGRESSION") != "1":
    # opt-in: ~21 runs of 92 questions through a 7-layer tower are several minutes on 2 CPU cores, and the
    # committed scenes model is below its targets (checkpoints/scenes/README.md), so it guards little yet
    pytest.skip("opt-in: set SVDPRUNE_SCENES_REGRESSION=1", allow_module_level=True)
if not REFERENCE.exists() or not SCENES_WEIGHTS.exists():
    pytest.skip("the scenes checkpoint or its regression reference is not in this checkout", allow_module_level=True)

reference = json.loads(REFERENCE.read_text())
CASES = [(method, int(budget)) for method, by_budget in sorted(reference["accuracy"].items())
         if method != "vanilla" for budget in sorted(by_budget, key=int)]
CASES.append(("vanilla", 576))


def recorded(method: str, budget: int) -> tuple[float, list[str]]:
    key = next(iter(reference["accuracy"][method])) if method == "vanilla" else str(budget)
    return reference["accuracy"][method][key], reference["answers"][method][key]


def test_reference_belongs_to_the_committed_checkpoint():
    assert checkpoint_sha256() == reference["checkpoint_sha256"], \
        "checkpoints/scenes changed: refresh results/scenes/regression.json (see the module docstring)"


@pytest.mark.parametrize("method, budget", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_method_matches_recorded(method, budget, tmp_path):
    expected_accuracy, expected_answers = recorded(method, budget)
    accuracy, rows = scenes_run(method, budget, reference["limit"], tmp_path)
    answers = [r["prediction"] for r in rows]
    assert len(answers) == len(expected_answers) == reference["limit"]
    agreement = sum(a == b for a, b in zip(answers, expected_answers)) / len(answers)
    assert abs(accuracy - expected_accuracy) <= TOLERANCE, \
        f"{method} k={budget}: accuracy {accuracy:.2f} vs recorded {expected_accuracy:.2f}"
    assert agreement >= AGREEMENT, f"{method} k={budget}: {agreement:.1%} of answers as recorded"
