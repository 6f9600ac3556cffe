"""Beyond the paper, from saved results only (no model): bootstrap confidence intervals, paired tests
against SVD-Prune, an accuracy-vs-compute Pareto plot, and pictures of the patches each method kept
(eval/reports/extras.py says how each is computed).

    python scripts/report_extras.py ci        # results/tables/table1_ci.{csv,md}, paired_vs_svd.{csv,md}
    python scripts/report_extras.py pareto    # results/figures/pareto.{png,pdf}, results/tables/pareto.csv
    python scripts/report_extras.py patches --dataset-config gqa --dataset-path data/gqa --budget 64
                                              # results/figures/kept_patches.{png,pdf}
    python scripts/report_extras.py all       # the three (patches with the options given, if any)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.reports import CONFIGS, ReportError
from eval.reports.extras import confidence, pareto, patches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ci", "pareto", "patches", "all"])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--tables", type=Path, default=None, help="default <results>/tables")
    parser.add_argument("--figures", type=Path, default=None, help="default <results>/figures")
    parser.add_argument("--model", default=None, help="only runs of this model (metrics.json 'model')")
    parser.add_argument("--configs", type=Path, default=CONFIGS)
    parser.add_argument("--boot", type=int, default=10_000, help="bootstrap / randomization replicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--efficiency", type=Path, default=None, help="default <results>/efficiency")
    parser.add_argument("--n-text", type=int, default=50, help="text tokens in the paper-convention formula")
    parser.add_argument("--budget", type=int, default=64, help="patches: the budget shown")
    parser.add_argument("--dataset", default=None, help="patches: results dataset (default: gqa if present)")
    parser.add_argument("--methods", nargs="*", default=None, help="patches: methods (default: every run)")
    parser.add_argument("--questions", nargs="*", default=None, help="patches: question ids")
    parser.add_argument("--examples", type=int, default=3, help="patches: number of questions by default")
    parser.add_argument("--dataset-config", default=None, help="patches: configs/dataset/<name>.yaml to load")
    parser.add_argument("--dataset-path", default=None, help="patches: the dataset's path (dataset.path)")
    parser.add_argument("--images-root", default=None, help="patches: image folder (dataset.image_folder)")
    args = parser.parse_args(argv)
    tables = args.tables or args.results / "tables"
    figures = args.figures or args.results / "figures"
    try:
        if args.what in ("ci", "all"):
            ci_rows, paired_rows = confidence(args.results, tables, args.model, args.configs, args.boot, args.seed)
            print(f"ci: {len(ci_rows)} cells, {len(paired_rows)} paired comparisons -> {tables}")
        if args.what in ("pareto", "all"):
            rows, source = pareto(args.results, tables, figures, args.model, args.configs, args.efficiency, args.n_text)
            print(f"pareto: {len(rows)} points, compute from {source} -> {figures / 'pareto.png'}")
        if args.what in ("patches", "all"):
            path = patches(args.results, figures, args.dataset, args.budget, args.methods, args.questions,
                           args.examples, args.dataset_config, args.dataset_path, args.images_root, args.model,
                           args.configs)
            print(f"patches -> {path}")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
