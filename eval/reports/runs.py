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


from eval.predictions import CorruptPredictions, read_prediction_rows

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PAPER_NUMBERS = Path(__file__).resolve().parents[1] / "paper_numbers.csv"

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


# --------------------------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
