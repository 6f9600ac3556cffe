"""The model families the engine runs, and the one place that picks a family's code for a model.

A family is one module in front of the shared LLM engine (:mod:`svdprune.surgery`): :mod:`svdprune.llava15`
(LLaVA-1.5) and :mod:`svdprune.qwen25vl` (Qwen2.5-VL). This module loads a model of either family
(:func:`load_model`, :func:`from_model`), refuses a method its family does not run (:func:`check_method`) and hands a
batch to the family's front (:func:`generate`, :func:`generate_by_image`). The engine and the fronts import nothing
from here, so the imports run one way: families -> fronts -> engine -> pruning / models.
"""
from __future__ import annotations

import torch
from PIL import Image

from . import llava15, qwen25vl
from .errors import UserError
from .models import LoadedModel, build_tiny, llava_from_model, load_pretrained
from .pruning import METHODS
from .surgery import Generation


def load_model(cfg, progress: bool = True) -> LoadedModel:
    """Dispatch on ``cfg.kind``: ``pretrained`` (hub id / local folder) or ``tiny``, and on ``cfg.family``:
    LLaVA-1.5 (the default, no ``family`` key) or ``qwen25vl`` (svdprune/qwen25vl.py)."""
    family = cfg.get("family", "llava15")
    if family == "qwen25vl":
        pixels = {"min_pixels": cfg.get("min_pixels") or qwen25vl.DEFAULT_MIN_PIXELS,
                  "max_pixels": cfg.get("max_pixels") or qwen25vl.DEFAULT_MAX_PIXELS}
        if cfg.kind == "pretrained":
            return qwen25vl.load_pretrained(cfg.path, cfg.get("revision"), cfg.dtype, cfg.device, progress=progress,
                                            **pixels)
        if cfg.kind == "tiny":
            return qwen25vl.build_tiny(seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, **pixels,
                                       **{k: cfg[k] for k in ("vision_layers", "text_layers", "initializer_range")
                                          if k in cfg})
        raise UserError(f"unknown model.kind {cfg.kind!r}; allowed: pretrained, tiny")
    if family != "llava15":
        raise UserError(f"unknown model.family {family!r}; allowed: llava15, qwen25vl")
    if cfg.kind == "pretrained":
        return load_pretrained(cfg.path, cfg.get("revision"), cfg.dtype, cfg.device, progress)
    if cfg.kind == "tiny":
        return build_tiny(seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                          **{k: cfg[k] for k in ("vision_layers", "text_layers", "initializer_range") if k in cfg})
    raise UserError(f"unknown model.kind {cfg.kind!r}; allowed: pretrained, tiny")


def from_model(model: torch.nn.Module, tokenizer=None) -> LoadedModel:
    """The engine's view of a model someone else loaded: a ``LlavaForConditionalGeneration`` (LLaVA-1.5) or a
    ``Qwen2_5_VLForConditionalGeneration`` (any dtype, any device; used by :func:`svdprune.prune`). Nothing is moved or
    cast. A model of another class, or a LLaVA config the engine does not handle, is a one-line UserError."""
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    if isinstance(model, Qwen2_5_VLForConditionalGeneration):
        return qwen25vl.from_model(model, tokenizer)
    if not isinstance(model, LlavaForConditionalGeneration):
        raise UserError(f"svdprune.prune() needs a transformers LlavaForConditionalGeneration (LLaVA-1.5) or "
                        f"Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL); got {type(model).__name__}")
    return llava_from_model(model, tokenizer)


FRONTS = {"llava15": llava15, "qwen25vl": qwen25vl}  # model.family -> the family's front


def supported_methods(family: str) -> list[str]:
    """The methods family ``family`` runs: those whose ``needs`` it provides, in registry order."""
    provides = FRONTS[family].CAPABILITIES
    return [name for name, cls in METHODS.items() if not set(cls.needs) - provides]


def check_family_method(family: str, name: str) -> None:
    """One-line UserError when family ``family`` lacks a capability method ``name`` needs, naming why (before any model
    loads: harness/settings.py)."""
    front_module = FRONTS[family]
    missing = sorted(set(METHODS[name].needs) - front_module.CAPABILITIES)
    if missing:
        why = "; ".join(front_module.LACKS.get(c, f"it needs {c}, which this family does not provide") for c in missing)
        raise UserError(f"method={name} does not run on {front_module.LABEL}: {why}; methods that do: "
                        f"{', '.join(supported_methods(family))}")


def check_method(lm: LoadedModel, method) -> None:
    """Raise UserError if ``method`` cannot run on ``lm``: a capability its model family lacks (with the reason), then
    the method's own checks (schedule depth, budget)."""
    name = method_name(method)
    if name in METHODS:
        check_family_method(lm.family, name)
    check_family = getattr(method, "check_family", None)  # a wrapper (a timing harness) may have only check()
    if check_family is not None:
        check_family(FRONTS[lm.family].CAPABILITIES)
    method.check(lm)


def method_name(method) -> str:
    """The registry name of a method object (its class's ``name``), or its class name."""
    return getattr(type(method), "name", None) or type(method).__name__


def front(lm: LoadedModel):
    """The model family's front of the engine: the module :mod:`svdprune.llava15` or :mod:`svdprune.qwen25vl`. Each
    has ``preprocess(lm, image)``, ``generate(...)`` and ``generate_by_image(...)`` with the contracts below."""
    return FRONTS[lm.family]


def preprocess(lm: LoadedModel, image: Image.Image):
    """One image as the model's family prepares it: LLaVA-1.5's padded 336 px pixels (3, S, S), or a
    :class:`svdprune.qwen25vl.QwenImage` (its own size's patches and grid)."""
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
    caller) carries images from one batch to the next on LLaVA-1.5 (:func:`svdprune.llava15.generate_by_image`).
    Same predictions as :func:`generate` on the same questions (up to floating-point summation order).
    """
    assert len(questions) == len(image_keys), f"{len(questions)} questions for {len(image_keys)} images"
    check_method(lm, method)
    return front(lm).generate_by_image(lm, method, questions, image_keys, pixels, instruction=instruction,
                                       max_new_tokens=max_new_tokens, seed=seed, prefixes=prefixes)
