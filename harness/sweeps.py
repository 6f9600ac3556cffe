"""Run-level resume for sweeps: whether a (sweep) job need not run, decided without loading the model
(:func:`finished_run`, :func:`skip_reason`)."""
from __future__ import annotations

import json
from pathlib import Path

from eval.reports import GRID, read_jsonl


def read_num_patches(model_cfg) -> int | None:
    """Image tokens of the model without loading it: 24 x 24 = 576 for the tiny model; a local llava-hf
    folder's (or the HF cache's) config.json when it is there; None when unknown. Qwen2.5-VL: the most tokens an
    image can have, ``max_pixels`` / (28 x 28)."""
    if model_cfg.get("family") == "qwen25vl":
        from svdprune.qwen25vl import DEFAULT_MAX_PIXELS, TOKEN_PIXELS

        return int(model_cfg.get("max_pixels") or DEFAULT_MAX_PIXELS) // TOKEN_PIXELS
    if model_cfg.get("kind") != "pretrained":
        return GRID * GRID
    from harness.identity import hub_snapshot
    from svdprune.models import in_project

    path = in_project(str(model_cfg.get("path") or ""))
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        snapshot = hub_snapshot(path, model_cfg.get("revision"))
        config = snapshot / "config.json" if snapshot is not None else config
    try:
        vision = json.loads(config.read_text())["vision_config"]
        return (vision.get("image_size", 336) // vision.get("patch_size", 14)) ** 2
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _num_patches(model_cfg) -> int:
    """:func:`read_num_patches`, LLaVA-1.5's 576 when unknown. A wrong guess only makes :func:`finished_run`
    answer False (the run then goes ahead), never skip a run wrongly."""
    return read_num_patches(model_cfg) or GRID * GRID


def _run_identity(cfg, dataset) -> tuple[Path, str, int]:
    """(run folder, config hash, effective budget) exactly as harness.runner.run computes them."""
    from harness.runner import fingerprints, run_folder

    kind = _method_kind(cfg.method.name)
    if kind is None:
        raise KeyError(cfg.method.name)
    budget = _num_patches(cfg.model) if kind == "none" else None if cfg.get("budget_ratio") is not None else cfg.budget
    out_dir, digest = run_folder(cfg, budget, fingerprints(cfg, dataset))
    return out_dir, digest, budget


def finished_run(cfg) -> Path | None:
    """The run folder when ``results/`` already holds this run complete (see :func:`_finished`), else None."""
    found = _finished(cfg)
    return found[0] if found is not None else None


def _finished(cfg) -> tuple[Path, str] | None:
    """The run folder when ``results/`` already holds this run complete, decided without loading the model:
    metrics.json in the run's folder (named after the run's identity: configuration and fingerprints of the
    questions and weights) has the same config hash and describes every question predictions.jsonl answers,
    and those include every question the run selects. Loads the dataset's question list (its images are only
    fingerprinted). Any doubt (missing or unreadable files, a configuration error) gives None, so the runner
    runs and reports errors itself. Returns (run folder, the selection's accuracy in words, as the runner
    prints it).
    """
    try:
        from eval.datasets import load_dataset
        from harness.runner import select_records

        dataset = load_dataset(cfg.dataset)
        out_dir, digest, _ = _run_identity(cfg, dataset)
        metrics_path = out_dir / "metrics.json"
        if not metrics_path.is_file():
            return None
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("config_hash") != digest:
            return None
        records = select_records(dataset.records, cfg.get("limit"), cfg.get("subset"), cfg.seed)
        rows = read_jsonl(out_dir / "predictions.jsonl")
        answered = {str(r["question_id"]) for r in rows if r.get("config_hash") == digest}
        if not records or metrics.get("n") != len(answered) or len(rows) != len(answered):
            return None  # not up to date, or repeated lines: the runner repairs them
        if not all(str(r.question_id) in answered for r in records):
            return None
        return out_dir, _selection_accuracy(dataset, records, rows, metrics)
    except Exception:  # noqa: BLE001 - see docstring: the runner reports configuration errors itself
        return None


def _selection_accuracy(dataset, records, rows: list[dict], metrics: dict) -> str:
    """"accuracy 45.00 on these 20 questions (the run folder answers 60: 50.00)", rescored from the
    predictions of the selected questions as the runner scores them."""
    from eval.scoring import score

    if not metrics.get("scored", True) or metrics.get("accuracy") is None:
        return f"unscored (no reference answers), {len(records)} questions"
    by_id = {str(r["question_id"]): r for r in rows}
    chosen = [by_id[str(r.question_id)] for r in records]
    accuracy = 100.0 * sum(score(dataset.scorer, r["prediction"], r["answers"]) for r in chosen) / len(chosen)
    whole = "" if len(chosen) == metrics["n"] else f" (the run folder answers {metrics['n']}: {metrics['accuracy']:.2f})"
    return f"accuracy {accuracy:.2f} on these {len(chosen)} questions{whole}"


def _method_kind(name: str) -> str | None:
    """The method class's ``kind`` ("none" for vanilla) from the registry, without instantiating it."""
    import importlib

    from svdprune.pruning import METHODS as REGISTRY

    if name not in REGISTRY:
        return None
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name).kind


def budget_free_duplicate(cfg) -> str | None:
    """A reason to skip when the method ignores the budget (vanilla) and the config's
    ``sweep.budget_free_at`` (set by configs/experiment/table1.yaml) names another budget: the job at that
    budget runs it. The runner would file all of these jobs under the same k576 folder, and parallel jobs
    (SLURM) would write the same files at once."""
    sweep = cfg.get("sweep")
    free_at = sweep.get("budget_free_at") if sweep is not None else None
    if free_at is None:
        return None
    try:
        kind = _method_kind(cfg.method.name)
    except Exception:  # noqa: BLE001 - a broken method module: the runner reports it
        return None
    if kind == "none" and cfg.budget != free_at:
        return (f"{cfg.method.name} ignores the budget: this sweep runs it once, in its budget={free_at} job "
                "(sweep.budget_free_at)")
    return None


def skip_reason(cfg) -> str | None:
    """Why a (sweep) job need not run, or None: :func:`budget_free_duplicate`, or :func:`finished_run`."""
    reason = budget_free_duplicate(cfg)
    if reason is None:
        found = _finished(cfg)
        if found is not None:
            reason = (f"finished: {found[0]} already answers every selected question (metrics.json, same config "
                      f"hash); {found[1]}")
    return reason
