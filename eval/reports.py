"""Reading ``results/`` and the statistics behind the report scripts (``scripts/make_table1.py``,
``scripts/plot_tau.py``, ``scripts/report_extras.py``). No model, no GPU: everything here works from the
saved ``metrics.json`` / ``predictions.jsonl`` files.

Which run fills a table cell (:func:`choose_run`)
    Eligible: runs of that dataset, method and budget (``metrics.json``'s ``budget``; vanilla's is 576) whose
    ``method_params`` equal the defaults in ``configs/method/<name>.yaml`` (so ablation runs such as
    SVD-Prune at tau = 0.5 never stand in for the method), of one model (``--model``; an error if results/
    holds several and none is chosen). Among those: the largest ``n``, then the lowest ``seed``, then the
    smallest ``run_name``, then the smallest ``config_hash``. A method without a config file has no
    defaults: all its runs are eligible.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from eval.predictions import CorruptPredictions, read_prediction_rows

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")

BUDGETS = (192, 128, 64, 32, 16)
DATASETS = ("gqa", "textvqa")
DATASET_LABELS = {"gqa": "GQA", "textvqa": "TextVQA"}
VANILLA = "vanilla"
REFERENCE = "svd"  # the method every other one is tested against
GRID = 24  # LLaVA-1.5: 336 px / 14 px patches -> 24 x 24 raster (kept_indices are raster indices)


class ReportError(Exception):
    """A problem with the inputs of a report (one line, shown to the user without a traceback)."""


@dataclass(frozen=True)
class MethodInfo:
    label: str
    side: str  # "none" (vanilla), "encoder" or "decoder"
    in_paper: bool  # a row of the paper's Table 1


class _RegisteredMethods(Mapping):
    """Every registered method as the reports show it, in Table 1's row order (each method's ``table_row``: vanilla,
    encoder-side (the paper's, then the extras, SVD-Prune last), decoder-side): what the method classes declare
    (svdprune/pruning.py's registry), not a list kept here. Read on first use: the registry imports every method
    module (and torch), which importing this module for its run readers need not pay."""

    def __init__(self):
        self._methods: dict[str, MethodInfo] | None = None

    def _load(self) -> dict[str, MethodInfo]:
        if self._methods is None:
            from svdprune.pruning import METHODS as REGISTRY

            self._methods = {cls.name: MethodInfo(cls.label, cls.kind, cls.in_paper)
                             for cls in sorted(REGISTRY.values(), key=lambda cls: cls.table_row)}
        return self._methods

    def __getitem__(self, name: str) -> MethodInfo:
        return self._load()[name]

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


METHODS: Mapping[str, MethodInfo] = _RegisteredMethods()


def method_info(name: str, kind: str | None = None) -> MethodInfo:
    """Known methods from :data:`METHODS`; an unknown one is labelled by its name, side from metrics.json."""
    if name in METHODS:
        return METHODS[name]
    side = kind if kind in ("encoder", "decoder") else "encoder"
    return MethodInfo(name, side, False)


# ------------------------------------------------------------------------------------------ results/


def read_jsonl(path: Path) -> list[dict]:
    """The predictions of a file, read-only, through the one reader the runner uses too
    (:func:`eval.predictions.read_prediction_rows`: a half-written last line of a running job is ignored, a
    corrupt line is a :class:`ReportError` naming the file and line)."""
    try:
        return read_prediction_rows(path)
    except CorruptPredictions as exc:
        raise ReportError(str(exc)) from None


@dataclass
class Run:
    """One finished run: its folder ``results/<dataset>/<method>/<run_name>/`` and its metrics.json."""

    path: Path
    metrics: dict

    dataset = property(lambda self: self.metrics["dataset"])
    method = property(lambda self: self.metrics["method"])
    budget = property(lambda self: int(self.metrics["budget"]))
    n = property(lambda self: int(self.metrics["n"]))
    accuracy = property(lambda self: float(self.metrics["accuracy"]))
    params = property(lambda self: self.metrics.get("method_params") or {})
    model = property(lambda self: self.metrics.get("model"))
    seed = property(lambda self: self.metrics.get("seed") or 0)
    scorer = property(lambda self: self.metrics.get("scorer", "gqa"))
    config_hash = property(lambda self: self.metrics.get("config_hash", ""))
    run_name = property(lambda self: self.metrics.get("run_name") or self.path.name)

    def predictions(self) -> list[dict]:
        """This run's prediction lines (those of its config hash), in file order; a :class:`ReportError` when
        the file has a corrupt line or does not answer the ``n`` questions metrics.json describes."""
        path = self.path / "predictions.jsonl"
        rows = [r for r in read_jsonl(path) if r.get("config_hash", self.config_hash) == self.config_hash]
        if len({str(r["question_id"]) for r in rows}) != self.n:
            raise ReportError(f"{path} answers {len({str(r['question_id']) for r in rows})} questions of this run, "
                              f"its metrics.json says n={self.n}; rerun its run (the same run.py command) to bring "
                              "them in line")
        return rows

    def scores(self) -> dict[str, float]:
        """Per-question score (0..1), recomputed with eval.scoring.score(scorer, prediction, answers)."""
        from eval.scoring import score

        out = {str(r["question_id"]): score(self.scorer, r["prediction"], [str(a) for a in r["answers"]])
               for r in self.predictions()}
        if out and abs(100.0 * sum(out.values()) / len(out) - self.accuracy) > 1e-6:
            warnings.warn(f"{self.path}: predictions.jsonl ({len(out)} questions) rescore to "
                          f"{100.0 * sum(out.values()) / len(out):.4f}, metrics.json says {self.accuracy:.4f} "
                          f"(n={self.n}); statistics use the predictions", stacklevel=2)
        return out


REQUIRED_METRICS = ("accuracy", "n", "dataset", "method", "budget")


def read_metrics(path: Path) -> dict:
    """A run's metrics.json as every reader takes it (the reports, ``python -m harness.sweep_status``): a JSON object
    with the keys the reports need; a :class:`ReportError` saying what is wrong otherwise (unreadable, truncated,
    not an object, keys missing)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReportError(f"cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # also a UnicodeDecodeError
        raise ReportError(f"not valid JSON ({' '.join(str(exc).split())[:120]}): truncated?") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"not a JSON object ({type(metrics).__name__})")
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise ReportError(f"missing {', '.join(missing)}")
    return metrics


def load_runs(results_dir: Path | str) -> list[Run]:
    """Every ``<dataset>/<method>/<run>/metrics.json`` under ``results_dir`` (folders starting with '_' or '.'
    are skipped, unreadable files are skipped with a warning)."""
    results_dir = Path(results_dir)
    runs = []
    for path in sorted(results_dir.glob("*/*/*/metrics.json")):
        if any(part.startswith(("_", ".")) for part in path.relative_to(results_dir).parts[:-1]):
            continue
        try:
            metrics = read_metrics(path)
            if metrics["accuracy"] is None:
                raise ValueError("an unscored run (its questions have no reference answers)")
            if metrics["budget"] is None:
                raise ValueError(f"a budget_ratio={metrics.get('budget_ratio')} run (a share of each image's tokens); "
                                 "the tables compare token counts")
        except (ReportError, ValueError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            continue
        runs.append(Run(path.parent, metrics))
    return runs


def canonical(obj) -> str:
    """A comparable form of method parameters: JSON with sorted keys (YAML's int keys become strings, as in
    metrics.json)."""
    return json.dumps(json.loads(json.dumps(obj)), sort_keys=True)


def default_params(method: str, configs_dir: Path | str = CONFIGS) -> str | None:
    """The canonical default ``params`` of ``configs/method/<method>.yaml``; None if there is no such file."""
    from omegaconf import OmegaConf

    path = Path(configs_dir) / "method" / f"{method}.yaml"
    if not path.is_file():
        return None
    conf = OmegaConf.load(path)
    params = conf.get("params")
    return canonical(OmegaConf.to_container(params, resolve=True) if params is not None else {})


def choose_run(candidates: Iterable[Run]) -> Run | None:
    """The deterministic pick among eligible runs of one cell: largest n, lowest seed, smallest run_name,
    smallest config_hash."""
    ordered = sorted(candidates, key=lambda r: (-r.n, r.seed, r.run_name, r.config_hash))
    return ordered[0] if ordered else None


def single_model(runs: Sequence[Run], model: str | None) -> list[Run]:
    """Runs of ``model``; with model None, results/ must hold one model only. The runs must also agree on
    what they read (:func:`check_one_version`)."""
    if model is not None:
        runs = [r for r in runs if r.model == model]
    else:
        models = sorted({str(r.model) for r in runs})
        if len(models) > 1:
            raise ReportError(f"results hold runs of several models ({', '.join(models)}); choose one with --model")
    check_one_version(runs)
    return list(runs)


def check_one_version(runs: Sequence[Run]) -> None:
    """One set of weights per model name and one question set per dataset name (the fingerprints runs record
    in metrics.json; runs without them are not compared): a report never mixes retrained weights or a
    changed copy of a dataset into one table."""
    for what, name_key, print_key in (("model", "model", "model_fingerprint"),
                                      ("dataset", "dataset", "dataset_fingerprint")):
        seen: dict[str, dict[str, Path]] = {}
        for run in runs:
            value = run.metrics.get(print_key)
            if value is not None:
                seen.setdefault(str(run.metrics.get(name_key)), {}).setdefault(value, run.path)
        for name, versions in sorted(seen.items()):
            if len(versions) > 1:
                examples = ", ".join(str(p) for p in list(versions.values())[:2])
                raise ReportError(f"results hold runs of {what} {name} on {len(versions)} different "
                                  f"{'weights' if what == 'model' else 'question sets'} (e.g. {examples}); move "
                                  "the runs of the stale version out of the results folder")


@dataclass
class Cell:
    run: Run | None
    candidates: int  # eligible runs for this cell
    excluded: int  # runs of this dataset/method/budget left out for non-default params


def table_cells(runs: Sequence[Run], configs_dir: Path | str = CONFIGS) -> dict[tuple[str, str, int], Cell]:
    """(dataset, method, budget) -> the chosen run (default params only; see :func:`choose_run`)."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.method, run.budget), []).append(run)
    defaults: dict[str, str | None] = {}
    cells = {}
    for key, group in groups.items():
        method = key[1]
        if method not in defaults:
            defaults[method] = default_params(method, configs_dir)
        wanted = defaults[method]
        eligible = [r for r in group if wanted is None or canonical(r.params) == wanted]
        cells[key] = Cell(choose_run(eligible), len(eligible), len(group) - len(eligible))
    return cells


# --------------------------------------------------------------------------------- paper's numbers


@dataclass(frozen=True)
class PaperNumber:
    table: str  # "table1" or "fig3"
    dataset: str
    method: str
    budget: int | None
    tau: float | None
    accuracy: float | None  # None: the paper has this cell, its value is not in our copy of the text
    status: str  # "table" | "text" (stated or derived in the text) | "lost" (cell exists, value lost)
    source: str
    note: str


def read_paper_numbers(path: Path | str = PAPER_NUMBERS) -> list[PaperNumber]:
    def num(text: str, kind):
        return kind(text) if text.strip() else None

    with Path(path).open(newline="") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    return [PaperNumber(r["table"], r["dataset"], r["method"], num(r["budget"], int), num(r["tau"], float),
                        num(r["accuracy"], float), r["status"], r["source"], r.get("note", ""))
            for r in rows]


def paper_table1(numbers: Sequence[PaperNumber]) -> dict[tuple[str, str, int], PaperNumber]:
    return {(p.dataset, p.method, p.budget): p for p in numbers if p.table == "table1"}


# ------------------------------------------------------------------------------------- statistics


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(scores: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-question ``scores`` (resampling questions with
    replacement, ``n_boot`` times, numpy Generator seeded by ``seed``).

    Implemented exactly, not approximately, through the counts: a resample of n questions draws each
    distinct score value v a Multinomial(n, freq) number of times, so the resampled mean is
    sum_v v * count_v / n -- the same distribution as resampling indices, at O(distinct values) per
    replicate (scores take a handful of values: 0/1 for GQA, 0/.3/.6/.9/1 for TextVQA). For a paired
    bootstrap pass the per-question differences.
    """
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty score list")
    values, counts = np.unique(x, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(x.size, counts / x.size, size=n_boot)
    return _quantiles(draws @ values / x.size, level)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips: min(1, 2 * P(X <= min(k, n - k)))."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    term, total = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, 2 * total / (1 << n))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 scores: (n10 = a right & b wrong, n01 = a wrong & b right, p)."""
    a, b = np.asarray(a), np.asarray(b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar needs 0/1 scores")
    n10 = int(((a == 1) & (b == 0)).sum())
    n01 = int(((a == 0) & (b == 1)).sum())
    return n10, n01, binomial_two_sided_p(n10, n10 + n01)


def sign_flip_p(differences: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> float:
    """Paired randomization test of mean difference 0: each question's difference keeps or flips its sign
    with probability 1/2 (exchangeable pair under H0). Two-sided Monte Carlo p = (1 + #{|T*| >= |T|}) /
    (n_perm + 1). Exact in distribution through the counts: of the c questions with difference v, a
    Binomial(c, 1/2) number flip."""
    d = np.asarray(differences, dtype=float)
    values, counts = np.unique(d[d != 0], return_counts=True)
    observed = abs(float(d.sum()))
    if values.size == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    flips = rng.binomial(counts, 0.5, size=(n_perm, values.size))
    stats = np.abs((counts - 2 * flips) @ values)
    return float((1 + (stats >= observed - 1e-9).sum()) / (n_perm + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class PairedResult:
    n: int  # questions both runs answered
    accuracy_a: float  # percent, on the paired questions
    accuracy_b: float
    diff: float  # a - b, points
    ci_low: float
    ci_high: float
    test: str  # "mcnemar-exact" | "sign-flip"
    p: float
    n10: int | None = None  # a right, b wrong (binary scores only)
    n01: int | None = None


def paired_comparison(a: dict[str, float], b: dict[str, float], n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> PairedResult | None:
    """Method a vs method b on the questions both answered: accuracy difference (points) with a paired
    bootstrap CI, and the exact McNemar test for 0/1 scores (a sign-flip randomization test otherwise)."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    sa = np.array([a[q] for q in common], dtype=float)
    sb = np.array([b[q] for q in common], dtype=float)
    d = sa - sb
    lo, hi = bootstrap_mean_ci(d, n_boot, seed, level)
    binary = np.isin(sa, (0, 1)).all() and np.isin(sb, (0, 1)).all()
    if binary:
        n10, n01, p = mcnemar_exact(sa, sb)
        test = "mcnemar-exact"
    else:
        n10 = n01 = None
        p, test = sign_flip_p(d, n_boot, seed), "sign-flip"
    return PairedResult(len(common), 100 * sa.mean(), 100 * sb.mean(), 100 * d.mean(), 100 * lo, 100 * hi,
                        test, p, n10, n01)


# ------------------------------------------------------------------------------------------- compute

# The paper's Table 2 convention (multiply-accumulates it calls FLOPs): vision tower 190.6 G for 577 tokens x
# 24 layers (unchanged by pruning after the tower), projector 20.97 M per image token, and per LLM layer
# 4 n d^2 + 2 n^2 d + 2 n d m (FastV's formula) with n = image tokens + n_text, d = 4096, m = 11008.
VISION_MACS = 190.6e9
PROJECTOR_MACS_PER_TOKEN = 20.97e6
LLM_D, LLM_M, LLM_LAYERS = 4096, 11008, 32
N_TEXT = 50


def llm_layer_macs(n: float, d: int = LLM_D, m: int = LLM_M) -> float:
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def paper_convention_tmacs(image_tokens_per_layer: Sequence[float], n_text: int = N_TEXT) -> float:
    """Total T-MACs of one image + question: vision + projector (layer 0's image tokens) + LLM layer by
    layer with that layer's image-token count (decoder-side methods change it between layers)."""
    tokens = list(image_tokens_per_layer)
    llm = sum(llm_layer_macs(k + n_text) for k in tokens)
    return (VISION_MACS + PROJECTOR_MACS_PER_TOKEN * tokens[0] + llm) / 1e12


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


# --------------------------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
