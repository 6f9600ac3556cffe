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
from svdprune.pruning import check_budget_ratio

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
    batch_size: int | str  # "auto": the largest that fits (svdprune.memory), decided once the model is loaded
    max_new_tokens: int
    threads: int | None
    repair_predictions: bool
    on_bad_image: str
    schedule: str  # by_image | per_question (harness/schedule.py)
    shard: Shard | None  # this process's block of the questions (shard=i/n, harness/shard.py)
    budget_ratio: float | None = None  # Qwen2.5-VL: each image keeps this share of its own tokens (budget unused)


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
    from svdprune.models import DTYPE_SETTINGS, device_type
    from svdprune.pruning import METHODS, check_method_params

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
    params = cfg.method.get("params")
    check_method_params(cfg.method.name, OmegaConf.to_container(params, resolve=True) if params is not None else {})
    if cfg.dataset.name not in LOADERS:
        raise UserError(f"unknown dataset {cfg.dataset.name!r}; allowed: {', '.join(sorted(LOADERS))}")
    if cfg.model.kind not in ("pretrained", "tiny"):
        raise UserError(f"unknown model.kind {cfg.model.kind!r}; allowed: pretrained, tiny")
    from svdprune.families import check_family_method, family_of

    family = family_of(cfg.model)  # an unknown model.family: one line
    check_family_method(family.NAME, cfg.method.name)  # a method the family lacks a capability for: before anything loads
    device_type(str(cfg.model.get("device", "auto")))  # a device torch does not know: one line
    if cfg.model.get("dtype") not in DTYPE_SETTINGS:
        raise UserError(f"unknown model.dtype {cfg.model.get('dtype')!r}; allowed: {', '.join(DTYPE_SETTINGS)}")

    budget = cfg.budget
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise UserError(f"budget={budget!r} must be an integer number of vision tokens")
    patches = read_num_patches(cfg.model)  # known without loading the model (tiny; a local folder), else None
    if not 1 <= budget or (patches is not None and budget > patches and METHODS[cfg.method.name].kind != "none"):
        high = patches if patches is not None else 576
        raise UserError(f"budget={budget} is outside 1..{high} (vision tokens of {cfg.model.name})")
    budget_ratio = check_budget_ratio(cfg.get("budget_ratio"), family.CAPABILITIES, cfg.method.name)
    on_bad_image = cfg.get("on_bad_image", "error")
    if on_bad_image not in ON_BAD_IMAGE:
        raise UserError(f"on_bad_image={on_bad_image!r}; allowed: {', '.join(ON_BAD_IMAGE)}")
    _int(cfg, "seed", 0, False)
    _bool(cfg, "reuse_model")
    check_run_name(cfg.get("run_name"))
    check_folder_path("output_dir", cfg.get("output_dir"))
    return Settings(
        budget=budget, limit=_positive(cfg, "limit"), subset=_positive(cfg, "subset"),
        batch_size="auto" if cfg.get("batch_size") == "auto" else (_positive(cfg, "batch_size", "auto") or 1), max_new_tokens=_int(cfg, "max_new_tokens", 1, False),
        threads=_int(cfg, "threads", 1, True), repair_predictions=_bool(cfg, "repair_predictions"),
        on_bad_image=on_bad_image, shard=parse_shard(cfg.get("shard")),
        schedule=check_schedule(cfg.get("schedule", "by_image")), budget_ratio=budget_ratio,
    )


def check_run_name(value) -> None:
    """``run_name`` is one folder name under ``<output_dir>/<dataset>/<method>/``, one the reports find: no
    path separator, not ``.``/``..``, not hidden (a leading ``.`` or ``_``, which the reports skip)."""
    if value is None:
        return
    name = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if (not name or "/" in name or "\\" in name or "\0" in name or name.startswith((".", "_"))
            or name != name.strip()):
        raise UserError(f"run_name={value!r}; allowed: one folder name (no '/', not starting with '.' or '_', "
                        "which the report scripts skip), or null for the default name")


def check_folder_path(key: str, value) -> None:
    """A folder the run will create: refused in one line when it, or a folder above it, is a file."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{key}={value!r}; allowed: a folder path")
    path = Path(value).expanduser()
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is a file" if part == path else f"is under {str(part)!r}, which is a file"
                raise UserError(f"{key}={value!r} {where}, not a folder; choose a folder path")
            return


def config_choices(group: str, configs: Path = CONFIGS) -> list[str]:
    """The values a config group accepts on the command line: the names of ``configs/<group>/*.yaml``."""
    return sorted(p.stem for p in (configs / group).glob("*.yaml"))


CHECKED_GROUPS = GROUPS + ("experiment",)
# Hydra's flags that take the next argument as their value; the first three replace configs/ altogether
_OTHER_CONFIGS = ("--config-path", "-cp", "--config-dir", "-cd", "--config-name", "-cn")
_FLAGS_WITH_VALUE = _OTHER_CONFIGS + ("--experimental-rerun", "--cfg", "-c", "--package", "-p", "--info", "-i")


def check_overrides(args: list[str], configs: Path = CONFIGS) -> None:
    """Command-line overrides checked before Hydra composes: a config group value that has no file
    (``method=nope``, also inside a sweep ``method=svd,nope``) and an override Hydra cannot parse are one-line
    :class:`UserError` s. Flags (``-m``, ``--cfg``) and values this cannot judge (``glob(...)``) are left to
    Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(arg.split("=")[0] in _OTHER_CONFIGS for arg in args):
        return  # another config tree: Hydra checks against that one
    parser = OverridesParser.create()
    known = top_level_keys(configs)
    for previous, arg in zip([""] + args, args):
        if arg.startswith("-") or (previous in _FLAGS_WITH_VALUE and "=" not in previous):
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "ConfigLoader is not set" in detail or "=" not in arg:  # glob(...) etc.: Hydra expands them
                continue
            raise UserError(f"cannot parse the override {arg!r}: {detail} (see Hydra's override grammar)") from None
        group = override.key_or_group
        if override.package is None and not override.is_add() and not override.is_force_add() \
                and not override.is_delete():
            _check_key(group, override, args, configs, known)
        if group not in CHECKED_GROUPS or override.is_delete():
            continue
        if override.is_sweep_override():
            if not override.is_choice_sweep():
                continue
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        allowed = config_choices(group, configs)
        for value in values:
            if value not in allowed:
                raise UserError(f"unknown {group} {value!r}; allowed: {', '.join(allowed)}")


def _chosen(group: str, args: list[str], configs: Path) -> str | None:
    """The config of ``group`` the command line selects (``method=fastv``), else config.yaml's default; None when it
    is swept or set by an experiment (then Hydra judges the keys)."""
    if any(arg.split("=")[0].lstrip("+~") == "experiment" for arg in args):
        return None
    for arg in reversed(args):
        key, _, value = arg.partition("=")
        if key == group:
            return None if "," in value or "(" in value else value
    for entry in OmegaConf.load(configs / "config.yaml").get("defaults", []):
        if isinstance(entry, DictConfig) and group in entry:
            return entry[group]
    return None


def _group_keys(group: str, choice: str, configs: Path) -> set[str] | None:
    """The dotted keys ``configs/<group>/<choice>.yaml`` defines (``method.params.tau``, ``model.dtype``)."""
    path = configs / group / f"{choice}.yaml"
    if not path.is_file():
        return None
    keys: set[str] = set()

    def walk(node, prefix: str) -> None:
        for key in node:
            keys.add(f"{prefix}.{key}")
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                walk(child, f"{prefix}.{key}")

    walk(OmegaConf.load(path), group)
    return keys


def _check_key(key: str, override, args: list[str], configs: Path, known: list[str]) -> None:
    """A plain ``key=value`` override of a key the configuration does not have (``tau=0.5``, ``budgte=16``,
    ``method.params.taux=0.5``): one line with a "did you mean" where a key of that name or a near spelling exists,
    instead of Hydra's message (Hydra refuses such keys: only ``+key=value`` adds one)."""
    if key.startswith("hydra") or key in GROUPS or key == "experiment":
        return
    value = override.get_value_element_as_str() if not override.is_sweep_override() else ",".join(
        override.sweep_string_iterator()) if override.is_choice_sweep() else None
    shown = f"={value}" if value is not None else ""
    head = key.split(".")[0]
    if head not in GROUPS:
        if head in known:
            return
        groups_keys = set()
        for group in GROUPS:
            choice = _chosen(group, args, configs)
            groups_keys |= (_group_keys(group, choice, configs) or set()) if choice else set()
        for prefix in ("method.params", "model", "dataset"):
            if f"{prefix}.{key}" in groups_keys:
                raise UserError(f"unknown setting {key!r}; did you mean {prefix}.{key}{shown}?")
        close = difflib.get_close_matches(head, known, n=1)
        hint = f"did you mean {close[0]}{shown}?" if close else f"allowed: {', '.join(known)}"
        raise UserError(f"unknown setting {key!r}; {hint}")
    choice = _chosen(head, args, configs)
    keys = _group_keys(head, choice, configs) if choice else None
    if keys is None or key in keys:
        return
    parent = key.rsplit(".", 1)[0]
    siblings = sorted(k.rsplit(".", 1)[1] for k in keys if k.rsplit(".", 1)[0] == parent)
    if parent != head and parent not in keys:  # e.g. method.parms.tau
        siblings = sorted(k for k in keys if "." not in k[len(head) + 1:])
        close = difflib.get_close_matches(key, sorted(keys), n=1)
    else:
        close = [f"{parent}.{c}" for c in difflib.get_close_matches(key.rsplit(".", 1)[1], siblings, n=1)]
    hint = f"did you mean {close[0]}{shown}?" if close else f"{head}={choice} has: {', '.join(siblings) or 'none'}"
    raise UserError(f"unknown setting {key!r} for {head}={choice}; {hint}")


def _positive(cfg: DictConfig, key: str, other: str = "null") -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{key}={value!r} must be a positive integer (or {other})")
    return value


def read_num_patches(model_cfg) -> int | None:
    """Image tokens of the model without loading it, as its family knows them (``max_image_tokens``: the tiny
    model's; a local folder's or the HF cache's config.json; Qwen2.5-VL's most tokens per image); None when unknown."""
    from svdprune.families import max_image_tokens

    return max_image_tokens(model_cfg)