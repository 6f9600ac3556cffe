"""CI regression on the trained mini model (checkpoints/mini) and real easy-VQA test questions.

Each method at a few budgets must stay within TOLERANCE accuracy points of the value recorded in
results/mini/regression.json (written by ``python scripts/eval_mini.py --limit 240 --budgets 64 16 --regression``)
and give the recorded answer to at least AGREEMENT of the questions. The answer check is the sharper one: a
broken selection that happens to keep accuracy (several token sets can answer an easy question) still changes
which answers come out (harness/regression.py).
"""
import pytest

from harness.mini_protocol import MINI_WEIGHTS, ROOT, checkpoint_sha256, mini_run
from harness.regression import cases, load_reference, mismatch, recorded

REFERENCE = ROOT / "results" / "mini" / "regression.json"
TOLERANCE = 2.5  # accuracy points; the run is deterministic on one machine, this absorbs BLAS differences
AGREEMENT = 0.97  # share of questions answered as recorded

if not REFERENCE.exists() or not MINI_WEIGHTS.exists():
    pytest.skip("the mini checkpoint or its regression reference is not in this checkout", allow_module_level=True)

reference = load_reference(REFERENCE)
CASES = cases(reference)


def test_reference_belongs_to_the_committed_checkpoint():
    assert checkpoint_sha256() == reference["checkpoint_sha256"], \
        "checkpoints/mini changed: refresh results/mini/regression.json (see the module docstring)"


def test_vanilla_is_a_trained_model():
    # the project's target for the mini model (checkpoints/mini/README.md: 97.8% on the first 1,000 test
    # questions); the per-type majority answer scores ~43%
    assert recorded(reference, "vanilla", 576)[0] >= 90.0


@pytest.mark.parametrize("method, budget", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_method_matches_recorded(method, budget, tmp_path):
    accuracy, answers = mini_run(method, budget, reference["limit"], tmp_path)
    failure = mismatch(reference, method, budget, accuracy, answers, TOLERANCE, AGREEMENT)
    assert failure is None, failure
