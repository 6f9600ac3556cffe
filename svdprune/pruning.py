"""The pruning interface every method implements, and the method registry.

Two kinds of method, one engine (``svdprune.surgery`` with the model family's front, ``svdprune.families.llava15`` or
``svdprune.families.qwen25vl``):

* **Encoder-side** (``kind = "encoder"``): ``reduce(features, context)`` receives the patch features of
  the vision layer LLaVA uses, before the projector, ``(B, N, D)`` (on Qwen2.5-VL: one image's merged tokens,
  already LLM-input embeddings, ``(1, N, d)``), and returns the features the LLM should see, ``(B, k, D)``, in the
  order it should see them. A method that must run inside the vision
  tower (ToMe) overrides ``encode`` instead. Only the k surviving tokens reach the LLM: the prompt holds
  k image positions, so projector and LLM cost really shrink.
* **Decoder-side** (``kind = "decoder"``): ``after_layer(layer_idx, view)`` is called during prefill after
  every LLM decoder layer with a :class:`LayerView`; returning a new :class:`TokenState` (usually
  ``state.gather(keep)``) makes the following layers see only those tokens. Each layer's KV cache keeps
  exactly the tokens that layer saw, and decoding continues from each layer's own next position.

Algorithms stay pure (tensors in, indices out) in their own files; this module holds only the glue types.
"""
from __future__ import annotations

import copy
import importlib
import inspect
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .errors import UserError


class PruneContext:
    """Per-batch inputs a method may need, and per-image statistics it may record.

    questions: the question lines of the batch (text-aware methods, e.g. TRIM); ``None`` when the engine
    encodes each distinct image once for all its questions (a method that reads them declares
    ``question_dependent``). instruction: the answer instruction appended after them in the prompt (None when
    the dataset has none).
    vision_hidden_states: all hidden states of the vision tower, CLS included (filled by ``encode``).
    seed: the run seed, for methods with randomness.
    """

    def __init__(self, questions: list[str], seed: int = 0, model: nn.Module | None = None,
                 instruction: str | None = None, lm=None):
        self.questions = questions
        self.instruction = instruction  # the answer instruction the prompt appends after the question
        self.seed = seed
        self.model = model
        # the loaded model as its family describes it (svdprune.models.LoadedModel: projector, final norm, vision
        # tower); the family's front sets it, and methods read modules through it (project, final_norm), never through
        # HF attribute paths
        self.lm = lm
        self.vision_hidden_states: tuple[torch.Tensor, ...] | None = None
        # the preprocessed pixels (B, 3, H, W) as float32, before the cast to the model dtype: what a method
        # derives per-image randomness from, so that it does not depend on the dtype (random-k)
        self.pixels_float32: torch.Tensor | None = None
        self.encoder_aux: dict[str, Any] = {}  # tensors a method's encode() hands to its reduce()
        # True when the features reduce() gets are already the LLM-input embeddings (Qwen2.5-VL: its vision tower
        # ends in the patch merger); False for LLaVA, whose projector runs after the cut
        self.features_are_llm_inputs = False
        # (h, w) of the token grid reduce() sees when it is the image's own shape (Qwen2.5-VL); None: a square grid
        self.token_grid: tuple[int, int] | None = None
        # (B, k) bool set by a reduce() whose released code puts zero vectors in some LLM-input slots (HoloV's
        # padding): the engine zeroes those slots after the projector
        self.zero_slots: torch.Tensor | None = None
        self.stats: dict[str, Any] = defaultdict(list)

    def _loaded(self, what: str):
        if self.lm is None:
            raise ValueError(f"{what} needs context.lm (set by the model family's front)")
        return self.lm

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, Dv) vision features -> (B, N, d) LLM-input embeddings through the family's projector, in its dtype."""
        projector = self._loaded("project").projector
        return projector(features.to(next(projector.parameters()).dtype))

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LLM's final norm (what its LM head reads) applied to hidden states (B, L, d)."""
        return self._loaded("final_norm").final_norm(hidden)

    def record(self, **per_image: list) -> None:
        """Store per-image values (each a list of length B), e.g. ``record(rank=[...])``."""
        for key, values in per_image.items():
            self.stats[key] = values


class BudgetMixin:
    """What every method has: a budget (per image on Qwen2.5-VL, whose images have their own token counts) and a check
    of its settings against the model family."""

    budget: int
    #: the registry name (``method=<name>``), the label in tables, whether the SVD-Prune paper compares it (Table 1),
    #: and its row in Table 1 (rows in increasing order)
    name: str
    label: str
    in_paper: bool = False
    table_row: int = 1000
    #: capabilities a model family must provide to run the method (svdprune/families/: ``CAPABILITIES``)
    needs: frozenset = frozenset()
    #: True when every patch still reaches some token the LLM sees (merged or pooled in; eval/evidence.py)
    reaches_all: bool = False
    #: the method's parameters, their types, allowed values and defaults (svdprune/params.py); none by default
    PARAMS: dict = {}

    @classmethod
    def shallow_params(cls, budget: int, n_layers: int) -> dict:
        """Parameters that fit the method's LLaVA-7B schedule to a shallow LLM of ``n_layers`` decoder layers (the
        project's mini and scenes models, harness/mini_protocol.py and scenes_protocol.py); {} when it needs none."""
        return {}
    #: set by the runner for ``budget_ratio=``: each image keeps this share of its own tokens (svdprune/families/qwen25vl.py)
    budget_ratio: float | None = None

    def check_family(self, capabilities: frozenset) -> None:
        """Raise UserError if the method's settings cannot run on a model family that provides ``capabilities`` (its
        ``CAPABILITIES``, svdprune/families/); called before the model loads and again with the loaded model (e.g. a
        budget without a schedule where every image has the same token count)."""

    def with_budget(self, budget: int):
        """This method with another budget and every other setting the same (a shallow copy). A method that derives
        state from its budget at construction recomputes it here."""
        clone = copy.copy(self)
        clone.budget = budget
        return clone


def check_budget_ratio(value, capabilities: frozenset, method: str) -> float | None:
    """``budget_ratio``: None, or a share in (0, 1] of each image's own tokens, for a model family whose images have
    their own token counts (no ``fixed_grid`` among its ``capabilities``: Qwen2.5-VL; LLaVA-1.5's are always 576:
    ``budget`` says it exactly)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"budget_ratio={value!r}; allowed: a share in (0, 1] of each image's tokens, or null")
    if "fixed_grid" in capabilities:
        raise UserError(f"budget_ratio={value} is for models whose images have their own token counts (Qwen2.5-VL); "
                        "this model gives every image the same count (LLaVA-1.5: 576): use budget=N")
    if method == "vanilla":
        raise UserError("budget_ratio with method=vanilla: vanilla keeps every token; leave budget_ratio unset")
    return float(value)


class EncoderPruner(BudgetMixin):
    """Base class of encoder-side methods."""

    kind = "encoder"
    budget: int
    #: True when the kept tokens depend on the question (the method reads ``context.questions``, e.g. TRIM):
    #: the engine then runs ``reduce`` once per question. False: ``encode`` and ``reduce`` run once per distinct
    #: image (their context has ``questions=None``) and the image's questions share the kept tokens and the
    #: prefilled prompt prefix.
    question_dependent = False

    def check(self, lm) -> None:
        """Raise UserError if the method cannot run on the loaded model (called before any result is written)."""

    def describe(self) -> dict:
        """Run-level facts for metrics.json ("method_info"), e.g. a merge schedule or a token split."""
        return {}

    def encode(self, vision_tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int,
               context: PruneContext) -> torch.Tensor:
        """Run the vision tower; return LLaVA's patch features (B, N, D) of ``feature_layer``, CLS dropped."""
        outputs = vision_tower(pixel_values, output_hidden_states=True)
        context.vision_hidden_states = outputs.hidden_states
        return outputs.hidden_states[feature_layer][:, 1:]

    def reduce(self, features: torch.Tensor, context: PruneContext) -> torch.Tensor:
        raise NotImplementedError


class Vanilla(EncoderPruner):
    """No pruning: all N patch features go to the LLM (LLaVA-1.5 as published)."""

    name, label, in_paper, table_row = "vanilla", "Vanilla", True, 0
    kind = "none"
    reaches_all = True

    def __init__(self, budget: int | None = None):
        self.budget = budget

    def reduce(self, features: torch.Tensor, context: PruneContext) -> torch.Tensor:
        return features


@dataclass
class TokenState:
    """The token sequence a decoder layer sees during prefill.

    hidden: (B, L, d) hidden states; position_ids: (B, L) RoPE positions ((3, B, L) for Qwen2.5-VL's M-RoPE: temporal,
    height, width); padding: (B, L) bool, True at
    left-padding; is_image: (B, L) bool, True at image tokens. All batch rows have the same L.
    source_index: (B, L) for a state made by :meth:`gather`, which slot of the previous state each slot came
    from (what the engine cuts earlier layers' KV caches with, for a method that ``cuts_earlier_caches``).
    """

    hidden: torch.Tensor
    position_ids: torch.Tensor
    padding: torch.Tensor
    is_image: torch.Tensor
    source_index: torch.Tensor | None = None

    def gather(self, keep: torch.Tensor) -> "TokenState":
        """Keep the positions ``keep`` (B, L') of every row, in the given order."""
        expand = keep[..., None].expand(-1, -1, self.hidden.shape[-1])
        return TokenState(
            hidden=torch.gather(self.hidden, 1, expand),
            position_ids=torch.gather(self.position_ids, -1, keep.expand(*self.position_ids.shape[:-2], -1, -1)),
            padding=torch.gather(self.padding, 1, keep),
            is_image=torch.gather(self.is_image, 1, keep),
            source_index=keep,
        )

    def with_hidden(self, hidden: torch.Tensor) -> "TokenState":
        return replace(self, hidden=hidden)

    @property
    def image_count(self) -> torch.Tensor:
        """(B,) number of image tokens still in the sequence."""
        return self.is_image.sum(-1)


@dataclass
class LayerView:
    """What a decoder-side method sees after decoder layer ``layer_idx`` ran during prefill.

    layer_input: (B, L, d) the hidden states that entered the layer (before its input LayerNorm).
    state: the layer's output sequence (``state.hidden`` is the layer output).
    position_embeddings: (cos, sin) the layer used; attention_mask: (B, 1, L, L) bool, True = attend.
    layers: all decoder layers (to recompute a row of attention from q/k of any layer).
    rotary: the LLM's rotary embedding module (for recomputing positions after renumbering).
    """

    layer_idx: int
    layer_input: torch.Tensor
    state: TokenState
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor
    layers: nn.ModuleList
    rotary: nn.Module
    context: PruneContext = field(repr=False)


class DecoderPruner(BudgetMixin):
    """Base class of decoder-side methods."""

    kind = "decoder"
    budget: int
    #: Decoder-side cuts read the prompt (the last token's or the text tokens' attention), so the LLM prefill
    #: is per question from the first cut on; ``encode`` and ``reduce`` (all image tokens) still run once per image.
    question_dependent = True
    #: True when the method's (single) cut also removes the dropped tokens from the KV caches of the layers before
    #: it (TokenCarve's released code): decoding then attends to the kept tokens only, in every layer.
    cuts_earlier_caches = False

    def check(self, lm) -> None:
        """Raise UserError if the method cannot run on the loaded model (e.g. a schedule deeper than the LLM);
        called by the runner before any result is written."""

    def describe(self) -> dict:
        """Run-level facts for metrics.json ("method_info"), e.g. the per-stage keep counts."""
        return {}

    def encode(self, vision_tower, pixel_values, feature_layer, context):
        return EncoderPruner.encode(self, vision_tower, pixel_values, feature_layer, context)

    def reduce(self, features: torch.Tensor, context: PruneContext) -> torch.Tensor:
        return features  # all image tokens enter the LLM

    def after_layer(self, layer_idx: int, view: LayerView) -> TokenState | None:
        raise NotImplementedError

    def full_layers(self) -> int:
        """How many LLM layers see every image token before the first cut (for :mod:`svdprune.memory`)."""
        raise NotImplementedError

    def max_image_tokens_after_cut(self, num_patches: int) -> int:
        """An upper bound on the image tokens any layer after the first cut sees (for :mod:`svdprune.memory`)."""
        return min(self.budget, num_patches)

    def for_image_tokens(self, image_tokens: int, budget: int, n_layers: int):
        """This method for a batch whose images have ``image_tokens`` tokens each, to keep ``budget`` of them, in an LLM
        of ``n_layers`` layers (Qwen2.5-VL, whose images have their own token counts: svdprune/families/qwen25vl.py). Default:
        the same method with that budget. A method whose schedule was fitted to 576 tokens and 32 layers refits it."""
        return self.with_budget(budget)


def reads_question_text(method) -> bool:
    """Whether the method's encoder-side selection reads the question text (``context.questions``; TRIM). Decoder-
    side methods are question-dependent too, but through the prompt's attention, not its text."""
    return method.kind != "decoder" and method.question_dependent


# ---------------------------------------------------------------------------------------------- the registry
#
# A method is one file: its class carries ``@register`` and describes itself (``name``, ``label``, ``kind``,
# ``in_paper``, ``table_row``, ``needs``, ``reaches_all``, ``PARAMS``, ``shallow_params``). Every module of the
# ``baselines`` package (and ``svdprune.svd``) is imported the first time the registry is read, so a new file there
# registers itself with no other file edited. The registry is read through :data:`METHODS`.

_REGISTERED: dict[str, type] = {}
#: where methods live: these modules, and every module of these packages (names starting with "_" are helpers)
METHOD_MODULES = ("svdprune.svd",)
METHOD_PACKAGES = ("baselines",)


def register(cls: type) -> type:
    """Class decorator: add a method class to the registry under ``cls.name`` (checked: a name once, declared
    parameters matching the constructor's)."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute name = '<method name>' to be registered")
    if name in _REGISTERED and _REGISTERED[name] is not cls:
        raise TypeError(f"method name {name!r} is taken by {_REGISTERED[name].__module__}.{_REGISTERED[name].__name__}")
    accepted = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "budget")}
    if set(cls.PARAMS) != accepted:
        raise TypeError(f"{cls.__name__}.PARAMS declares {sorted(cls.PARAMS)} but __init__ takes {sorted(accepted)}")
    _REGISTERED[name] = cls
    return cls


class _Registry(Mapping):
    """name -> method class, filled on first use by importing the method modules (see :func:`register`)."""

    def __init__(self):
        self._loaded = False

    def _load(self) -> dict[str, type]:
        if not self._loaded:
            import pkgutil

            for module in METHOD_MODULES:
                importlib.import_module(module)
            for package_name in METHOD_PACKAGES:
                package = importlib.import_module(package_name)
                for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                    if not info.name.startswith("_") and not info.ispkg:  # baselines.official: references, not methods
                        importlib.import_module(f"{package_name}.{info.name}")
            self._loaded = True  # after every import: a module that fails is raised again, never a partial registry
        return _REGISTERED

    def __getitem__(self, name: str) -> type:
        return self._load()[name]

    def __iter__(self):
        """Names in Table 1's row order (each class's ``table_row``, then its name): the order reports, sweeps and
        error messages list methods in, whatever order the files were found in."""
        registered = self._load()
        return iter(sorted(registered, key=lambda name: (registered[name].table_row, name)))

    def __len__(self) -> int:
        return len(self._load())


register(Vanilla)

#: every registered method: name -> class, iterated in Table 1's row order (``table_row``)
METHODS: Mapping[str, type] = _Registry()


def method_class(name: str) -> type:
    """The class registered as method ``name`` (its module imported); one-line UserError for an unknown name."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_method_params(name: str, params: dict[str, Any]) -> None:
    """Each of ``params`` is a declared parameter of method ``name`` with an allowed value (its ``PARAMS``,
    svdprune/params.py); builds nothing, loads nothing."""
    from .params import check_params

    check_params(name, method_class(name).PARAMS, params)


def build_method(name: str, budget: int, params: dict[str, Any]):
    """Instantiate method ``name`` with ``budget`` and its config parameters (checked against its ``PARAMS``)."""
    cls = method_class(name)
    check_method_params(name, params)
    return cls(budget=budget, **params)


def default_params(name: str) -> dict[str, Any]:
    """Method ``name``'s parameters as ``configs/method/<name>.yaml`` sets them (what run.py uses when no override is
    given), for callers without Hydra (:func:`svdprune.prune`): the defaults its ``PARAMS`` declare, so no file outside
    the package is read (a non-editable install works). TRIM's ``clip_path`` is the config's fallback (the config takes
    ``model.clip_path`` where the model config has one)."""
    from .params import defaults

    return defaults(method_class(name).PARAMS)
