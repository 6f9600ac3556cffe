"""Reports from ``results/``, no model and no GPU: everything works from the saved ``metrics.json`` /
``predictions.jsonl`` files.

- :mod:`eval.reports.runs`: reading runs and choosing the one per table cell, the paper's numbers;
- :mod:`eval.reports.stats`: bootstrap confidence intervals, exact paired tests, Holm;
- :mod:`eval.reports.compute`: compute per run (the paper's convention of :mod:`svdprune.flops`, or measured);
- :mod:`eval.reports.table1`, :mod:`eval.reports.tau`, :mod:`eval.reports.extras`: Table 1, Fig. 3 and the
  extras (confidence intervals, paired tests, Pareto plot, kept patches) that ``scripts/`` write.

The names of the first three are importable from the package itself.
"""
from eval.reports.runs import (
    REPO, CONFIGS, PAPER_NUMBERS, BUDGETS, DATASETS, DATASET_LABELS, VANILLA, REFERENCE, GRID, ReportError,
    MethodInfo, METHODS, method_info, read_jsonl, Run, REQUIRED_METRICS, read_metrics, load_runs, canonical,
    default_params, choose_run, single_model, check_one_version, Cell, table_cells, PaperNumber,
    read_paper_numbers, paper_table1, fmt,
)
from eval.reports.stats import (
    bootstrap_mean_ci, binomial_two_sided_p, mcnemar_exact, sign_flip_p, holm, PairedResult, paired_comparison,
)
from eval.reports.compute import (
    run_image_tokens_per_layer, GENERIC_COMPUTE_COLUMNS, read_efficiency, efficiency_lookup, pareto_front,
    paper_convention_tmacs,
)

__all__ = [
    "REPO",
    "CONFIGS",
    "PAPER_NUMBERS",
    "BUDGETS",
    "DATASETS",
    "DATASET_LABELS",
    "VANILLA",
    "REFERENCE",
    "GRID",
    "ReportError",
    "MethodInfo",
    "METHODS",
    "method_info",
    "read_jsonl",
    "Run",
    "REQUIRED_METRICS",
    "read_metrics",
    "load_runs",
    "canonical",
    "default_params",
    "choose_run",
    "single_model",
    "check_one_version",
    "Cell",
    "table_cells",
    "PaperNumber",
    "read_paper_numbers",
    "paper_table1",
    "fmt",
    "bootstrap_mean_ci",
    "binomial_two_sided_p",
    "mcnemar_exact",
    "sign_flip_p",
    "holm",
    "PairedResult",
    "paired_comparison",
    "run_image_tokens_per_layer",
    "GENERIC_COMPUTE_COLUMNS",
    "read_efficiency",
    "efficiency_lookup",
    "pareto_front",
    "paper_convention_tmacs",
]
