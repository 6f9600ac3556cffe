"""Every configuration value checked before any data or weights are touched (:func:`check_config`).

run.py calls it before deciding whether a sweep job can be skipped, so that e.g. ``+tau=0.5`` (a new top-level
key, not SVD-Prune's ``method.params.tau``) is an error instead of a silent tau 0.9 run.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from svdprune.errors import UserError

from .schedule import check_schedule
from .shard import Shard, parse_shard

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "method", "dataset")
# keys that come from configs/experiment/*.yaml or Hydra itself rather than config.yaml's own list
EXTRA_TOP_LEVEL = ("experiment", "sweep", "hydra")
ON_BAD_IMAGE = ("error", "skip")


@dataclass(frozen=True)
class Settings:
    """The checked top-level run settings."""

    budget: int
    limit: int | None
    subset: int | None
    batch_size: int
    max_new_tokens: int
    threads: int | None
    repair_predictions: bool
    on_bad_image: str
    schedule: str  # by_image | per_question (harness/schedule.py)
    shard: Shard | None  # this process's block of the questions (shard=i/n, harness/shard.py)


def top_level_keys(configs: Path = CONFIGS) -> list[str]:
    """The top-level settings config.yaml defines, plus the config groups and sweep/Hydra keys."""
    own = OmegaConf.load(configs / "config.yaml")
    return sorted({k for k in own if k not in ("defaults", "hydra")} | set(GROUPS) | set(EXTRA_TOP_LEVEL))


def _unknown_key_hint(cfg: DictConfig, key: str, known: list[str]) -> str:
    value = cfg.get(key)
    for group, node in (("method.params", cfg.method.get("params")), ("model", cfg.get("model")),
                        ("dataset", cfg.get("dataset"))):
        if node is not None and key in node:
            return f"; did you mean {group}.{key}={value}?"
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]}?" if close else f"; allowed: {', '.join(known)}"


def _int(cfg: DictConfig, key: str, low: int, optional: bool) -> int | None:
    value = cfg.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        allowed = f"an integer >= {low}" + (" (or null)" if optional else "")
        raise UserError(f"{key}={value!r}; allowed: {allowed}")
    return value


def _bool(cfg: DictConfig, key: str) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise UserError(f"{key}={value!r}; allowed: true, false")
    return value


def check_config(cfg: DictConfig) -> Settings:
    """One-line :class:`UserError` for the first bad value; reads no data and no weights."""
    from eval.datasets import LOADERS
    from svdprune.models import DTYPES
    from svdprune.pruning import METHODS

    known = top_level_keys()
    for key in cfg:
        if key not in known:
            raise UserError(f"unknown setting {key!r}{_unknown_key_hint(cfg, key, known)}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        if key == "dataset.path":
            raise UserError(f"dataset={cfg.dataset.get('name')} needs dataset.path=<folder with questions.jsonl "
                            "and images/>")
        raise UserError(f"{key} has no value; set it on the command line ({key}=...)")

    if cfg.method.name not in METHODS:
        raise UserError(f"unknown method {cfg.method.name!r}; allowed: {', '.join(sorted(METHODS))}")
    if cfg.dataset.name not in LOADERS:
        raise UserError(f"unknown dataset {cfg.dataset.name!r}; allowed: {', '.join(sorted(LOADERS))}")
    if cfg.model.kind not in ("pretrained", "tiny"):
        raise UserError(f"unknown model.kind {cfg.model.kind!r}; allowed: pretrained, tiny")
    if cfg.model.get("dtype") not in DTYPES:
        raise UserError(f"unknown model.dtype {cfg.model.get('dtype')!r}; allowed: {', '.join(DTYPES)}")

    budget = cfg.budget
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise UserError(f"budget={budget!r} must be an integer number of vision tokens")
    from harness.sweeps import read_num_patches

    patches = read_num_patches(cfg.model)  # known without loading the model (tiny; a local folder), else None
    if not 1 <= budget or (patches is not None and budget > patches and not _ignores_budget(cfg.method.name)):
        high = patches if patches is not None else 576
        raise UserError(f"budget={budget} is outside 1..{high} (vision tokens of {cfg.model.name})")
    on_bad_image = cfg.get("on_bad_image", "error")
    if on_bad_image not in ON_BAD_IMAGE:
        raise UserError(f"on_bad_image={on_bad_image!r}; allowed: {', '.join(ON_BAD_IMAGE)}")
    _int(cfg, "seed", 0, False)
    return Settings(
        budget=budget, limit=_positive(cfg, "limit"), subset=_positive(cfg, "subset"),
        batch_size=_positive(cfg, "batch_size") or 1, max_new_tokens=_int(cfg, "max_new_tokens", 1, False),
        threads=_int(cfg, "threads", 1, True), repair_predictions=_bool(cfg, "repair_predictions"),
        on_bad_image=on_bad_image, shard=parse_shard(cfg.get("shard")),
        schedule=check_schedule(cfg.get("schedule", "by_image")),
    )


def _positive(cfg: DictConfig, key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{key}={value!r} must be a positive integer (or null)")
    return value


def _ignores_budget(method: str) -> bool:
    from harness.sweeps import _method_kind

    try:
        return _method_kind(method) == "none"
    except Exception:  # noqa: BLE001 - a broken method module is reported when the method is built
        return False

