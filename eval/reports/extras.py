"""Beyond the paper, from saved results only (no model): bootstrap confidence intervals, paired tests
against SVD-Prune, an accuracy-vs-compute Pareto plot, and pictures of the patches each method kept
(``scripts/report_extras.py`` is its command line).

ci: the cells of Table 1 (same run choice as scripts/make_table1.py). Per cell a 95% percentile bootstrap
  interval of the accuracy, resampling questions with replacement (--boot 10000 replicates, --seed 0). Per
  (dataset, budget) every method -- vanilla included -- against SVD-Prune on the questions both runs
  answered: difference in points (method - SVD-Prune) with a paired bootstrap 95% interval, and a two-sided
  test: exact McNemar for 0/1 scores (GQA), a sign-flip randomization test otherwise (TextVQA's VQA
  accuracy); p adjusted with Holm over all comparisons of one dataset. Per-question scores are recomputed
  with eval.scoring.score(scorer, prediction, answers).
pareto: accuracy vs compute per dataset, one point per Table 1 cell, the Pareto front drawn. Compute comes
  from results/efficiency/*.csv when such files give it (scripts/flops.py's flops.csv: <dataset>_total_T, i.e.
  paper-convention MACs with the dataset's real prompt length and per-layer token counts measured by running
  each method, else paper_total_T; or any CSV with method, budget and tmacs/tflops/gmacs/gflops/macs/flops;
  a cell without a value there is left out, not mixed with the formula), otherwise from the paper's Table 2 convention with
  n_text = 50 (svdprune.flops.paper_convention_tmacs, layer by layer with each run's image_tokens_per_layer_mean,
  so decoder-side methods pay for their full early layers). The plot says which.
patches: for a few questions (--questions, default the first --examples questions every chosen run
  answered), the padded-square 336 px image with the 24 x 24 patch grid; patches a method did not keep
  are darkened. Images come from the dataset (--dataset-config gqa|textvqa|local plus --dataset-path,
  --images-root for the image folder); for a local-format run the path in its metrics.json is the default.
  Methods that record no kept_indices (ToMe merges, pooling, the decoder-side ones) get a note instead.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from eval.reports.compute import (
    efficiency_lookup, paper_convention_tmacs, pareto_front, read_efficiency, run_image_tokens_per_layer,
)
from eval.reports.runs import (
    CONFIGS, DATASET_LABELS, DATASETS, GRID, METHODS, REFERENCE, VANILLA, ReportError, fmt, load_runs, method_info,
    single_model, table_cells,
)
from eval.reports.stats import bootstrap_mean_ci, holm, paired_comparison

def _write_csv(rows: list[dict], fields: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else "" if v is None else v)
                             for k, v in row.items()})


def _chosen(results: Path, model: str | None, configs: Path):
    """(dataset, method, budget) -> Run, Table 1's choice."""
    runs = single_model(load_runs(results), model)
    return {key: cell.run for key, cell in table_cells(runs, configs).items() if cell.run is not None}


def _order(method: str) -> int:
    return list(METHODS).index(method) if method in METHODS else len(METHODS)


# ------------------------------------------------------------------------------------------------- ci


def confidence(results: Path, tables: Path, model: str | None = None, configs: Path = CONFIGS,
               n_boot: int = 10_000, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``tables/table1_ci.{csv,md}`` and ``tables/paired_vs_svd.{csv,md}``; returns their rows."""
    chosen = _chosen(results, model, configs)
    scores = {key: run.scores() for key, run in chosen.items()}
    ci_rows = cell_intervals(chosen, scores, n_boot, seed)
    paired_rows = [row for dataset in sorted({k[0] for k in chosen})
                   for row in paired_vs_reference(chosen, scores, dataset, n_boot, seed)]
    _write_csv(ci_rows, CI_FIELDS, tables / "table1_ci.csv")
    _write_csv(paired_rows, PAIRED_FIELDS, tables / "paired_vs_svd.csv")
    (tables / "table1_ci.md").write_text(ci_markdown(ci_rows, n_boot, seed))
    (tables / "paired_vs_svd.md").write_text(paired_markdown(paired_rows))
    return ci_rows, paired_rows


CI_FIELDS = ["dataset", "budget", "method", "n", "accuracy", "ci_low", "ci_high", "metrics_accuracy", "run"]
PAIRED_FIELDS = ["dataset", "budget", "method", "vs", "n_paired", "accuracy", "accuracy_svd", "diff",
                 "diff_ci_low", "diff_ci_high", "test", "n_method_only", "n_svd_only", "p", "p_holm"]


def cell_intervals(chosen: dict, scores: dict, n_boot: int, seed: int) -> list[dict]:
    """Per Table 1 cell: accuracy from the per-question scores and its percentile bootstrap interval."""
    rows = []
    for (dataset, method, budget), run in sorted(chosen.items(), key=lambda kv: (kv[0][0], -kv[0][2], _order(kv[0][1]))):
        s = list(scores[(dataset, method, budget)].values())
        lo, hi = bootstrap_mean_ci(s, n_boot, seed) if s else (None, None)
        rows.append({"dataset": dataset, "budget": budget, "method": method, "n": len(s),
                     "accuracy": 100 * float(np.mean(s)) if s else None,
                     "ci_low": None if lo is None else 100 * lo, "ci_high": None if hi is None else 100 * hi,
                     "metrics_accuracy": run.accuracy, "run": str(run.path)})
    return rows


def paired_vs_reference(chosen: dict, scores: dict, dataset: str, n_boot: int, seed: int) -> list[dict]:
    """Every method of one dataset (vanilla: its 576 run) against SVD-Prune at each budget, Holm-adjusted
    over the dataset's comparisons."""
    family = []
    for budget in sorted({k[2] for k in chosen if k[0] == dataset and k[1] == REFERENCE}, reverse=True):
        ref = scores[(dataset, REFERENCE, budget)]
        others = [(m, b) for (d, m, b) in chosen if d == dataset and m != REFERENCE
                  and (b == budget or m == VANILLA)]
        for method, other_budget in sorted(others, key=lambda mb: _order(mb[0])):
            result = paired_comparison(scores[(dataset, method, other_budget)], ref, n_boot, seed)
            if result is None:
                continue
            family.append({"dataset": dataset, "budget": budget, "method": method, "vs": REFERENCE,
                           "n_paired": result.n, "accuracy": result.accuracy_a, "accuracy_svd": result.accuracy_b,
                           "diff": result.diff, "diff_ci_low": result.ci_low, "diff_ci_high": result.ci_high,
                           "test": result.test, "n_method_only": result.n10, "n_svd_only": result.n01,
                           "p": result.p})
    for row, adjusted in zip(family, holm([r["p"] for r in family])):
        row["p_holm"] = adjusted
    return family


def ci_markdown(ci_rows: list[dict], n_boot: int, seed: int) -> str:
    md = ["| Dataset | Budget | Method | n | Accuracy | 95% CI |", "|---|---|---|---|---|---|"]
    md += [f"| {DATASET_LABELS.get(r['dataset'], r['dataset'])} | {r['budget']} | {method_info(r['method']).label} | "
           f"{r['n']} | {fmt(r['accuracy'])} | [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] |" for r in ci_rows]
    md += ["", f"Percentile bootstrap over questions, {n_boot} replicates, seed {seed}; scores recomputed from "
               "predictions.jsonl with eval.scoring."]
    return "\n".join(md) + "\n"


def paired_markdown(paired_rows: list[dict]) -> str:
    md = ["| Dataset | Budget | Method | n paired | Method | SVD-Prune | Diff | 95% CI | Test | p | p (Holm) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {DATASET_LABELS.get(r['dataset'], r['dataset'])} | {r['budget']} | {method_info(r['method']).label} | "
           f"{r['n_paired']} | {fmt(r['accuracy'])} | {fmt(r['accuracy_svd'])} | {fmt(r['diff'], signed=True)} | "
           f"[{fmt(r['diff_ci_low'], signed=True)}, {fmt(r['diff_ci_high'], signed=True)}] | {r['test']} | "
           f"{r['p']:.3g} | {r['p_holm']:.3g} |" for r in paired_rows]
    md += ["", "Diff = method - SVD-Prune in points on the questions both runs answered (vanilla: its 576-token run "
               "against SVD-Prune at each budget). CI: paired bootstrap over questions. Test: exact McNemar "
               "(0/1 scores) or sign-flip randomization; Holm adjustment over each dataset's comparisons."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------- pareto


def pareto(results: Path, tables: Path, figures: Path, model: str | None = None, configs: Path = CONFIGS,
           efficiency: Path | None = None, n_text: int = 50) -> tuple[list[dict], str]:
    """``tables/pareto.csv`` and ``figures/pareto.{png,pdf}``; returns the rows and where compute came from."""
    chosen = _chosen(results, model, configs)
    measured = read_efficiency(efficiency if efficiency is not None else results / "efficiency")
    rows, source = pareto_rows(chosen, measured, n_text)
    _write_csv(rows, ["dataset", "method", "budget", "accuracy", "compute_t", "on_front", "source"], tables / "pareto.csv")
    plot_pareto(rows, source, measured is not None, figures)
    return rows, source


def pareto_rows(chosen: dict, measured, n_text: int) -> tuple[list[dict], str]:
    """One row per Table 1 cell with its compute (measured, else the paper's convention) and whether it is on
    its dataset's Pareto front; sorted by dataset, then compute."""
    source = measured[1] if measured else f"paper convention (Table 2 MACs formula, n_text = {n_text})"
    rows = []
    for (dataset, method, budget), run in chosen.items():
        compute = None
        if measured:
            compute = efficiency_lookup(measured[0], dataset, method, budget)
        else:
            compute = paper_convention_tmacs(run_image_tokens_per_layer(run), n_text)
        rows.append({"dataset": dataset, "method": method, "budget": budget, "accuracy": run.accuracy,
                     "compute_t": compute, "source": source, "on_front": False})
    for dataset in {r["dataset"] for r in rows}:
        pts = [r for r in rows if r["dataset"] == dataset and r["compute_t"] is not None]
        for i in pareto_front([(r["compute_t"], r["accuracy"]) for r in pts]):
            pts[i]["on_front"] = True
    rows.sort(key=lambda r: (r["dataset"], r["compute_t"] if r["compute_t"] is not None else float("inf"), r["method"]))
    return rows, source


def plot_pareto(rows: list[dict], source: str, measured: bool, figures: Path) -> None:
    """One panel per dataset: a point per cell (labelled with its budget), the front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)] or sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.6 * max(1, len(datasets)) + 1.6, 4.2),
                             squeeze=False)
    methods = sorted({r["method"] for r in rows}, key=_order)
    style = _method_styles(methods, plt)
    for ax, dataset in zip(axes[0], datasets or [None]):
        pts = [r for r in rows if r["dataset"] == dataset and r["compute_t"] is not None]
        for method in methods:
            mine = [r for r in pts if r["method"] == method]
            if mine:
                ax.scatter([r["compute_t"] for r in mine], [r["accuracy"] for r in mine], s=24,
                           label=method_info(method).label, **style[method])
                for r in mine:
                    ax.annotate(str(r["budget"]), (r["compute_t"], r["accuracy"]), fontsize=5,
                                xytext=(3, 2), textcoords="offset points", color="dimgray")
        front = sorted((r for r in pts if r["on_front"]), key=lambda r: r["compute_t"])
        if front:
            ax.step([r["compute_t"] for r in front], [r["accuracy"] for r in front], where="post", color="k",
                    lw=0.8, alpha=0.6, label="Pareto front")
        ax.set_xlabel("compute per sample (T MACs)" if not measured else "compute per sample (T, from efficiency CSV)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(DATASET_LABELS.get(dataset, str(dataset)), fontsize=10)
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no runs with compute", transform=ax.transAxes, ha="center", color="gray")
    _shared_legend(fig, axes)
    fig.suptitle(f"Accuracy vs compute (labels: budget); compute: {source}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    figures.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(figures / f"pareto.{ext}", dpi=150)
    plt.close(fig)


def _shared_legend(fig, axes) -> None:
    """One legend for every panel, right of them."""
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center right", frameon=False)
        fig.subplots_adjust(right=0.8)


def _method_styles(methods: list[str], plt) -> dict[str, dict]:
    """A fixed colour and marker per method (same in every panel)."""
    markers = "os^vD<>pPX*hH"
    cmap = plt.get_cmap("tab20")
    known = list(METHODS)
    styles = {}
    for m in methods:
        i = known.index(m) if m in known else len(known) + sorted(set(methods) - set(known)).index(m)
        styles[m] = {"color": cmap(i % 20), "marker": markers[i % len(markers)]}
    return styles


# -------------------------------------------------------------------------------------------- patches

PAD_COLOUR = (122, 116, 104)  # CLIP mean, LLaVA's pad colour
IMAGE_SIZE = 336


def padded_square(image, size: int = IMAGE_SIZE):
    """The image as LLaVA-1.5 sees it: padded to a square with the CLIP mean colour, resized to 336."""
    from PIL import Image

    from svdprune.prompts import expand_to_square

    return expand_to_square(image.convert("RGB"), PAD_COLOUR).resize((size, size), resample=Image.BICUBIC)


def kept_mask(indices, grid: int = GRID) -> np.ndarray:
    """(grid, grid) bool: True at the raster indices kept (row = i // grid, column = i % grid)."""
    mask = np.zeros(grid * grid, dtype=bool)
    idx = np.asarray(list(indices), dtype=int)
    if idx.size and (idx.min() < 0 or idx.max() >= grid * grid):
        raise ValueError(f"kept_indices outside 0..{grid * grid - 1}")
    mask[idx] = True
    return mask.reshape(grid, grid)


def overlay(image_rgb: np.ndarray, indices, grid: int = GRID, dim: float = 0.3) -> np.ndarray:
    """The image (H, W, 3 uint8, H = W divisible by grid) with the patches not kept darkened to ``dim``."""
    size = image_rgb.shape[0]
    cell = size // grid
    factor = np.where(kept_mask(indices, grid), 1.0, dim)
    factor = np.kron(factor, np.ones((cell, cell)))[..., None]
    return (image_rgb.astype(float) * factor).round().astype(np.uint8)


def _printable(text: str) -> str:
    """Text safe for a figure label (no control characters, ASCII-ish glyphs)."""
    return "".join(c if c.isprintable() and ord(c) < 0x2500 else "?" for c in text)


def _dataset_records(dataset_config: str | None, dataset_path: str | None, images_root: str | None,
                     configs: Path, fallback_path: str | None):
    """question_id -> Record, from the project's dataset loaders (questions and lazy images)."""
    from omegaconf import OmegaConf

    from eval.datasets import load_dataset

    name = dataset_config
    path = dataset_path or fallback_path
    if name is None or path is None:
        return {}
    cfg_file = Path(configs) / "dataset" / f"{name}.yaml"
    cfg = OmegaConf.load(cfg_file) if cfg_file.is_file() else OmegaConf.create({"name": name})
    cfg.path = path
    if images_root:
        cfg.image_folder = images_root
    if "expect_full" in cfg:
        cfg.expect_full = False  # a picture needs only the questions shown
    return {r.question_id: r for r in load_dataset(cfg).records}


def patches(results: Path, figures: Path, dataset: str | None = None, budget: int = 64,
            methods: list[str] | None = None, questions: list[str] | None = None, examples: int = 3,
            dataset_config: str | None = None, dataset_path: str | None = None, images_root: str | None = None,
            model: str | None = None, configs: Path = CONFIGS) -> Path:
    """``figures/kept_patches.{png,pdf}``: a row per question, a column per method; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.datasets import load_image

    dataset, runs = _patch_runs(_chosen(results, model, configs), results, dataset, budget, methods)
    order = sorted(runs, key=lambda m: (m != REFERENCE, _order(m), m))
    predictions = {m: {str(p["question_id"]): p for p in runs[m].predictions()} for m in order}
    if not questions:
        first = [str(p["question_id"]) for p in runs[order[0]].predictions()]
        questions = [q for q in first if all(q in predictions[m] for m in order)][:examples]
    if not questions:
        raise ReportError("no question answered by every chosen run; pass --questions")

    fallback = None
    if dataset_config is None and runs[order[0]].metrics.get("dataset") == "local":
        dataset_config = "local"
    if dataset_path is None:
        fallback = (runs[order[0]].metrics.get("dataset_info") or {}).get("path")
    records = _dataset_records(dataset_config or dataset, dataset_path, images_root, configs, fallback)

    fig, axes = plt.subplots(len(questions), len(order), figsize=(2.3 * len(order), 2.5 * len(questions)),
                             squeeze=False)
    for row, qid in enumerate(questions):
        record = records.get(qid)
        base = None
        if record is not None:
            base = np.asarray(padded_square(load_image(record)))
        for col, method in enumerate(order):
            ax = axes[row][col]
            _draw_patches(ax, base, method, predictions[method].get(qid, {}))
            if row == 0:
                ax.set_title(f"{method_info(method).label}", fontsize=9)
            if col == 0:
                label = qid if record is None else f"{qid}\n{_printable(record.question)[:40]}"
                ax.set_ylabel(label + ("" if base is not None else "\n(image not available)"), fontsize=7)
    fig.suptitle(f"Patches kept at k = {budget} ({DATASET_LABELS.get(dataset, dataset)}); darkened = pruned",
                 fontsize=9)
    fig.tight_layout()
    figures.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(figures / f"kept_patches.{ext}", dpi=150)
    plt.close(fig)
    return figures / "kept_patches.png"


def _patch_runs(chosen: dict, results: Path, dataset: str | None, budget: int,
                methods: list[str] | None) -> tuple[str, dict]:
    """(dataset, method -> Table 1's run at the budget): the dataset given, else GQA's, TextVQA's or the
    first other dataset with runs at the budget."""
    if dataset is None:
        found = sorted({d for d, _, b in chosen if b == budget}, key=lambda d: (d not in DATASETS, d))
        if not found:
            raise ReportError(f"no runs at budget {budget} in {results}")
        dataset = found[0]
    runs = {m: run for (d, m, b), run in chosen.items() if d == dataset and b == budget and (not methods or m in methods)}
    if not runs:
        raise ReportError(f"no runs for dataset {dataset!r} at budget {budget} in {results}")
    return dataset, runs


def _draw_patches(ax, base: np.ndarray | None, method: str, prediction: dict) -> None:
    """One panel: the image (or the pad colour) with the patches the method did not keep darkened, the patch
    grid, and the prediction; a note where the method records no kept_indices."""
    ax.set_xticks([])
    ax.set_yticks([])
    image = base if base is not None else np.full((IMAGE_SIZE, IMAGE_SIZE, 3), PAD_COLOUR, dtype=np.uint8)
    kept = prediction.get("kept_indices")
    if kept is not None and all(isinstance(i, int) for i in kept):
        ax.imshow(overlay(image, kept))
        note = f"{len(kept)} kept"
    else:
        ax.imshow(image)
        note = "no kept_indices recorded" if method_info(method).side != "decoder" else "prunes inside the LLM"
        ax.text(IMAGE_SIZE / 2, IMAGE_SIZE / 2, note, ha="center", va="center", fontsize=7, color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "lw": 0})
    for k in range(1, GRID):  # the 24 x 24 patch grid
        ax.axhline(k * IMAGE_SIZE / GRID - 0.5, color="white", lw=0.15, alpha=0.5)
        ax.axvline(k * IMAGE_SIZE / GRID - 0.5, color="white", lw=0.15, alpha=0.5)
    text = _printable(str(prediction.get("prediction", "")))
    ax.set_xlabel(f"{note}; pred: {text[:18]}",
                  fontsize=6)
