"""What a run actually read: content fingerprints of the question set and of the model's weights.

A run folder is named after a hash of everything that changes a prediction (:func:`config_hash`, :func:`run_folder`);
that hash includes these fingerprints, so two datasets with the same question ids, or retrained weights in the
same model folder, never land in (and never silently resume) one run folder.

* Question set (:func:`dataset_fingerprint`): sha256 over every question in the dataset's order (id, question
  line, reference answers), the loader's answer instruction, and each image's content (the sha256 of the image
  file, or of the parquet/arrow files an image table is read from). ``limit``/``subset`` are not part of it:
  a run with a larger limit continues the same run.
* Model (:func:`model_fingerprint`): for a local folder, the sha256 of each file the loader reads (weights,
  config, tokenizer and preprocessor files; not the model card or logs); for a hub id, the commit of the cached
  snapshot; for ``kind: tiny``, nothing (its config, already hashed, builds it).

File contents are hashed in full once and memoised by (absolute path, size, mtime, ctime, inode) in
``$SVDPRUNE_CACHE_DIR/file_sha256.json`` (default ``~/.cache/svdprune``), so later runs and sweep resume
checks only ``stat`` the files. A copy of the data or weights elsewhere has the same fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from eval.datasets import Record
from svdprune.models import PROJECT_ROOT, device_type, in_project, resolve_dtype

from .results import write_json_atomic

CHUNK = 1 << 20
# files of a llava-hf folder that change what the model computes (what from_pretrained / the tokenizer /
# the preprocessor read); README.md, training logs and the like are left out
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "*.tiktoken", "config.json",
                       "generation_config.json", "tokenizer*.json", "special_tokens_map.json", "added_tokens.json",
                       "vocab.json", "merges.txt", "preprocessor_config.json", "processor_config.json",
                       "chat_template.*", "*.safetensors.index.json")


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svdprune"
    return Path(os.environ.get("SVDPRUNE_CACHE_DIR") or default)


class Sha256Memo:
    """sha256 of files, memoised on disk by (path, size, mtime_ns, ctime_ns, inode). A lost update (two processes saving
    at once) only costs a recomputation."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "file_sha256.json"
        try:
            self._memo = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._memo = {}
        self._dirty = False

    def digest(self, file: Path) -> str:
        file = Path(file).resolve()
        st = file.stat()
        # ctime changes with every write and every metadata change and cannot be set back (``touch -d`` sets
        # mtime only): a file rewritten and its mtime restored is hashed again
        key = f"{file}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
        if key not in self._memo:
            h = hashlib.sha256()
            with file.open("rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    h.update(block)
            self._memo[key] = h.hexdigest()
            self._dirty = True
        return self._memo[key]

    def save(self) -> None:
        if self._dirty:
            try:
                write_json_atomic(self.path, self._memo)
            except OSError:  # a read-only home: the memo only saves time
                pass
            self._dirty = False


def _image_source_files(image) -> list[Path] | None:
    """The files an in-memory image callable reads (an image table's parquet / arrow files), if it says."""
    table = getattr(image, "table", None)
    files = getattr(table, "files", None)
    if files:
        return [Path(f) for f in files]
    cache_files = getattr(getattr(table, "dataset", None), "cache_files", None)
    if cache_files:
        return [Path(c["filename"]) for c in cache_files]
    return None


def dataset_fingerprint(dataset, memo: Sha256Memo) -> str:
    """sha256 of the question set as read (see the module docstring)."""
    h = hashlib.sha256(json.dumps(["instruction", dataset.instruction]).encode())
    seen_files: dict[str, str] = {}

    def file_digest(path: Path) -> str:
        key = str(path)
        if key not in seen_files:
            seen_files[key] = memo.digest(path)
        return seen_files[key]

    for record in dataset.records:
        if callable(record.image):
            files = _image_source_files(record.image)
            where = [getattr(record.image, "row", None), getattr(record.image, "column", None)]  # not its path
            image = [*map(file_digest, files), *where] if files else ["memory", record.image_id]
        else:
            try:
                image = file_digest(Path(record.image))
            except OSError:  # a missing file is reported by the image checks, with the question it belongs to
                image = "unreadable"
        h.update(json.dumps([record.question_id, record.question, record.answers, image]).encode())
    return h.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    files = {p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(files)


def hub_snapshot(repo: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a hub model in the HF cache (…/snapshots/<commit>), or None if not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an odd id or cache layout: not resolvable offline
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path)


def model_identity(model_cfg, memo: Sha256Memo) -> dict:
    """{"name": ..., "fingerprint": ...}: the model as recorded in metrics.json and hashed into the run.

    ``name`` does not depend on the working directory: "tiny", the hub id, or the folder's absolute path
    (relative to the project for folders inside it, e.g. ``checkpoints/mini``). ``fingerprint`` is None for
    the tiny model (its config builds it) and for a hub model that is not in the local cache yet.
    """
    if model_cfg.get("kind") != "pretrained":
        return {"name": str(model_cfg.get("name")), "fingerprint": None}
    raw = str(model_cfg.get("path"))
    path = in_project(raw)
    if is_local(path):
        folder = Path(path).expanduser().resolve()
        try:
            name = folder.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            name = str(folder)
        files = {f.name: memo.digest(f) for f in _model_files(folder)} if folder.is_dir() else {}
        return {"name": name, "fingerprint": _hash(files) if files else None}
    snapshot = hub_snapshot(raw, model_cfg.get("revision"))
    return {"name": raw, "fingerprint": f"hub:{raw}@{snapshot.name}" if snapshot is not None else None}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def question_ids_sha256(ids: Iterable[str]) -> str:
    """sha256 of a question-id list (in the given order): names the exact question set a metric is over."""
    return _hash([str(i) for i in ids])


# ------------------------------------------------------------------------------- the run's identity

# Config keys that do not change any prediction: they stay out of the run hash, so that
# e.g. a rerun with a larger limit or another batch size continues the same run. Where the data and the
# weights are is not part of it either: what they hold is (their fingerprints, above).
_NOT_HASHED_MODEL = ("device", "path")
_NOT_HASHED_DATASET = ("path", "image_folder", "questions_file", "expect_full", "cache_dir", "verify_images")


def fingerprints(cfg: DictConfig, dataset, memo: Sha256Memo | None = None) -> dict:
    """What the run reads, as hashed into its identity: {"dataset": sha256 of the question set as loaded,
    "model": the weights' fingerprint (None for the tiny model), "model_name": the model as recorded}, plus
    "method_weights" when the method reads weights of its own (TRIM's ``clip_path``) that can be fingerprinted."""
    memo = memo or Sha256Memo()
    try:
        model = model_identity(cfg.model, memo)
        prints = {"dataset": dataset_fingerprint(dataset, memo), "dataset_source": dataset.info.get("source"),
                  "model": model["fingerprint"],
                  "model_name": model["name"], "device_type": device_type(str(cfg.model.get("device", "auto"))),
                  "dtype": resolve_dtype(str(cfg.model.get("dtype", "float32")), str(cfg.model.get("device", "auto")))}
        params = cfg.method.get("params") or {}
        clip_path = params.get("clip_path")
        if isinstance(clip_path, str) and clip_path != "tiny":
            clip = model_identity({"kind": "pretrained", "path": clip_path, "revision": params.get("revision")},
                                  memo)["fingerprint"]
            if clip is not None:
                prints["method_weights"] = clip
        return prints
    finally:
        memo.save()


def budget_label(budget: int | None, ratio: float | None) -> str:
    """How a run's budget is named in its folder and progress bar: ``k64`` (tokens) or ``r0.25`` (a share of each
    image's own tokens, ``budget_ratio``)."""
    return f"r{ratio:g}" if ratio is not None else f"k{budget}"


def budget_text(budget: int | None, ratio: float | None) -> str:
    """The budget in a run's printed lines: ``k=64`` or ``budget_ratio=0.25``."""
    return f"budget_ratio={ratio:g}" if ratio is not None else f"k={budget}"


def config_hash(cfg: DictConfig, budget: int | None, prints: dict) -> str:
    """sha256 of everything that changes a prediction or its score: model (and its weights' fingerprint),
    method, budget, dataset version (and the question set's content fingerprint), decoding."""
    container = OmegaConf.to_container(cfg, resolve=True)
    model = {k: v for k, v in container["model"].items() if k not in _NOT_HASHED_MODEL}
    if model.get("dtype") == "auto" and prints.get("dtype"):
        model["dtype"] = prints["dtype"]  # what auto resolved to here: a float16 and a float32 run never share
    if container["model"].get("kind") == "pretrained" and prints["model"] is None:
        model["path"] = container["model"].get("path")  # no fingerprint (not resolvable): the path stands in
    dataset = {k: v for k, v in container["dataset"].items() if k not in _NOT_HASHED_DATASET}
    if dataset.get("source") == "auto" and prints.get("dataset_source"):
        dataset["source"] = prints["dataset_source"]  # what auto chose: the same run as naming that source
    identity = {
        "model": model,
        "model_fingerprint": prints["model"],
        "method": container["method"],
        "budget": budget,
        "dataset": dataset,
        "dataset_fingerprint": prints["dataset"],
        "max_new_tokens": container["max_new_tokens"],
        "seed": container["seed"],
    }
    if cfg.get("budget_ratio") is not None:  # only then: every count-budget run keeps its hash
        identity["budget_ratio"] = float(cfg.budget_ratio)
    if prints.get("method_weights") is not None:  # only then: the hashes of other runs stay as they were
        identity["method_weights_fingerprint"] = prints["method_weights"]
    if prints.get("device_type", "cpu") != "cpu":  # a GPU's kernels round (and break ties) otherwise: a CPU
        identity["device_type"] = prints["device_type"]  # run is never resumed there; CPU hashes stay as they were
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_folder(cfg: DictConfig, budget: int, prints: dict) -> tuple[Path, str]:
    """(results folder, config hash) of a run: <output_dir>/<dataset>/<method>/<run_name>, where run_name
    defaults to k<budget>-<model>-<first 10 hex digits of the hash>. ``budget`` is the effective one
    (the model's patch count for vanilla); ``prints`` are the run's :func:`fingerprints`."""
    digest = config_hash(cfg, budget, prints)
    label = budget_label(budget, cfg.get("budget_ratio"))
    run_name = str(cfg.get("run_name") or f"{label}-{cfg.model.name}-{digest[:10]}")
    return Path(cfg.output_dir) / cfg.dataset.name / cfg.method.name / run_name, digest


def select_records(records: list[Record], limit: int | None, subset: int | None, seed: int) -> list[Record]:
    """``limit``: the first N in the dataset's order; ``subset``: a seeded sample covering every image."""
    if subset is not None:
        from eval.subsets import stratified_subset

        records = stratified_subset(records, subset, seed)
    return records[:limit] if limit is not None else records
