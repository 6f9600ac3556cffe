"""Run-level resume for sweeps: whether a (sweep) job need not run, decided without loading the model
(:func:`finished_run`, :func:`skip_reason`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from eval.reports import GRID, read_jsonl
from harness.settings import CONFIGS, check_config, read_num_patches


def _num_patches(model_cfg) -> int:
    """:func:`read_num_patches`, LLaVA-1.5's 576 when unknown. A wrong guess only makes :func:`finished_run`
    answer False (the run then goes ahead), never skip a run wrongly."""
    return read_num_patches(model_cfg) or GRID * GRID


def _run_identity(cfg, dataset) -> tuple[Path, str, int]:
    """(run folder, config hash, effective budget) exactly as harness.runner.run computes them."""
    from harness.identity import fingerprints, run_folder

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
        from harness.identity import select_records

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
    from svdprune.pruning import METHODS, method_class

    return method_class(name).kind if name in METHODS else None


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


# ------------------------------------------------------------------------------- a sweep checked before it starts

_RUN_FLAGS = ("-m", "--multirun")


def is_hydra_override(override: str) -> bool:
    """An override of Hydra's own configuration (``hydra/launcher=slurm``, ``hydra.launcher.partition=gpu``)."""
    return override.lstrip("+~").startswith(("hydra/", "hydra."))


def sweeper_arguments(params, overrides: list[str]) -> list:
    """What Hydra's basic sweeper expands, parsed: the config's ``hydra.sweeper.params`` axes, then the command-line
    overrides (a command-line axis replaces the config's axis of the same key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(overrides))


def sweep_axes(args: list[str], configs: Path | None = None) -> dict[str, list[str]] | None:
    """The axes of ``python run.py -m <args>``: each key's override strings (``["budget=16", "budget=32"]``), in
    Hydra's order (the experiment's ``hydra.sweeper.params``, then the command line, which replaces an axis of the
    same key, as Hydra's basic sweeper does); the sweep's jobs are their product. None when ``args`` is not a plain
    sweep this can expand (not ``-m``, other flags, another sweeper)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags = [a for a in args if a.startswith("-")]
    if not flags or any(f not in _RUN_FLAGS for f in flags):
        return None
    overrides = [a for a in args if not a.startswith("-")]
    if any(o.lstrip("+~").startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides):
        return None
    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return None  # range/interval sweeps: Hydra's basic sweeper refuses them itself
    # one value per sweep, to read the experiment's sweep axes (hydra.sweeper.params)
    first = [f"{o.input_line.split('=', 1)[0]}={next(iter(o.sweep_string_iterator()))}"
             if o.is_sweep_override() else o.input_line for o in parsed]
    with initialize_config_dir(config_dir=str((configs or CONFIGS).resolve()), version_base="1.3"):
        hydra_cfg = compose("config", overrides=[o for o in first if not is_hydra_override(o)],
                            return_hydra_config=True).hydra
    axes: dict[str, list[str]] = {}
    for override in sweeper_arguments(hydra_cfg.sweeper.get("params"), overrides):
        key = override.get_key_element()
        axes[key] = ([f"{key}={v}" for v in override.sweep_string_iterator()] if override.is_sweep_override()
                     else [f"{key}={override.get_value_element_as_str()}"])
    return axes


def check_sweep(args: list[str], configs: Path | None = None) -> list[str]:
    """Every swept value of ``python run.py -m <args>`` checked (:func:`harness.settings.check_config`) before the
    first job runs: a bad one (``budget=16,0``) is a one-line UserError naming it, and nothing runs. Each value is
    checked in one job (the sweep's first, with that value put in), so a sweep of any size costs one composition per
    value, not per job. Returns extra overrides to append: when the sweep runs a method that ignores the budget
    (vanilla) but its budget axis lacks ``sweep.budget_free_at`` (a Table 1 sweep without budget 192), vanilla runs in
    the axis's first budget (a note says so) rather than nowhere."""
    from hydra import compose, initialize_config_dir

    from svdprune.errors import UserError

    axes = sweep_axes(args, configs)
    if not axes:
        return []
    first = {key: values[0] for key, values in axes.items()}
    checks = [(None, first)] + [(value, {**first, key: value}) for key, values in axes.items() if len(values) > 1
                                for value in values[1:]]
    cfg = None
    with initialize_config_dir(config_dir=str((configs or CONFIGS).resolve()), version_base="1.3"):
        for value, job in checks:
            task = [o for o in job.values() if not is_hydra_override(o)]
            where = f"sweep value {value}" if value is not None else f"the sweep's first job ({' '.join(task)})"
            try:
                composed = compose("config", overrides=task)
                check_config(composed)
            except UserError as exc:
                raise UserError(f"{where}: {exc}; no job has run") from None
            except Exception as exc:  # noqa: BLE001 - Hydra's composition errors: one line
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"{where}: {detail}; no job has run") from None
            cfg = composed if value is None else cfg
    sweep = cfg.get("sweep")
    free_at = sweep.get("budget_free_at") if sweep is not None else None
    budgets = [v.split("=", 1)[1] for v in axes.get("budget", [f"budget={cfg.budget}"])]
    methods = [v.split("=", 1)[1] for v in axes.get("method", [f"method={cfg.method.name}"])]
    if free_at is None or str(free_at) in budgets or not any(_method_kind(m) == "none" for m in methods):
        return []
    print(f"note: this sweep's budget axis ({', '.join(budgets)}) has no budget={free_at} (sweep.budget_free_at), "
          f"where it runs the methods that ignore the budget (vanilla): they run in its budget={budgets[0]} job "
          "instead", file=sys.stderr)
    return [f"++sweep.budget_free_at={budgets[0]}"]
