"""Fig. 3 of SVD-Prune from results/: accuracy vs the energy threshold tau, one line per budget, and the
distribution of the rank r that tau chose (the ``rank`` field of predictions.jsonl).

``scripts/plot_tau.py`` is its command line (the runs: ``python run.py -m experiment=tau_ablation``).

Runs used: method svd on --dataset (default gqa), every budget found (or --budgets), with all parameters
except tau at their configs/method/svd.yaml defaults; several runs for one (budget, tau): the one with the
largest n (then lowest seed, then run_name). The paper's values at tau = 0.9 (its Sec. 4.5) are drawn as
open markers. r does not depend on the budget: for each tau the rank distribution is taken from the run
with the most rank values (one value per question, so images count once per question asked about them).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from eval.reports.runs import (
    CONFIGS, DATASET_LABELS, PAPER_NUMBERS, REFERENCE, ReportError, Run, canonical, choose_run, load_runs,
    read_paper_numbers, single_model,
)


def tau_runs(results: Path, dataset: str = "gqa", model: str | None = None, configs: Path = CONFIGS,
             budgets: list[int] | None = None) -> dict[tuple[int, float], Run]:
    """(budget, tau) -> chosen run of SVD-Prune whose other parameters are the defaults."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(Path(configs) / "method" / f"{REFERENCE}.yaml").params)
    others = {k: v for k, v in defaults.items() if k != "tau"}
    runs = single_model([r for r in load_runs(results) if r.dataset == dataset and r.method == REFERENCE], model)
    groups: dict[tuple[int, float], list] = {}
    for run in runs:
        params = dict(run.params)
        tau = params.pop("tau", defaults.get("tau"))
        if canonical(params) != canonical(others) or tau is None:
            continue
        if budgets and run.budget not in budgets:
            continue
        groups.setdefault((run.budget, round(float(tau), 6)), []).append(run)
    return {key: choose_run(group) for key, group in sorted(groups.items())}


def rank_stats(ranks: list[int]) -> dict:
    r = np.asarray(ranks, dtype=float)
    return {"rank_n": int(r.size), "rank_mean": float(r.mean()), "rank_median": float(np.median(r)),
            "rank_p05": float(np.percentile(r, 5)), "rank_p95": float(np.percentile(r, 95)),
            "rank_min": int(r.min()), "rank_max": int(r.max())}


def collect(results: Path, dataset: str = "gqa", model: str | None = None, configs: Path = CONFIGS,
            budgets: list[int] | None = None):
    """(rows for tau_ablation.csv, tau -> list of ranks)."""
    chosen = tau_runs(results, dataset, model, configs, budgets)
    rows = []
    for (budget, tau), run in chosen.items():
        ranks = [int(p["rank"]) for p in run.predictions() if p.get("rank") is not None]
        row = {"dataset": dataset, "budget": budget, "tau": tau, "accuracy": run.accuracy, "n": run.n,
               "run": str(run.path)}
        row.update(rank_stats(ranks) if ranks else {})
        rows.append(row)
    rank_source: dict[float, list[int]] = {}  # per tau, the run with the most rank values (ties: lower budget)
    for (budget, tau), run in chosen.items():
        ranks = [int(p["rank"]) for p in run.predictions() if p.get("rank") is not None]
        if ranks and len(ranks) > len(rank_source.get(tau, [])):
            rank_source[tau] = ranks
    return rows, dict(sorted(rank_source.items()))


FIELDS = ["dataset", "budget", "tau", "accuracy", "n", "rank_n", "rank_mean", "rank_median", "rank_p05",
          "rank_p95", "rank_min", "rank_max", "run"]


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def plot(rows: list[dict], ranks: dict[float, list[int]], paper_csv: Path, dataset: str, figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    written = []
    paper = [p for p in read_paper_numbers(paper_csv) if p.table == "fig3" and p.dataset == dataset
             and p.accuracy is not None and p.budget is not None]
    budgets = sorted({r["budget"] for r in rows} | {p.budget for p in paper}, reverse=True)
    colors = {b: plt.cm.viridis(i / max(1, len(budgets) - 1)) for i, b in enumerate(budgets)}

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for budget in budgets:
        line = sorted((r["tau"], r["accuracy"]) for r in rows if r["budget"] == budget)
        if line:
            ax.plot(*zip(*line), marker="o", ms=4, color=colors[budget], label=f"k = {budget} (ours)")
        for p in paper:
            if p.budget == budget:
                ax.plot([p.tau], [p.accuracy], marker="o", ms=8, mfc="none", ls="none", color=colors[budget],
                        label=f"k = {budget} (paper, tau = {p.tau:g})")
    ax.set_xlabel(r"energy threshold $\tau$")
    ax.set_ylabel(f"{DATASET_LABELS.get(dataset, dataset)} accuracy (%)")
    ax.set_title(r"SVD-Prune: accuracy vs $\tau$ (cf. paper Fig. 3)", fontsize=10)
    ax.grid(alpha=0.3)
    if rows or paper:
        ax.legend(fontsize=7, loc="best")
    if not rows:
        ax.text(0.5, 0.5, "no tau-ablation runs in results/", transform=ax.transAxes, ha="center", color="gray")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(figures / f"fig3_tau.{ext}", dpi=150)
        written.append(figures / f"fig3_tau.{ext}")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    if ranks:
        taus = list(ranks)
        ax.boxplot([ranks[t] for t in taus], positions=range(len(taus)), widths=0.6, showfliers=True,
                   flierprops={"markersize": 2})
        ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    else:
        ax.text(0.5, 0.5, "no 'rank' values in predictions.jsonl", transform=ax.transAxes, ha="center", color="gray")
    ax.set_xlabel(r"energy threshold $\tau$")
    ax.set_ylabel("chosen rank r (per question)")
    ax.set_title("SVD-Prune: rank r chosen by tau", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(figures / f"tau_rank.{ext}", dpi=150)
        written.append(figures / f"tau_rank.{ext}")
    plt.close(fig)
    return written


def write_tau_ablation(results: Path, figures: Path, tables: Path, dataset: str = "gqa", budgets=None,
                       model: str | None = None, paper_csv: Path = PAPER_NUMBERS, configs: Path = CONFIGS) -> str:
    """``tables/tau_ablation.csv`` and the two figures; returns the line to print. :class:`ReportError` when
    there is nothing to plot (then nothing is written)."""
    rows, ranks = collect(results, dataset, model, configs, budgets)
    if not rows:
        raise ReportError(f"no SVD-Prune runs with default parameters except tau for dataset {dataset} in "
                          f"{results}" + (f" (model {model}, budgets {budgets})" if model or budgets else "")
                          + "; nothing written (python run.py -m experiment=tau_ablation)")
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(rows, tables / "tau_ablation.csv")
    written = plot(rows, ranks, paper_csv, dataset, figures)
    return (f"tau ablation: {len(rows)} (budget, tau) runs -> {tables / 'tau_ablation.csv'}, "
            + ", ".join(str(p) for p in written))
