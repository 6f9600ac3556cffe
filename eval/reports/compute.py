"""Compute per run for the reports: the paper's convention (svdprune.flops, the one FLOPs model) layer by layer
with a run's own token counts, or what results/efficiency/*.csv measured."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from eval.reports.runs import Run


# ------------------------------------------------------------------------------------------- compute

LLM_LAYERS = 32  # LLaVA-1.5-7B (svdprune.flops.LLAVA15_7B.text_layers)


def paper_convention_tmacs(image_tokens_per_layer: Sequence[float], n_text: int = 50) -> float:
    """:func:`svdprune.flops.paper_convention_tmacs`, imported on first use: svdprune.flops imports torch, which
    reading results/ (``run.py sweep-status``, the report scripts' run readers) need not pay."""
    from svdprune.flops import paper_convention_tmacs as formula

    return formula(image_tokens_per_layer, n_text)


def run_image_tokens_per_layer(run: Run) -> list[float]:
    """metrics.json's image_tokens_per_layer_mean; a run without it counts its budget in all 32 layers."""
    per_layer = run.metrics.get("image_tokens_per_layer_mean")
    return list(per_layer) if per_layer else [float(run.budget)] * LLM_LAYERS


# results/efficiency/*.csv: rows with columns method and budget, and compute in T (or scaled) per sample.
# Preference, per dataset: "<dataset>_total_T" (scripts/flops.py: paper-convention MACs with that dataset's real
# prompt length and the per-layer token counts measured by running the method), then "paper_total_T" (same
# with n_text = 50), then a generic column (first present of GENERIC_COMPUTE_COLUMNS, scaled to T).
GENERIC_COMPUTE_COLUMNS = {"paper_total_t": 1.0, "tmacs": 1.0, "total_tmacs": 1.0, "tflops": 1.0,
                           "total_tflops": 1.0, "gmacs": 1e-3, "total_gmacs": 1e-3, "gflops": 1e-3,
                           "total_gflops": 1e-3, "macs": 1e-12, "flops": 1e-12}


def _dataset_compute_columns(header: list[str]) -> dict[str, str]:
    """{dataset: column} for columns named <dataset>_total_t (not paper_/true_ ones)."""
    out = {}
    for h in header:
        if h.endswith("_total_t"):
            prefix = h[: -len("_total_t")]
            if prefix and prefix != "paper" and not prefix.startswith("true"):
                out[prefix] = h
    return out


def read_efficiency(folder: Path | str) -> tuple[dict[tuple[str | None, str, int], float], str] | None:
    """Compute (T per sample) per (dataset, method, budget) -- dataset None for a column valid for every
    dataset -- from ``folder/*.csv``, and a description of the columns used; None when no CSV there has
    columns method, budget and a compute column (see above)."""
    found: dict[tuple[str | None, str, int], float] = {}
    used: list[str] = []
    for path in sorted(Path(folder).glob("*.csv")):
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            original = {h.strip().lower(): h for h in (reader.fieldnames or [])}
            if "method" not in original or "budget" not in original:
                continue
            per_dataset = _dataset_compute_columns(list(original))
            generic = next((c for c in GENERIC_COMPUTE_COLUMNS if c in original), None)
            columns = [(d, c, 1.0) for d, c in per_dataset.items()]
            if generic:
                columns.append((None, generic, GENERIC_COMPUTE_COLUMNS[generic]))
            hits = set()
            for row in reader:
                try:
                    budget = int(float(row[original["budget"]]))
                except (TypeError, ValueError):
                    continue
                method = (row[original["method"]] or "").strip()
                for dataset, column, scale in columns:
                    try:
                        value = float(row[original[column]]) * scale
                    except (TypeError, ValueError):
                        continue
                    found[(dataset, method, budget)] = value
                    hits.add(original[column])
            used += [f"{path.name}:{c}" for c in sorted(hits)]
    if not found:
        return None
    return found, "measured: " + ", ".join(used)


def efficiency_lookup(table: dict[tuple[str | None, str, int], float], dataset: str, method: str,
                      budget: int) -> float | None:
    """The dataset's own column first, then the dataset-independent one."""
    value = table.get((dataset, method, budget))
    return value if value is not None else table.get((None, method, budget))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another (less or equal compute and more or equal accuracy,
    one of them strictly), sorted by compute."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


