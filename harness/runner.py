"""One run: dataset -> method -> model -> batched pruned generation -> predictions.jsonl -> metrics.json.

Validation of user values happens here, before anything is written: a bad value raises ``UserError``
and no results file is started.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from eval.datasets import Record, check_images_readable, load_dataset, load_image
from eval.scoring import SCORERS, score

from svdprune.errors import UserError
from svdprune.models import load_model
from svdprune.pruning import METHODS, build_method
from svdprune.surgery import generate

from .results import PredictionWriter, read_predictions, write_json_atomic

# Config keys that do not change any prediction: they stay out of the run hash, so that
# e.g. a rerun with a larger limit or another batch size continues the same run.
_NOT_HASHED_MODEL = ("device",)
_NOT_HASHED_DATASET = ("path", "image_folder", "questions_file", "expect_full")


# per-question fields the runner itself writes (not method statistics)
_ROW_KEYS = {"kept_tokens", "prompt_tokens", "generated_tokens"}


def config_hash(cfg: DictConfig, budget: int) -> str:
    """sha256 of everything that changes a prediction (model, method, budget, dataset version, decoding)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    identity = {
        "model": {k: v for k, v in container["model"].items() if k not in _NOT_HASHED_MODEL},
        "method": container["method"],
        "budget": budget,
        "dataset": {k: v for k, v in container["dataset"].items() if k not in _NOT_HASHED_DATASET},
        "max_new_tokens": container["max_new_tokens"],
        "seed": container["seed"],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_folder(cfg: DictConfig, budget: int) -> tuple[Path, str]:
    """(results folder, config hash) of a run: <output_dir>/<dataset>/<method>/<run_name>, where run_name
    defaults to k<budget>-<model>-<first 10 hex digits of the hash>. ``budget`` is the effective one
    (the model's patch count for vanilla)."""
    digest = config_hash(cfg, budget)
    run_name = cfg.get("run_name") or f"k{budget}-{cfg.model.name}-{digest[:10]}"
    return Path(cfg.output_dir) / cfg.dataset.name / cfg.method.name / run_name, digest


def _positive_int_or_none(cfg: DictConfig, key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{key}={value!r} must be a positive integer (or null)")
    return value


def select_records(records: list[Record], limit: int | None, subset: int | None, seed: int) -> list[Record]:
    """``limit``: the first N in the dataset's order; ``subset``: a seeded sample covering every image."""
    if subset is not None:
        from eval.subsets import stratified_subset

        records = stratified_subset(records, subset, seed)
    return records[:limit] if limit is not None else records


def _kept_tokens(per_layer: list[int]) -> int:
    """Image tokens after the method's (first) cut: layer 0's count, or the first count that differs."""
    first = per_layer[0]
    return next((n for n in per_layer if n != first), first)


def run(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    method_name = cfg.method.name
    if method_name not in METHODS:
        raise UserError(f"unknown method {method_name!r}; allowed: {', '.join(sorted(METHODS))}")
    budget = cfg.budget
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise UserError(f"budget={budget!r} must be an integer number of vision tokens")
    limit = _positive_int_or_none(cfg, "limit")
    subset = _positive_int_or_none(cfg, "subset")
    batch_size = _positive_int_or_none(cfg, "batch_size") or 1

    dataset = load_dataset(cfg.dataset)
    if dataset.scorer not in SCORERS:
        raise UserError(f"unknown scorer {dataset.scorer!r}; allowed: {', '.join(SCORERS)}")
    records = select_records(dataset.records, limit, subset, cfg.seed)
    if not records:
        raise UserError(f"dataset {dataset.name!r} selected no questions (limit={limit}, subset={subset})")

    if not 1 <= budget:
        raise UserError(f"budget={budget} is outside 1..576 (vision tokens the LLM sees)")
    params = OmegaConf.to_container(cfg.method.params, resolve=True) if cfg.method.get("params") is not None else {}
    method = build_method(method_name, budget, params)  # validates the method's own parameters
    lm = load_model(cfg.model)
    if method.kind == "none":
        budget = method.budget = lm.num_patches
    if not 1 <= budget <= lm.num_patches:
        raise UserError(f"budget={budget} is outside 1..{lm.num_patches} (vision tokens of {lm.name})")
    method.check(lm)
    check_images_readable(records)

    out_dir, digest = run_folder(cfg, budget)
    run_name = out_dir.name
    predictions_path = out_dir / "predictions.jsonl"
    finished = {row["question_id"]: row for row in read_predictions(predictions_path)}
    stale = {row.get("config_hash") for row in finished.values()} - {digest}
    if stale:
        raise UserError(f"{predictions_path} holds predictions of another configuration (hash {stale.pop()[:10]}); "
                        "choose another run_name or output_dir")
    todo = [r for r in records if r.question_id not in finished]

    generated_tokens, generation_seconds = 0, 0.0
    bar = tqdm(total=len(records), initial=len(records) - len(todo), disable=not cfg.get("progress", True),
               desc=f"{dataset.name}/{method_name}/k{budget}", unit="q")
    with PredictionWriter(predictions_path) as writer:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = [load_image(r) for r in batch]
            t0 = time.perf_counter()
            out = generate(lm, method, [r.question for r in batch], images, instruction=dataset.instruction,
                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
            generation_seconds += time.perf_counter() - t0
            rows = []
            for i, record in enumerate(batch):
                generated_tokens += len(out.token_ids[i])
                row = {
                    "question_id": record.question_id, "prompt": out.prompts[i], "prediction": out.texts[i],
                    "answers": record.answers, "question_type": record.question_type,
                    "kept_tokens": _kept_tokens(out.image_tokens_per_layer[i]),
                    "image_tokens_per_layer": out.image_tokens_per_layer[i],
                    "prompt_tokens": out.prompt_lengths[i], "generated_tokens": len(out.token_ids[i]),
                    "config_hash": digest,
                }
                row.update({key: values[i] for key, values in out.stats.items()})
                row.update(record.extra.get("recorded", {}))  # per-question fields the dataset asks to keep
                finished[record.question_id] = row
                rows.append(row)
            writer.write(rows)
            bar.update(len(batch))
    bar.close()

    selected = [finished[r.question_id] for r in records]
    correct = [score(dataset.scorer, row["prediction"], row["answers"]) for row in selected]
    accuracy = 100.0 * sum(correct) / len(correct)
    n_layers = len(selected[0]["image_tokens_per_layer"])
    metrics = {
        "accuracy": accuracy, "n": len(selected), "scorer": dataset.scorer,
        "dataset": dataset.name, "dataset_revision": dataset.revision, "dataset_info": dataset.info,
        "limit": limit, "subset": subset, "seed": cfg.seed,
        "method": method_name, "method_kind": method.kind, "method_params": params, "budget": budget,
        "method_info": method.describe() if hasattr(method, "describe") else {},
        "kept_tokens_mean": sum(r["kept_tokens"] for r in selected) / len(selected),
        "image_tokens_per_layer_mean": [sum(r["image_tokens_per_layer"][l] for r in selected) / len(selected)
                                        for l in range(n_layers)],
        "model": lm.name, "model_revision": lm.revision, "dtype": str(lm.dtype).replace("torch.", ""),
        "device": str(lm.device), "batch_size": batch_size, "max_new_tokens": cfg.max_new_tokens,
        "config_hash": digest, "run_name": run_name,
        "newly_answered": len(todo), "wall_time_s": time.perf_counter() - started,
        "generation_time_s": generation_seconds,
        "tokens_per_s": generated_tokens / generation_seconds if generation_seconds else None,
        "questions_per_s": len(todo) / generation_seconds if generation_seconds else None,
    }
    metrics["image_tokens_mean_over_layers"] = sum(metrics["image_tokens_per_layer_mean"]) / n_layers
    for key in sorted(set(selected[0]) - set(metrics)):  # numeric per-image values a method recorded
        values = [row.get(key) for row in selected]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and key not in _ROW_KEYS:
            metrics[f"{key}_mean"] = sum(values) / len(values)
    metrics.update(_breakdown(selected, correct))
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(f"{dataset.name} {method_name} k={budget}: accuracy {accuracy:.2f} on {len(selected)} questions "
          f"({len(todo)} new, {metrics['wall_time_s']:.1f} s) -> {out_dir}")
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
