"""What a sweep has left: every run of a ``python run.py -m ...`` sweep with its state.

    python -m harness.sweep_status results                        # every sweep under results/sweeps/
    python -m harness.sweep_status results/sweeps/table1          # one sweep (its folder or its multirun.yaml)

The sweep's jobs are expanded from its multirun.yaml (saved by Hydra in the sweep folder, ``hydra.sweep.dir``)
exactly as Hydra's basic sweeper does (sweeper params + command-line overrides), each job's config is
composed from configs/, and its run folder is read without loading any model:

    done      metrics.json and predictions answer every selected question (as harness.sweeps.finished_run)
    partial   n/N questions answered so far (predictions.jsonl and any shard files)
    damaged   every question answered, but the folder is not a finished run as the reports read it (a truncated or
              unreadable metrics.json, predictions that do not match it): the reason; rerunning the job repairs it
    failed    the job's last attempt raised: the error's last line (<sweep folder>/errors/, written by run.py)
    pending   nothing answered, no error recorded (not started yet, queued, or killed before its first batch)
    skipped   a job the sweep skips by design (vanilla outside ``sweep.budget_free_at``)
    invalid   the job's config does not compose (the message says why)

A job killed from outside (scancel, a node failure, out of memory) records no error: it shows as partial
or pending; its scheduler log (hydra.launcher.submitit_folder) has the rest. Exit status: 0 when every run
is done or skipped, 1 otherwise, 2 for a bad argument (a path that does not exist, a damaged multirun.yaml:
one ``error:`` line each).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.sweeps import is_hydra_override, sweeper_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ERRORS = "errors"  # <sweep folder>/errors/<job key>.txt


# ------------------------------------------------------------------------------- errors of sweep jobs


def job_key(overrides: Sequence[str]) -> str:
    """A file name for one sweep job: a digest of its (sorted) overrides, hydra's own left out."""
    task = sorted(o for o in overrides if not is_hydra_override(o))
    return hashlib.sha256("\n".join(task).encode()).hexdigest()[:16]


def _current_job() -> tuple[Path, list[str]] | None:
    """(sweep folder, this job's overrides) inside a Hydra multirun job; None otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir), list(hc.overrides.task)


def record_error(message: str) -> None:
    """In a sweep job: save ``message`` (one line) as this job's last error, for :func:`main` to show."""
    job = _current_job()
    if job is None:
        return
    sweep_dir, overrides = job
    folder = sweep_dir / ERRORS
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"overrides": overrides, "error": message.strip().splitlines()[-1] if message.strip() else "",
                       "slurm_job_id": os.environ.get("SLURM_JOB_ID")}) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, folder / f"{job_key(overrides)}.json")


def clear_error() -> None:
    """In a sweep job that succeeded: forget an error of an earlier attempt."""
    job = _current_job()
    if job is not None:
        (job[0] / ERRORS / f"{job_key(job[1])}.json").unlink(missing_ok=True)


def read_error(sweep_dir: Path, overrides: Sequence[str]) -> str | None:
    path = sweep_dir / ERRORS / f"{job_key(overrides)}.json"
    try:
        return json.loads(path.read_text())["error"]
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------- expanding a sweep


def find_sweeps(path: Path) -> list[Path]:
    """multirun.yaml files: ``path`` itself, ``path/multirun.yaml``, or ``path/sweeps/*/multirun.yaml``."""
    if path.is_file():
        return [path]
    if (path / "multirun.yaml").is_file():
        return [path / "multirun.yaml"]
    return sorted(path.glob("sweeps/*/multirun.yaml"))


def expand_jobs(multirun) -> list[list[str]]:
    """Each job's overrides, in Hydra's order (hydra.sweeper.params + command-line overrides, as BasicSweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = sweeper_arguments(multirun.hydra.sweeper.get("params"), multirun.hydra.overrides.task)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


# ------------------------------------------------------------------------------- one run's state


@dataclass
class RunStatus:
    overrides: list[str]
    state: str  # done | partial | damaged | failed | pending | skipped | invalid
    folder: Path | None = None
    answered: int = 0
    total: int = 0
    detail: str = ""

    def line(self) -> str:
        """state, n/N, <dataset>/<method>/<run_name> (or the job's overrides), detail."""
        label = str(Path(*self.folder.parts[-3:])) if self.folder is not None else " ".join(o for o in self.overrides if not is_hydra_override(o))
        counts = f"{self.answered}/{self.total}" if self.total else ""
        return f"{self.state:<8} {counts:>11}  {label}" + (f"  {self.detail}" if self.detail else "")


def _answered(folder: Path, digest: str) -> set[str]:
    """Question ids answered under ``digest`` in predictions.jsonl and any shard files (read-only)."""
    from eval.reports import read_jsonl
    from harness.shard import shard_folders

    files = [folder / "predictions.jsonl"] + [p / "predictions.jsonl" for p in shard_folders(folder)]
    return {str(r["question_id"]) for f in files for r in read_jsonl(f) if r.get("config_hash") == digest}


def run_status(cfg, overrides: list[str], sweep_dir: Path, selections: dict) -> RunStatus:
    """The state of one composed job. ``selections`` caches the selected question ids per dataset selection."""
    from omegaconf import OmegaConf

    from eval.datasets import load_dataset
    from eval.reports import ReportError
    from harness.identity import select_records
    from harness.sweeps import _run_identity, budget_free_duplicate
    from svdprune.errors import UserError

    reason = budget_free_duplicate(cfg)
    if reason is not None:
        return RunStatus(overrides, "skipped", detail=reason.split(":")[0])
    key = json.dumps([OmegaConf.to_container(cfg.dataset, resolve=True), cfg.get("limit"), cfg.get("subset"),
                      cfg.seed], sort_keys=True)
    if key not in selections:
        try:
            dataset = load_dataset(cfg.dataset)
            records = select_records(dataset.records, cfg.get("limit"), cfg.get("subset"), cfg.seed)
            selections[key] = (dataset, [str(r.question_id) for r in records])
        except UserError as exc:
            selections[key] = f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - shown to the user; the run itself would fail the same way
            selections[key] = f"{type(exc).__name__}: {exc}"
    selected = selections[key]
    error = read_error(sweep_dir, overrides)
    if isinstance(selected, str):
        return RunStatus(overrides, "failed" if error else "invalid", detail=error or selected)
    dataset, selected = selected
    try:
        folder, digest, _ = _run_identity(cfg, dataset)
    except KeyError as exc:
        return RunStatus(overrides, "invalid", detail=f"unknown method {exc}")
    try:
        answered_all = _answered(folder, digest)
    except ReportError as exc:  # a corrupt predictions line: the run stops on it until repaired
        return RunStatus(overrides, "failed", folder, detail=f"error: {exc}")
    answered = len(answered_all & set(selected))
    status = RunStatus(overrides, "pending", folder, answered, len(selected))
    damage = _damage(folder, digest, len(answered_all)) if answered == len(selected) else None
    if answered == len(selected) and damage is None:
        status.state = "done"
    elif damage is not None and damage != "incomplete":
        status.state, status.detail = "damaged", damage
    elif error:
        status.state, status.detail = "failed", error
    elif answered:
        status.state = "partial"
    return status


def _damage(folder: Path, digest: str, n_answered: int) -> str | None:
    """Why a run folder whose predictions answer every selected question is not a finished run, read as the reports
    read it (:func:`eval.reports.read_metrics`, :meth:`eval.reports.Run.predictions`): None when it is finished;
    "incomplete" when metrics.json is missing or of an earlier state of the run (the run has not finished writing);
    else the reports' reason (a truncated metrics.json, predictions that do not match it)."""
    from eval.reports import ReportError, Run, read_metrics

    path = folder / "metrics.json"
    if not path.is_file():
        return "incomplete"
    try:
        metrics = read_metrics(path)
    except ReportError as exc:
        return f"error: {path}: {exc}; rerun its run (the same run.py command) to write it again"
    if metrics.get("config_hash") != digest or metrics.get("n") != n_answered:
        return "incomplete"
    try:
        Run(folder, metrics).predictions()
    except ReportError as exc:
        return f"error: {exc}"
    return None


class DamagedSweep(Exception):
    """A multirun.yaml that is not a sweep Hydra saved (one line, shown without a traceback)."""


def load_multirun(path: Path):
    """The sweep Hydra saved in ``path``, checked: a mapping with ``hydra.overrides.task`` (a list) and
    ``hydra.sweeper``; anything else (not YAML, not UTF-8, empty, a list, ``hydra: 5``) is a
    :class:`DamagedSweep` naming the file."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def damaged(why: str) -> DamagedSweep:
        return DamagedSweep(f"{path}: not a sweep's multirun.yaml ({why}); rerun the sweep's command to save it again")

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise damaged(f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    except OSError as exc:
        raise damaged(f"cannot read it: {exc.strerror or exc}") from None
    if not text.strip():
        raise damaged("the file is empty")
    try:
        multirun = OmegaConf.create(text)
    except Exception as exc:  # noqa: BLE001 - yaml's and OmegaConf's parse errors have no common base class
        first = " ".join(str(exc).split("\n")[0].split())
        raise damaged(f"not valid YAML: {first}" if first else "not valid YAML") from None
    if isinstance(multirun, ListConfig) or not isinstance(multirun, DictConfig):
        raise damaged("a YAML list, expected a mapping with a 'hydra' section")
    try:
        hydra = multirun.get("hydra")
        task = hydra.overrides.task if isinstance(hydra, DictConfig) and "overrides" in hydra else None
        sweeper = hydra.get("sweeper") if isinstance(hydra, DictConfig) else None
        params = sweeper.get("params") if isinstance(sweeper, DictConfig) else None
    except Exception as exc:  # noqa: BLE001 - an interpolation that does not resolve, and the like
        raise damaged(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(task, ListConfig) or not isinstance(sweeper, DictConfig) or not (
            params is None or isinstance(params, DictConfig)):
        raise damaged("no 'hydra.overrides.task' list and 'hydra.sweeper' section")
    return multirun


def sweep_status(multirun_path: Path, configs: Path = CONFIGS) -> list[RunStatus]:
    """Every job of the sweep saved in ``multirun_path``, with its state (:class:`DamagedSweep` for a file that
    is not a sweep)."""
    from hydra import compose, initialize_config_dir

    multirun = load_multirun(multirun_path)
    try:
        jobs = expand_jobs(multirun)
    except Exception as exc:  # noqa: BLE001 - overrides Hydra's grammar does not parse
        raise DamagedSweep(f"{multirun_path}: its overrides do not parse ({str(exc).strip().splitlines()[0]})") from None
    sweep_dir = multirun_path.parent
    selections: dict = {}
    out = []
    with initialize_config_dir(config_dir=str(configs.resolve()), version_base="1.3"):
        for overrides in jobs:
            try:
                cfg = compose("config", overrides=[o for o in overrides if not is_hydra_override(o)])
            except Exception as exc:  # noqa: BLE001 - a job Hydra cannot compose: shown, not raised
                out.append(RunStatus(overrides, "invalid", detail=str(exc).splitlines()[0]))
                continue
            out.append(run_status(cfg, overrides, sweep_dir, selections))
    return out


STATES = ("done", "partial", "damaged", "failed", "pending", "skipped", "invalid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="an output_dir (all its sweeps/*), a sweep folder or a multirun.yaml")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="configs/ the sweep was composed from")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"error: {args.path} does not exist (give an output_dir, a sweep folder or a multirun.yaml)",
              file=sys.stderr)
        return 2
    sweeps = find_sweeps(args.path)
    if not sweeps:
        print(f"error: no sweep under {args.path} (looked for multirun.yaml and sweeps/*/multirun.yaml)",
              file=sys.stderr)
        return 2
    all_done, damaged = True, False
    for path in sweeps:
        try:
            runs = sweep_status(path, args.configs)
        except DamagedSweep as exc:
            print(f"error: {exc}", file=sys.stderr)
            damaged = True
            continue
        counts = {s: sum(r.state == s for r in runs) for s in STATES}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"sweep {path.parent} ({len(runs)} jobs): {summary}")
        for r in runs:
            print("  " + r.line())
        all_done &= all(r.state in ("done", "skipped") for r in runs)
    return 2 if damaged else 0 if all_done else 1


if __name__ == "__main__":
    sys.exit(main())
