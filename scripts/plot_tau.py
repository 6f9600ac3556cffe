"""Fig. 3 of SVD-Prune from results/: accuracy vs the energy threshold tau, one line per budget, and the
distribution of the rank r that tau chose (eval/reports/tau.py says which runs it uses).

    python run.py -m experiment=tau_ablation       # the runs (configs/experiment/tau_ablation.yaml)
    python scripts/plot_tau.py                     # -> results/figures/fig3_tau.{png,pdf},
                                                   #    results/figures/tau_rank.{png,pdf},
                                                   #    results/tables/tau_ablation.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.reports import CONFIGS, PAPER_NUMBERS, ReportError
from eval.reports.tau import write_tau_ablation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--figures", type=Path, default=None, help="default <results>/figures")
    parser.add_argument("--tables", type=Path, default=None, help="default <results>/tables")
    parser.add_argument("--dataset", default="gqa")
    parser.add_argument("--budgets", type=int, nargs="*", default=None, help="default: every budget found")
    parser.add_argument("--model", default=None)
    parser.add_argument("--paper", type=Path, default=PAPER_NUMBERS)
    parser.add_argument("--configs", type=Path, default=CONFIGS)
    args = parser.parse_args(argv)
    try:
        print(write_tau_ablation(args.results, args.figures or args.results / "figures",
                                 args.tables or args.results / "tables", args.dataset, args.budgets, args.model,
                                 args.paper, args.configs))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
