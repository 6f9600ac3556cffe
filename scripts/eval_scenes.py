"""Every method at every budget on the scenes benchmark with the trained ``scenes`` model, through run.py's
runner: accuracy and evidence recall side by side (results/scenes/accuracy.{csv,md},
accuracy_recall_vs_budget.{png,pdf}), the tau ablation (tau.{csv,md,png}) and the CI regression reference.
(harness/scenes_eval.py).

    python scripts/eval_scenes.py --limit 230                        # the committed table (first 230 test questions)
    python scripts/eval_scenes.py --tau --limit 230                  # the committed tau ablation (Fig. 3's sweep)
    python scripts/eval_scenes.py --limit 92 --budgets 64 16 --regression   # refresh the regression reference
    python scripts/eval_scenes.py --limit 92 --budgets 64 16 --regression-variant  # on a CPU with AVX-512
        # adds the cases whose answers differ under these kernels (harness/regression.py)
"""
from __future__ import annotations

import argparse

from harness.scenes_eval import TAU_BUDGETS, TAUS, run
from harness.scenes_protocol import BUDGETS, ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=460)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "scenes"))
    parser.add_argument("--regression", action="store_true")
    parser.add_argument("--regression-variant", action="store_true",
                        help="add to regression.json the cases whose answers differ under this CPU's kernels")
    parser.add_argument("--tau", action="store_true", help="the tau ablation instead of the method table")
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS), help="--tau: the tau values")
    parser.add_argument("--tau-budgets", type=int, nargs="+", default=list(TAU_BUDGETS), help="--tau: the budgets")
    args = parser.parse_args()
    return run(args)


if __name__ == "__main__":
    main()
