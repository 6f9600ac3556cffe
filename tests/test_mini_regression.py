"""CI regression on the trained mini model (checkpoints/mini) and real easy-VQA test questions.

Each method at a few budgets must stay within TOLERANCE accuracy points of the value recorded in
results/mini/regression.json (written by ``python scripts/eval_mini.py --limit 240 --budgets 64 16 --regression``)
and give the recorded answer to at least AGREEMENT of the questions. The answer check is the sharper one: a
broken selection that happens to keep accuracy (several token sets can answer an easy question) still changes
which answers come out.
"""
import json

import pytest

from harness.mini_protocol import MINI_WEIGHTS, ROOT, checkpoint_sha256, mini_run

REFERENCE = ROOT / "results" / "mini" / "regression.json"
TOLERANCE = 2.5  # accuracy points; the run is deterministic on one machine, this absorbs BLAS differences
AGREEMENT = 0.97  # share of questions answered as recorded

if not REFERENCE.exists() or not MINI_WEIGHTS.exists():
    pytest.skip("the mini checkpoint or its regression reference is not in this checkout", allow_module_level=True)

reference = json.loads(REFERENCE.read_text())
# vanilla ignores the budget: the reference repeats it under every budget, it is checked once at 576
CASES = [(method, int(budget)) for method, by_budget in sorted(reference["accuracy"].items())
         if method != "vanilla" for budget in sorted(by_budget, key=int)]
CASES.append(("vanilla", 576))


def recorded(method: str, budget: int) -> tuple[float, list[str]]:
    key = next(iter(reference["accuracy"][method])) if method == "vanilla" else str(budget)
    return reference["accuracy"][method][key], reference["answers"][method][key]


def test_reference_belongs_to_the_committed_checkpoint():
    assert checkpoint_sha256() == reference["checkpoint_sha256"], \
        "checkpoints/mini changed: refresh results/mini/regression.json (see the module docstring)"


def test_vanilla_is_a_trained_model():
    # the project's target for the mini model (checkpoints/mini/README.md: 97.8% on the first 1,000 test
    # questions); the per-type majority answer scores ~43%
    assert recorded("vanilla", 576)[0] >= 90.0


@pytest.mark.parametrize("method, budget", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_method_matches_recorded(method, budget, tmp_path):
    expected_accuracy, expected_answers = recorded(method, budget)
    accuracy, answers = mini_run(method, budget, reference["limit"], tmp_path)
    assert len(answers) == len(expected_answers) == reference["limit"]
    agreement = sum(a == b for a, b in zip(answers, expected_answers)) / len(answers)
    assert abs(accuracy - expected_accuracy) <= TOLERANCE, \
        f"{method} k={budget}: accuracy {accuracy:.2f} vs recorded {expected_accuracy:.2f}"
    assert agreement >= AGREEMENT, f"{method} k={budget}: {agreement:.1%} of answers as recorded"
