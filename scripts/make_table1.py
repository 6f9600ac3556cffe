"""Table 1 of SVD-Prune from results/: accuracy per method x budget x dataset, drop vs vanilla, the paper's
reported numbers side by side and the difference (eval/reports/table1.py).

    python scripts/make_table1.py                      # results/ -> results/tables/table1.{md,csv,tex}
    python scripts/make_table1.py --model llava-hf/llava-1.5-7b-hf --results results --out results/tables
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.reports import BUDGETS, CONFIGS, DATASETS, PAPER_NUMBERS, ReportError
from eval.reports.table1 import write_table1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <results>/tables)")
    parser.add_argument("--paper", type=Path, default=PAPER_NUMBERS, help="the paper's numbers (CSV)")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="configs/ (method defaults)")
    parser.add_argument("--model", default=None, help="only runs of this model (metrics.json 'model')")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="default: gqa textvqa")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS), help="default: 192 128 64 32 16")
    args = parser.parse_args(argv)
    try:
        print(write_table1(args.results, args.out or args.results / "tables", args.paper, args.model, args.configs,
                           args.budgets, args.datasets))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
