"""Every registered method at every budget on easy-VQA test with the trained ``mini`` model, through run.py's
runner; writes results/mini/accuracy.csv, accuracy.md and accuracy_vs_budget.png/pdf.
(harness/mini_eval.py).

    python scripts/eval_mini.py --limit 1000            # the committed table (first 1000 test questions)
    python scripts/eval_mini.py --limit 240 --budgets 64 16 --regression   # refresh the CI reference
"""
from __future__ import annotations

import argparse

from harness.mini_eval import run
from harness.mini_protocol import BUDGETS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", default=None, help="default: results/mini for the committed protocol (and "
                        "--regression), results/mini/_scratch/... otherwise")
    parser.add_argument("--regression", action="store_true")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
