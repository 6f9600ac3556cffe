"""One run: dataset -> method -> model -> batched pruned generation -> predictions.jsonl -> metrics.json.

Validation of user values happens first (harness/settings.py), before any data or weights are read: a bad
value raises ``UserError`` and no results file is started. The run folder is named after the run's identity
(:func:`config_hash`: configuration plus fingerprints of the questions and weights read, harness/identity.py)
and locked while the run writes it (harness/lock.py).
"""
from __future__ import annotations

import contextlib
import errno
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from eval.datasets import Record, check_images_readable, check_references, load_dataset
from eval.scoring import SCORERS, score

from svdprune.errors import UserError
from svdprune.families import family_of, fit_budget, load_model
from svdprune.pruning import build_method
from svdprune.surgery import kept_tokens

from .identity import (budget_label, budget_text, fingerprints, model_identity, question_ids_sha256,
                       run_folder, select_records)
from .lock import RunFolderBusy, RunLock
from .model_cache import LoadedModels
from .results import PredictionWriter, read_predictions, write_json_atomic
from .schedule import answer_batches
from .settings import Settings, check_config, check_folder_path
from .shard import merge_shards, read_shard, remove_finished_shard_folders, shard_predictions_path, shard_records

# per-question fields the runner itself writes (not method statistics)
_ROW_KEYS = {"kept_tokens", "prompt_tokens", "generated_tokens"}


@dataclass
class _Prepared:
    """What a run has settled before it touches its folder: checked settings, the method, the questions, the model
    and the budget and batch size fitted to it."""

    settings: Settings
    method_name: str
    params: dict
    method: object
    dataset: object
    records: list[Record]
    lm: object
    budget: object
    batch_size: int


@dataclass
class _Answered:
    """What the locked part of a run did: every finished row (resumed and new), this shard's questions, those it
    had left, the ones skipped for an unreadable image, and the generation totals."""

    finished: dict
    mine: list[Record]
    todo: list[Record]
    skipped: list[str]
    max_positions: int | None
    generated_tokens: int
    generation_seconds: float


def run(cfg: DictConfig, models: LoadedModels | None = None) -> dict:
    """One run, resumable; returns the metrics written to metrics.json (see :func:`run_metrics`). ``models``:
    the process's kept model (harness/model_cache.py; run.py passes one so that a sweep loads each model once),
    None to load it for this run alone."""
    started = time.perf_counter()
    settings = check_config(cfg)  # every config value, before any data or weights
    if settings.threads is not None:
        import torch

        torch.set_num_threads(settings.threads)
    memo = models.memo if models is not None and cfg.get("reuse_model", True) else None
    prep = _prepare(cfg, settings, models, memo)
    prints = fingerprints(cfg, prep.dataset, memo)
    out_dir, digest = run_folder(cfg, prep.budget, prints)
    check_folder_path("output_dir", str(out_dir))  # results/<dataset> or <method> may be a file
    shard = settings.shard
    answered = _answer(cfg, prep, out_dir, digest, prints)
    if shard is not None:  # the shard that completes the run merges the shard files into predictions.jsonl
        merged = _merge_if_complete(out_dir, prep.records, digest, shard)
        if merged is None:
            new = len(answered.todo) - len(answered.skipped)
            print(f"{_run_line_head(prep.dataset.name, prep.method_name, prep.budget, settings.budget_ratio, prep.params)}: "
                  f"shard {shard} answered its {len(answered.mine)} questions ({new} new); metrics.json is written by "
                  f"the shard that finishes last -> {out_dir}")
            return {"shard": str(shard), "n": len(answered.mine), "newly_answered": new, "run_folder": str(out_dir)}
        answered.finished.update((row["question_id"], row) for row in merged)
    metrics = _write_metrics(cfg, prep, answered, out_dir, digest, prints, started)
    _print_summary(prep, answered, metrics, out_dir)
    return metrics


def _prepare(cfg: DictConfig, settings: Settings, models: LoadedModels | None, memo) -> _Prepared:
    """The method (its parameters checked, and against the family before loading), the selected questions, the
    model (the kept one when ``models`` holds the same weights), the budget fitted to it and the batch size."""
    method_name, budget = cfg.method.name, settings.budget
    params = OmegaConf.to_container(cfg.method.params, resolve=True) if cfg.method.get("params") is not None else {}
    method = build_method(method_name, budget, params)  # validates the method's own parameters
    method.check_family(family_of(cfg.model).CAPABILITIES)  # e.g. a budget without a schedule, before loading

    dataset = load_dataset(cfg.dataset)
    if dataset.scorer not in SCORERS:
        raise UserError(f"unknown scorer {dataset.scorer!r}; allowed: {', '.join(SCORERS)}")
    check_references(dataset)  # all questions with reference answers, or none (unscored), before any model work
    records = select_records(dataset.records, settings.limit, settings.subset, cfg.seed)
    if not records:
        raise UserError(f"dataset {dataset.name!r} selected no questions (limit={settings.limit}, "
                        f"subset={settings.subset})")

    progress = bool(cfg.get("progress", True))
    if memo is not None:
        model_print = model_identity(cfg.model, memo)["fingerprint"]  # the kept model only if the weights are the same
        lm = models.get(cfg.model, model_print, progress)
    else:
        lm = load_model(cfg.model, progress=progress)
    # vanilla: every token; budget_ratio: each image its own share (no count); then the family's and the method's checks
    budget = fit_budget(lm, method, budget, settings.budget_ratio, model_name=cfg.model.name)
    if settings.on_bad_image == "error":  # skip: such questions are left out where their image is decoded
        check_images_readable(records)
    batch_size = settings.batch_size
    if batch_size == "auto":  # the largest batch whose estimated peak fits the device (svdprune/memory.py)
        from svdprune.memory import auto_batch_size

        batch_size = auto_batch_size(lm.model.config, method, lm.dtype, settings.max_new_tokens, lm.device)
    return _Prepared(settings, method_name, params, method, dataset, records, lm, budget, batch_size)


def _answer(cfg: DictConfig, prep: _Prepared, out_dir: Path, digest: str, prints: dict) -> _Answered:
    """Under the run folder's lock (a shard's own folder for a shard): resume the finished predictions (refusing
    another configuration's), answer the rest batch by batch and append each batch's rows as it is done."""
    settings, shard = prep.settings, prep.settings.shard
    predictions_path = out_dir / "predictions.jsonl"
    # a shard locks (and writes) only its own folder; the run folder is locked to merge (harness/shard.py)
    lock_folder = out_dir / shard.folder_name if shard is not None else out_dir
    with _write_errors_are_user_errors(out_dir), RunLock(lock_folder):
        notes: list[str] = []
        finished = {row["question_id"]: row
                    for row in read_predictions(predictions_path, settings.repair_predictions, notes)}
        if shard is not None:
            finished.update((row["question_id"], row)
                            for row in read_shard(out_dir, shard, settings.repair_predictions, notes))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        stale = {row.get("config_hash") for row in finished.values()} - {digest}
        if stale:
            raise UserError(f"{predictions_path} holds predictions of another configuration (hash "
                            f"{stale.pop()[:10]}{_what_differs(out_dir, prints)}); choose another run_name or "
                            "output_dir")
        mine = shard_records(prep.records, shard)
        todo = [r for r in mine if r.question_id not in finished]
        answered = _Answered(finished, mine, todo, [], _max_positions(prep.lm), 0, 0.0)
        warned = False
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not cfg.get("progress", True),
                   desc=f"{prep.dataset.name}/{prep.method_name}/{budget_label(prep.budget, settings.budget_ratio)}",
                   unit="q")
        with PredictionWriter(shard_predictions_path(out_dir, shard) if shard else predictions_path) as writer:
            for batch, out, seconds in answer_batches(
                    prep.lm, prep.method, todo, batch_size=prep.batch_size, schedule=settings.schedule,
                    instruction=prep.dataset.instruction, max_new_tokens=settings.max_new_tokens, seed=cfg.seed,
                    on_bad_image=settings.on_bad_image, skipped=answered.skipped):
                answered.generation_seconds += seconds
                rows = [_prediction_row(record, out, i, digest) for i, record in enumerate(batch)]
                for record, row in zip(batch, rows):
                    answered.generated_tokens += row["generated_tokens"]
                    finished[record.question_id] = row
                writer.write(rows)
                warned = _warn_positions(rows, answered.max_positions, cfg.model.name, warned)
                bar.update(len(batch))
        bar.close()
    return answered


def _prediction_row(record: Record, out, i: int, digest: str) -> dict:
    """predictions.jsonl's row of the batch's ``i``-th question: what the runner records, the method's per-question
    statistics, then what the dataset records per question (evidence)."""
    row = {
        "question_id": record.question_id, "prompt": out.prompts[i], "prediction": out.texts[i],
        "answers": record.answers, "question_type": record.question_type,
        "kept_tokens": kept_tokens(out.image_tokens_per_layer[i]),
        "image_tokens_per_layer": out.image_tokens_per_layer[i],
        "prompt_tokens": out.prompt_lengths[i], "generated_tokens": len(out.token_ids[i]),
        "config_hash": digest,
    }
    row.update({key: values[i] for key, values in out.stats.items()})
    row.update(record.extra.get("recorded", {}))  # per-question facts a dataset records (evidence)
    return row


def _write_metrics(cfg: DictConfig, prep: _Prepared, answered: _Answered, out_dir: Path, digest: str, prints: dict,
                   started: float) -> dict:
    """metrics.json of the run folder (over every question it answers), written atomically; finished shard folders
    removed."""
    settings, lm = prep.settings, prep.lm
    new = len(answered.todo) - len(answered.skipped)
    folder_skipped = _skipped_in_folder(out_dir, digest, answered.skipped, answered.finished)
    with _write_errors_are_user_errors(out_dir):
        metrics = run_metrics(prep.dataset, prep.records, answered.finished, settings, cfg, prep.method, prep.params,
                              prep.budget, answered.max_positions, folder_skipped)
        seconds = answered.generation_seconds
        metrics.update({
            "model": prints["model_name"], "model_fingerprint": prints["model"],
            "model_revision": lm.revision, "dataset_fingerprint": prints["dataset"],
            **({"method_weights_fingerprint": prints["method_weights"]} if "method_weights" in prints else {}),
            "dtype": str(lm.dtype).replace("torch.", ""), "dtype_setting": str(cfg.model.get("dtype")),
            "device": str(lm.device),
            "batch_size": prep.batch_size, "batch_size_setting": settings.batch_size, "schedule": settings.schedule,
            "max_new_tokens": settings.max_new_tokens,
            "max_position_embeddings": answered.max_positions,
            "config_hash": digest, "run_name": out_dir.name,
            "newly_answered": new, "skipped_unreadable_images": folder_skipped,
            "wall_time_s": time.perf_counter() - started, "generation_time_s": seconds,
            "tokens_per_s": answered.generated_tokens / seconds if seconds else None,
            "questions_per_s": new / seconds if seconds else None,
        })
        write_json_atomic(out_dir / "metrics.json", metrics)
        remove_finished_shard_folders(out_dir, set(answered.finished), digest)  # e.g. of an abandoned shard=i/3 attempt
    return metrics


def _print_summary(prep: _Prepared, answered: _Answered, metrics: dict, out_dir: Path) -> None:
    """The run's one line: accuracy on this run's questions (and the folder's, when it holds more), where it went."""
    this = metrics["this_run"]
    union = ("" if metrics["n"] == this["n"]
             else f"; the run folder answers {metrics['n']}: {_accuracy_text(metrics['accuracy'])}")
    skipped = answered.skipped
    skip = f", {len(skipped)} skipped (unreadable image)" if skipped else ""
    accuracy = _accuracy_text(this["accuracy"]) + ("" if metrics["scored"] else " (unscored: no reference answers)")
    print(f"{_run_line_head(prep.dataset.name, prep.method_name, prep.budget, prep.settings.budget_ratio, prep.params)}: "
          f"accuracy {accuracy} on {this['n']} questions ({len(answered.todo) - len(skipped)} new{skip}, "
          f"{metrics['wall_time_s']:.1f} s){union} -> {out_dir}")


def _skipped_in_folder(out_dir: Path, digest: str, skipped: list[str], finished: dict) -> list[str]:
    """The questions of the run folder left out for an unreadable image: those of earlier runs of this folder (its
    metrics.json) still unanswered, then this run's; metrics.json describes the folder, not one invocation."""
    try:
        earlier = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        earlier = {}
    before = earlier.get("skipped_unreadable_images") if earlier.get("config_hash") == digest else None
    before = [str(q) for q in before] if isinstance(before, list) else []
    return [q for q in dict.fromkeys(before + skipped) if q not in finished]


def _run_line_head(dataset: str, method_name: str, budget: int | None, ratio: float | None, params: dict) -> str:
    """The start of a run's printed line: ``gqa svd k=16 tau=0.5`` (with the parameters that differ from the
    defaults, so that the jobs of a parameter sweep say which is which)."""
    return f"{dataset} {method_name} {budget_text(budget, ratio)}{_params_text(method_name, params)}"


def _params_text(method_name: str, params: dict) -> str:
    """The method parameters that differ from ``configs/method/<name>.yaml`` (`` tau=0.5``); "" for the defaults."""
    from svdprune.pruning import default_params

    defaults = default_params(method_name)
    changed = [f"{key}={value}" for key, value in params.items() if key not in defaults or defaults[key] != value]
    return "".join(f" {text}" for text in changed)


def _accuracy_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _merge_if_complete(out_dir: Path, records: list[Record], digest: str, shard,
                       wait_s: float = 30.0) -> list[dict] | None:
    """Merge the shard files under the run folder's lock; None while some shard has questions left.

    Two shards that finish together both try: the one that finds the folder locked waits for it (up to
    ``wait_s``; the other holds it only to check or merge), then checks again, because the other may have
    checked before this shard's last answers were written and so not merged. A folder still busy after that
    (an unsharded run on it) leaves the merge to the next run of any shard command (a note says so)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with RunLock(out_dir):
                return merge_shards(out_dir, [r.question_id for r in records], digest, shard.count)
        except RunFolderBusy:
            if time.monotonic() > deadline:
                print(f"note: {out_dir} stayed locked by another run; rerun this shard's command to merge the "
                      "shard files once it has finished", file=sys.stderr)
                return None
            time.sleep(0.1)


@contextlib.contextmanager
def _write_errors_are_user_errors(out_dir: Path):
    """A failed write of the run folder is a one-line UserError naming the folder and what to do; what was written
    stays. Full disk or quota, a folder that cannot be written (permissions, a read-only mount, an immutable file),
    a file-size limit (``ulimit -f``): each is the user's to fix, never a traceback."""
    try:
        yield
    except OSError as exc:
        message = write_error_message(exc, out_dir)
        if message is None:
            raise
        raise UserError(message) from None


# errno -> (what happened, what to do)
_WRITE_ERRORS = {
    errno.EACCES: ("permission denied", "make it writable or choose another output_dir="),
    errno.EPERM: ("operation not permitted (an immutable or append-only file?)",
                  "make it writable or choose another output_dir="),
    errno.EROFS: ("read-only file system", "choose another output_dir= on a writable disk"),
    errno.EFBIG: ("file too large (a file-size limit, ulimit -f?)", "raise the limit"),
}


def write_error_message(exc: OSError, out_dir: Path) -> str | None:
    """The one line for an OSError met while writing ``out_dir``, or None for an error that is not about writing."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full while writing {out_dir}: every answer written so far is kept; free some space and rerun "
                "the same command to continue")
    if exc.errno not in _WRITE_ERRORS:
        return None
    what, todo = _WRITE_ERRORS[exc.errno]
    where = exc.filename if exc.filename is not None else out_dir
    return (f"cannot write {where}: {what}; every answer written so far is kept: {todo}, then rerun the same "
            "command to continue")


def _max_positions(lm) -> int | None:
    config = lm.model.config
    text = getattr(config, "text_config", config)
    return getattr(text, "max_position_embeddings", None)


def _warn_positions(rows: list[dict], max_positions: int | None, model: str, warned: bool) -> bool:
    """Warn (once per run, on stderr) when a question used more positions than the model was trained for:
    the run goes on (LLaVA itself does not stop there), metrics.json counts them (``over_max_positions``).
    Returns whether the run has warned."""
    over = [r for r in rows if _over(r, max_positions)]
    if over and not warned:
        r = over[0]
        print(f"warning: question {r['question_id']!r} needs {r['prompt_tokens'] + r['generated_tokens']} positions "
              f"(prompt {r['prompt_tokens']} + generated {r['generated_tokens']}), more than {model}'s "
              f"max_position_embeddings={max_positions}: such answers are unreliable (metrics.json: "
              "over_max_positions)", file=sys.stderr)
    return warned or bool(over)


def _over(row: dict, max_positions: int | None) -> bool:
    return max_positions is not None and row["prompt_tokens"] + row["generated_tokens"] > max_positions


def _what_differs(out_dir: Path, prints: dict) -> str:
    """", the dataset content differs" etc. from the folder's metrics.json, where it says."""
    try:
        recorded = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return ""
    what = [name for name, key, ours in (("questions/images", "dataset_fingerprint", prints["dataset"]),
                                          ("model weights", "model_fingerprint", prints["model"]),
                                          ("method weights (clip_path)", "method_weights_fingerprint",
                                           prints.get("method_weights")))
            if key in recorded and recorded[key] != ours]
    return f"; other {' and '.join(what)}" if what else ""


def selection_label(dataset_ids: list[str], answered: set[str], settings: Settings, seed: int,
                    skipped: Iterable[str] = ()) -> str:
    """What the answered question set is, in words: all of the dataset, its first N, or a mix. ``skipped``: questions
    of the selection left out for an unreadable image (``on_bad_image=skip``), named as such."""
    left_out = set(skipped) - answered
    covered = answered | left_out
    n = len(covered)
    if n == len(dataset_ids):
        label = f"all {n} questions"
    elif set(dataset_ids[:n]) == covered:
        label = f"the first {n} questions (limit={n})"
    elif settings.subset is not None and settings.limit is None and n == settings.subset:
        label = f"a seeded subset of {n} questions (subset={n}, seed={seed})"
    else:
        label = f"{n} questions (several limit/subset selections)" if left_out else \
            f"{n} answered questions (several limit/subset selections)"
    if left_out:
        label += f", less {len(left_out)} skipped (unreadable image): {len(answered)} answered"
    return label


def run_metrics(dataset, records: list[Record], finished: dict, settings: Settings, cfg: DictConfig, method,
                params: dict, budget: int, max_positions: int | None, skipped: Iterable[str] = ()) -> dict:
    """Metrics over every question the run folder answers (predictions.jsonl, in the dataset's order): the
    question set is stated (``selection``, ``question_ids_sha256``) and is what every report reads. The
    invocation's own selection (limit/subset) is under ``this_run``."""
    answered_rows = [finished[r.question_id] for r in dataset.records if r.question_id in finished]
    if not answered_rows:
        raise UserError("no question was answered: every selected question's image was skipped as unreadable")
    scored = dataset.scored  # False: no question has reference answers (eval.datasets.check_references)
    correct = [score(dataset.scorer, row["prediction"], row["answers"]) if scored else None for row in answered_rows]
    chosen = [r.question_id for r in records if r.question_id in finished]
    chosen_set = set(chosen)
    this_correct = [c for row, c in zip(answered_rows, correct) if row["question_id"] in chosen_set]
    n_layers = len(answered_rows[0]["image_tokens_per_layer"])
    n = len(answered_rows)
    metrics = {
        "accuracy": 100.0 * sum(correct) / n if scored else None, "n": n, "scored": scored,
        "selection": selection_label([r.question_id for r in dataset.records],
                                     {row["question_id"] for row in answered_rows}, settings, cfg.seed, skipped),
        "question_ids_sha256": question_ids_sha256(row["question_id"] for row in answered_rows),
        "this_run": {"limit": settings.limit, "subset": settings.subset, "n": len(chosen),
                     "accuracy": 100.0 * sum(this_correct) / len(this_correct) if this_correct and scored else None,
                     "question_ids_sha256": question_ids_sha256(chosen)},
        "scorer": dataset.scorer, "dataset": dataset.name, "dataset_revision": dataset.revision,
        "dataset_info": dataset.info, "dataset_questions": len(dataset.records), "seed": cfg.seed,
        "method": cfg.method.name, "method_kind": method.kind, "method_params": params, "budget": budget,
        **({"budget_ratio": settings.budget_ratio} if settings.budget_ratio is not None else {}),
        "method_info": method.describe() if hasattr(method, "describe") else {},
        "kept_tokens_mean": sum(r["kept_tokens"] for r in answered_rows) / n,
        "image_tokens_per_layer_mean": [sum(r["image_tokens_per_layer"][l] for r in answered_rows) / n
                                        for l in range(n_layers)],
        "over_max_positions": sum(_over(row, max_positions) for row in answered_rows),
    }
    metrics["image_tokens_mean_over_layers"] = sum(metrics["image_tokens_per_layer_mean"]) / n_layers
    for key in sorted(set(answered_rows[0]) - set(metrics)):  # numeric per-image values a method recorded
        values = [row.get(key) for row in answered_rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and key not in _ROW_KEYS:
            metrics[f"{key}_mean"] = sum(values) / len(values)
    if scored:
        metrics.update(_breakdown(answered_rows, correct))
    return metrics


def _breakdown(rows: list[dict], correct: list[float]) -> dict:
    """Accuracy per question type, where the data has types."""
    by_type: dict[str, list[float]] = {}
    for row, value in zip(rows, correct):
        if row.get("question_type"):
            by_type.setdefault(row["question_type"], []).append(value)
    if not by_type:
        return {}
    return {"by_type": {t: {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())}}
