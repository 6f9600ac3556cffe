"""The model families the engine runs: each one module in this package, found here, and the one place that picks a
family's code for a model (as transformers' Auto mappings pick a model class).

A family module (``svdprune/families/<name>.py``) is the whole of what the engine knows about one kind of model, in
front of the shared LLM engine (:mod:`svdprune.surgery`). It provides:

* ``NAME`` (the ``model.family`` value), ``LABEL`` (for people), ``MODEL_TYPE`` (its config.json's
  ``model_type``), ``MODEL_CLASS`` (the transformers class :func:`svdprune.prune` accepts for it);
* ``CAPABILITIES`` (what it offers the methods; a method's ``needs`` must be among them) and ``LACKS`` (capability ->
  why the family lacks it, for the refusal). ``cls_attention``: a CLIP tower whose [CLS] attention the method reads,
  one view per image; ``view_cls_attention``: the same for each CLIP view of an image, the family running the
  method on an image's views as one batch (a per-view budget) and merging the views' kept tokens as FasterVLM's and
  VisPruner's LLaVA-NeXT code does (base view, then the tiles' tokens in the tiled grid's raster order, no
  unpadding, no newline tokens); ``vision_layers``: CLIP's encoder layers; ``clip_text``: CLIP's text tower;
  ``fixed_grid``: one token count for every image;
* loading: ``load(model_cfg, progress)`` (``model.kind`` pretrained: a hub id or local folder; tiny: the random test
  model), ``from_model(model, tokenizer)`` (a model the user loaded), ``max_image_tokens(model_cfg)`` (without
  loading; None when unknown). Each returns or reads a :class:`svdprune.models.LoadedModel`, which carries the vision
  tower, projector and geometry the methods read;
* run.py's path: ``preprocess(lm, image)``, ``generate(...)`` and ``generate_by_image(...)`` (contracts below);
* a user's own inputs (:mod:`svdprune.api`, the lmms-eval models): ``prefill_inputs(lm, method, rows, inputs, *,
  seed, questions)``, ``question_text(lm, suffix_ids)``, ``model_output(logits, loss, cache)``, ``prompt(question,
  instruction)``, ``full_prompt_ids(lm, prompt, image)``, ``model_inputs(lm, prompts, images)``,
  ``answer_text(lm, prompt, continuation)``; optionally ``EXTRA_INPUTS`` (names of inputs a pruned forward takes
  beyond the model's own, e.g. LLaVA-NeXT's ``image_tiles``; they become keyword parameters HF ``generate`` passes).

Adding a family is adding its module here (and its configs and tests); nothing else names it. The engine and the
family modules import nothing from this file, so the imports run one way: families -> family modules -> engine ->
pruning / models.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

import torch
from PIL import Image

from ..errors import UserError
from ..models import LoadedModel
from ..pruning import METHODS
from ..surgery import Generation

#: the family of a model config that names none (the paper's)
DEFAULT = "llava15"


@functools.cache
def _families() -> dict[str, ModuleType]:
    """NAME -> family module, every module of this package, in module-name order."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[module.NAME] = module
    return found


def names() -> list[str]:
    """The families' NAMEs."""
    return list(_families())


def family(name: str) -> ModuleType:
    """The family module of ``model.family`` ``name``; an unknown name is a one-line UserError."""
    families = _families()
    if name not in families:
        raise UserError(f"unknown model.family {name!r}; allowed: {', '.join(families)}")
    return families[name]


def family_of(model_cfg) -> ModuleType:
    """The family module of a model config (its ``family`` key, :data:`DEFAULT` when absent)."""
    return family(model_cfg.get("family") or DEFAULT)


def front(lm: LoadedModel) -> ModuleType:
    """The family module of a loaded model (its front of the engine)."""
    return family(lm.family)


def load_model(model_cfg, progress: bool = True) -> LoadedModel:
    """Load ``model_cfg`` (``kind`` pretrained: a hub id or local folder; tiny: the random test model) with its
    family's loader."""
    if model_cfg.kind not in ("pretrained", "tiny"):
        raise UserError(f"unknown model.kind {model_cfg.kind!r}; allowed: pretrained, tiny")
    return family_of(model_cfg).load(model_cfg, progress)


def max_image_tokens(model_cfg) -> int | None:
    """The most image tokens one image of this model feeds the LLM, without loading it (None when unknown)."""
    return family_of(model_cfg).max_image_tokens(model_cfg)


def from_model(model: torch.nn.Module, tokenizer=None) -> LoadedModel:
    """The engine's view of a model someone else loaded (any dtype, any device; used by :func:`svdprune.prune`),
    through the family whose ``MODEL_CLASS`` the model is. Nothing is moved or cast. A model of another class, or a
    config the family does not handle, is a one-line UserError."""
    classes = {cls.__name__ for cls in type(model).__mro__}
    for module in _families().values():
        if module.MODEL_CLASS in classes:
            return module.from_model(model, tokenizer)
    allowed = " or ".join(f"{m.MODEL_CLASS} ({m.LABEL})" for m in _families().values())
    raise UserError(f"svdprune.prune() needs a transformers {allowed}; got {type(model).__name__}")


def supported_methods(name: str) -> list[str]:
    """The methods family ``name`` runs: those whose ``needs`` it provides, in registry order."""
    provides = family(name).CAPABILITIES
    return [method for method, cls in METHODS.items() if not set(cls.needs) - provides]


def check_family_method(name: str, method: str) -> None:
    """One-line UserError when family ``name`` lacks a capability method ``method`` needs, naming why (before any
    model loads: harness/settings.py)."""
    module = family(name)
    missing = sorted(set(METHODS[method].needs) - module.CAPABILITIES)
    if missing:
        why = "; ".join(module.LACKS.get(c, f"it needs {c}, which this family does not provide") for c in missing)
        raise UserError(f"method={method} does not run on {module.LABEL}: {why}; methods that do: "
                        f"{', '.join(supported_methods(name))}")


def check_method(lm: LoadedModel, method) -> None:
    """Raise UserError if ``method`` cannot run on ``lm``: a capability its model family lacks (with the reason), then
    the method's own checks (schedule depth, budget)."""
    name = method_name(method)
    if name in METHODS:
        check_family_method(lm.family, name)
    check_family = getattr(method, "check_family", None)  # a wrapper (a timing harness) may have only check()
    if check_family is not None:
        check_family(front(lm).CAPABILITIES)
    method.check(lm)


def fit_budget(lm: LoadedModel, method, budget: int | None, budget_ratio: float | None, *,
               model_name: str | None = None) -> int | None:
    """The budget a method built for ``budget`` runs with on ``lm`` (run.py, :func:`svdprune.prune` and the lmms-eval
    models all come through here): vanilla keeps every token (the model's own count); with ``budget_ratio`` each image
    keeps that share of its own tokens and there is no count (None); otherwise ``budget`` must be within the model's
    image tokens (``model_name`` names the model in that error; default ``lm.name``). Sets the method's ``budget`` /
    ``budget_ratio``; then :func:`check_method`."""
    if method.kind == "none":
        budget = method.budget = lm.num_patches
    elif budget_ratio is not None:
        budget, method.budget_ratio = None, budget_ratio
    if budget is not None and not 1 <= budget <= lm.num_patches:
        raise UserError(f"budget={budget} is outside 1..{lm.num_patches} (vision tokens of {model_name or lm.name})")
    check_method(lm, method)
    return budget


def method_name(method) -> str:
    """The registry name of a method object (its class's ``name``), or its class name."""
    return getattr(type(method), "name", None) or type(method).__name__


def preprocess(lm: LoadedModel, image: Image.Image):
    """One image as the model's family prepares it: LLaVA-1.5's padded 336 px pixels (3, S, S), or a
    Qwen2.5-VL ``QwenImage`` (its own size's patches and grid)."""
    return front(lm).preprocess(lm, image)


@torch.inference_mode()
def generate(lm: LoadedModel, method, questions: list[str], images: list[Image.Image], *,
             instruction: str | None, max_new_tokens: int = 128, seed: int = 0) -> Generation:
    """Greedy generation for one batch of (question, image) pairs with ``method`` applied: the straightforward
    per-question path (every row pays for its own image and whole prompt). The reference
    :func:`generate_by_image` is tested against."""
    assert len(questions) == len(images), f"{len(questions)} questions for {len(images)} images"
    check_method(lm, method)
    return front(lm).generate(lm, method, questions, images, instruction=instruction, max_new_tokens=max_new_tokens,
                              seed=seed)


@torch.inference_mode()
def generate_by_image(lm: LoadedModel, method, questions: list[str], image_keys: list, pixels, *,
                      instruction: str | None, max_new_tokens: int = 128, seed: int = 0,
                      prefixes: dict | None = None) -> Generation:
    """Greedy generation for a batch of questions, paying once per distinct image instead of once per question.

    image_keys: one hashable per question naming its image; pixels: key -> the image as :func:`preprocess` made it
    (needed for the keys not in ``prefixes``). ``prefixes`` (key -> the front's per-image state, owned by the
    caller) carries images from one batch to the next.
    Same predictions as :func:`generate` on the same questions (up to floating-point summation order).
    """
    assert len(questions) == len(image_keys), f"{len(questions)} questions for {len(image_keys)} images"
    check_method(lm, method)
    return front(lm).generate_by_image(lm, method, questions, image_keys, pixels, instruction=instruction,
                                       max_new_tokens=max_new_tokens, seed=seed, prefixes=prefixes)
