"""Any method on a transformers LLaVA-1.5, Qwen2.5-VL or LLaVA-NeXT the user loaded:
``svdprune.prune(model, "svd", 32)``.

After :func:`prune`, the user's own code runs unchanged::

    handle = svdprune.prune(model, "svd", budget=32, tau=0.9)
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt").to(model.device)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)   # batched, left (or right) padding
    handle.records        # per prompt: kept_tokens, image_tokens_per_layer, prompt_tokens, the method's own values
    handle.remove()       # the unpruned model, exactly

How: ``prune`` puts a forward on the model *instance* (the class is untouched; ``remove`` takes it away). That
forward is a thin adapter from HF's calling convention to the project's engine (:mod:`svdprune.surgery` and LLaVA-1.5's
front, :mod:`svdprune.families.llava15`), the same functions run.py's per-question path calls, so the runner and the API are
one mechanism with two loop owners:

* prefill (a call with ``pixel_values``): each row's real tokens (``attention_mask``) are taken as the user gave
  them; the row's one run of image tokens (576 after a llava-hf processor, or 1 from a legacy one) is replaced by
  the k tokens the method keeps (:func:`llava15.encode_images`: vision tower, encoder-side cut, projector); the rows
  are left-padded again and run through :func:`surgery.prefill_states`, whose decoder-side cuts fill the cache
  layer by layer. The cache HF ``generate`` handed in is the one filled; the decoding groups (each layer's padding
  and next RoPE position) are remembered for it.
* each decoding call (one new token per row, the remembered cache): :func:`surgery.decode_step`.

Logits. ``generate`` asks for the last position only (``logits_to_keep=1``): each row's last real token. For a
full forward (``model(**inputs)``, e.g. log-likelihood scoring) the logits are aligned with the user's
``input_ids``: every text position gets its logits; image positions (the pruned sequence has k or fewer image
tokens, some merged, none of them the user's 576) and padding get zeros. ``labels`` give HF's shifted
cross-entropy over those logits (LLaVA's labels are -100 at image positions).

Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``, the model card's processor): the same adapter with that family's
front (svdprune/families/qwen25vl.py): ``pixel_values`` are split per image by ``image_grid_thw``, each row's run of
``<|image_pad|>`` is replaced by its image's kept tokens at their own 3-D positions (the positions HF's
``get_rope_index`` gives the unpruned prompt), decoding continues at the last prompt position + 1. Images only (no
video). A decoder-side method's cut needs one image size per prefill: the rows of a call are prefilled in groups of
one size (as run.py groups them) and their caches merged into the one HF ``generate`` decodes
(:func:`svdprune.surgery.merge_prefills`).

LLaVA-NeXT (``LlavaNextForConditionalGeneration``, llava-hf's processor): ``pixel_values`` (B, views, 3, S, S) cut
to each image's views by ``image_sizes``, read with llava-hf's tiling (or the tiling an ``image_tiles`` input
states: svdprune/families/llava_next.py), each row's image run replaced by its kept tokens at 1-D positions.

Not supported (one-line errors): ``inputs_embeds``, more or fewer than one image per row when an image is given,
continuing a pruned cache with more than one new token per call (assisted decoding, a second chat turn),
a cache that already holds tokens at prefill. Text-only calls (no image token, no pixels) run the unpruned model.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserError
from .families import fit_budget, from_model, front
from .pruning import build_method, check_budget_ratio, default_params, reads_question_text

__all__ = ["PruneHandle", "prune", "pruned"]

_HANDLE_ATTRIBUTE = "_svdprune_handle"


@dataclass
class _Decoding:
    """What the decoding calls after one prefill need: the layer groups of the pruned cache, and how many tokens
    have been fed back since the prefill."""

    groups: list
    step: int = 0


class PruneHandle:
    """A method installed on one model by :func:`prune`.

    records: one dict per prompt the pruned model has prefilled, in call order (clear it when you like):
        ``kept_tokens`` (image tokens after the method's first cut, as run.py's predictions.jsonl),
        ``image_tokens_per_layer``, ``prompt_tokens`` (with the kept image tokens), and whatever per-image values
        the method records (``kept_indices``, ``rank``, merge groups, ...).
    questions: for a method that reads the question (TRIM): the question text of each row of the next calls,
        e.g. ``handle.questions = ["What is it?\\nAnswer the question using a single word or phrase."]``. When
        None, the text is decoded from the prompt with ``tokenizer`` (the user turn after the image, up to
        " ASSISTANT:"; exact when the tokenizer's decode inverts its encode).
    """

    def __init__(self, model, method_name: str, budget: int, params: dict, *, seed: int, tokenizer,
                 budget_ratio: float | None = None):
        self.model = model
        self.method_name = method_name
        self.params = params
        self.seed = seed
        self.tokenizer = tokenizer
        self.records: list[dict[str, Any]] = []
        self.questions: list[str] | None = None
        self._lm = from_model(model, tokenizer)
        self.method = build_method(method_name, budget, params)
        budget_ratio = check_budget_ratio(budget_ratio, front(self._lm).CAPABILITIES, method_name)
        # run.py's reconciliation: vanilla keeps every token, a ratio is each image's share, then the family's checks
        fitted = fit_budget(self._lm, self.method, budget, budget_ratio, model_name="this model")
        self.budget = fitted if fitted is not None else budget
        self.budget_ratio = budget_ratio
        self._decoding: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._previous_forward = model.__dict__.get("forward")  # an instance forward (e.g. accelerate's hook)
        self._extra_inputs = tuple(getattr(front(self._lm), "EXTRA_INPUTS", ()))  # the family's own forward inputs
        self._signature = _public_signature(model, self._extra_inputs)
        self.active = False

    # ------------------------------------------------------------------ install / remove

    def _install(self) -> None:
        handle = self

        def forward(*args, **kwargs):
            return handle._forward(*args, **kwargs)

        forward.__signature__ = self._signature  # generate() reads forward's parameters (pixel_values, logits_to_keep)
        forward.__doc__ = f"{type(self.model).__name__}.forward pruned by svdprune ({self.method_name}, k={self.budget})"
        self.model.forward = forward
        setattr(self.model, _HANDLE_ATTRIBUTE, self)
        self.active = True

    def remove(self) -> None:
        """Restore the model's own forward (bit-identical outputs to before :func:`prune`). A cache filled while
        pruned cannot be continued afterwards. Calling it twice is harmless."""
        if not self.active:
            return
        if self._previous_forward is not None:
            self.model.forward = self._previous_forward
        else:
            del self.model.forward
        delattr(self.model, _HANDLE_ATTRIBUTE)
        self._decoding = weakref.WeakKeyDictionary()
        self.active = False

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        budget = f"budget_ratio={self.budget_ratio}" if self.budget_ratio is not None else f"budget={self.budget}"
        return f"PruneHandle({self.method_name!r}, {budget}, params={self.params}, {state})"

    # ------------------------------------------------------------------ the forward

    def _forward(self, *args, **kwargs):
        call = self._signature.bind(*args, **kwargs)
        values = dict(call.arguments)
        extra = values.pop("kwargs", {}) or {}
        cache = values.get("cache")
        if cache is None:
            cache = extra.pop("past_key_values", None)
        input_ids, pixel_values = values.get("input_ids"), values.get("pixel_values")
        if cache is not None and cache in self._decoding:
            return self._decode(input_ids, cache, values, extra)
        if values.get("inputs_embeds") is not None:
            raise UserError("svdprune: a pruned model needs input_ids (and pixel_values), not inputs_embeds")
        lm = self._lm
        has_image = input_ids is not None and bool((input_ids == lm.image_token_id).any())
        if not has_image and pixel_values is None:  # text only: nothing to prune
            return self._unpruned(*args, **kwargs)
        if extra.get("mm_encoder_outputs"):
            raise UserError("svdprune: a pruned model encodes the images itself; pass pixel_values, not "
                            "mm_encoder_outputs")
        for key, own in (("vision_feature_layer", lm.feature_layer),
                         ("vision_feature_select_strategy", "default")):
            if values.get(key) is not None and values[key] != own:
                raise UserError(f"svdprune: {key}={values[key]!r}; allowed: the model's own ({own!r})")
        for key in ("pixel_values_videos", "video_grid_thw"):
            if values.get(key) is not None:
                raise UserError(f"svdprune: {key} given; a pruned Qwen2.5-VL takes images only (pixel_values, "
                                "image_grid_thw)")
        return self._prefill(input_ids, values.get("attention_mask"), cache, values, extra)

    def _unpruned(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in self._extra_inputs}  # ours, not the model's
        if self._previous_forward is not None:
            return self._previous_forward(*args, **kwargs)
        return type(self.model).forward(self.model, *args, **kwargs)

    def _prefill(self, input_ids, attention_mask, cache, values: dict, extra: dict):
        from .surgery import merge_prefills, new_cache, prefill_states

        lm = self._lm
        rows = _split_rows(input_ids, attention_mask, lm.image_token_id)
        if cache is None:
            cache = new_cache(lm)
        elif cache.get_seq_length() != 0:
            raise UserError("svdprune: prefill into a cache that already holds tokens is not supported; start "
                            "from an empty cache (generate() does)")
        questions = self._question_texts(rows) if reads_question_text(self.method) else None
        parts, token_rows, row_stats = front(lm).prefill_inputs(
            lm, self.method, rows, {**values, "input_ids": input_ids, "attention_mask": attention_mask},
            seed=self.seed, questions=questions)
        if len(parts) == 1:
            _, state, method, context = parts[0]
            final, image_counts, groups = prefill_states(lm, state, method, context, cache)
            stats = {**row_stats, **context.stats}
        else:  # rows the method cuts in groups (Qwen2.5-VL: one image size each), decoded as one batch
            prefills = [(members, prefill_states(lm, state, method, context, part_cache := new_cache(lm)), part_cache)
                        for members, state, method, context in parts]
            final, image_counts, groups = merge_prefills(lm, prefills, cache)
            stats = dict(row_stats)
            for members, _, _, context in parts:
                for key, values_of_part in context.stats.items():
                    column = stats.setdefault(key, [None] * len(rows))
                    for j, i in enumerate(members):
                        column[i] = values_of_part[j]
        self._decoding[cache] = _Decoding(groups)
        self._record(token_rows, image_counts, stats)

        logits = self._prefill_logits(final, input_ids, attention_mask, values.get("logits_to_keep") or 0,
                                      values.get("labels") is not None)
        loss = None
        if values.get("labels") is not None:
            loss = lm.model.loss_function(logits=logits, labels=values["labels"],
                                          vocab_size=logits.shape[-1], **extra)
        use_cache = extra.get("use_cache", values.get("use_cache"))
        return _output(front(lm), logits, loss, cache if use_cache is not False else None, extra)

    def _prefill_logits(self, final, input_ids, attention_mask, logits_to_keep, has_labels: bool) -> torch.Tensor:
        """Logits of the prefill: (B, 1, V) of each row's last real token when only the last is asked for; else
        (B, L, V) aligned with the user's input_ids (zeros at image and padding positions), then sliced by
        ``logits_to_keep`` as HF does."""
        llm, lm_head = self._lm.language_model, self._lm.model.lm_head
        if isinstance(logits_to_keep, int) and logits_to_keep == 1 and not has_labels:
            return lm_head(llm.norm(final.hidden[:, -1]))[:, None]  # left padded: the last slot is the last token
        ours = ~final.padding & ~final.is_image  # (B, L') text positions that reached the last layer, in order
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        theirs = real & (input_ids != self._lm.image_token_id)  # (B, L) the same text tokens in the user's layout
        assert ours.sum(-1).tolist() == theirs.sum(-1).tolist(), "a method removed text tokens"
        text_logits = lm_head(llm.norm(final.hidden[ours]))  # (T, V)
        logits = text_logits.new_zeros(*input_ids.shape, text_logits.shape[-1])
        logits[theirs.to(logits.device)] = text_logits
        if isinstance(logits_to_keep, int):
            return logits if logits_to_keep == 0 else logits[:, -logits_to_keep:]
        return logits[:, logits_to_keep]

    def _decode(self, input_ids, cache, values: dict, extra: dict):
        from .surgery import decode_step

        if input_ids is None or input_ids.shape[1] != 1:
            got = "inputs_embeds" if input_ids is None else f"{input_ids.shape[1]} tokens"
            raise UserError(f"svdprune: a pruned cache continues one new token per row and call (generate's "
                            f"decoding); got {got}")
        decoding = self._decoding[cache]
        hidden = decode_step(self._lm, input_ids[:, 0].to(self._lm.device), decoding.step, decoding.groups, cache)
        decoding.step += 1
        logits = self._lm.model.lm_head(hidden)[:, None]  # (B, 1, V)
        return _output(front(self._lm), logits, None, cache, extra)

    # ------------------------------------------------------------------ per-prompt facts

    def _record(self, token_rows: list[list[int]], image_counts: torch.Tensor, stats: dict) -> None:
        from .surgery import kept_tokens

        for b, per_layer in enumerate(image_counts.tolist()):
            row = {"kept_tokens": kept_tokens(per_layer), "image_tokens_per_layer": per_layer,
                   "prompt_tokens": len(token_rows[b])}
            row.update({key: values[b] for key, values in stats.items()})
            self.records.append(row)

    def _question_texts(self, rows: list[tuple[list[int], list[int]]]) -> list[str]:
        if self.questions is not None:
            if len(self.questions) != len(rows):
                raise UserError(f"svdprune: handle.questions has {len(self.questions)} texts for {len(rows)} prompts")
            return list(self.questions)
        if self.tokenizer is None:
            raise UserError(f"svdprune: {self.method_name} reads the question text: pass tokenizer= to prune() or "
                            "set handle.questions")
        return [front(self._lm).question_text(self._lm, suffix) for _, suffix in rows]


def _public_signature(model, extra_inputs: tuple[str, ...] = ()) -> inspect.Signature:
    """The model's forward signature without ``mm_encoder_outputs`` (generate() then hands pixel_values to the
    forward instead of running the vision tower itself: a method must see the pixels and the tower's layers), with the
    family's own extra inputs as keyword-only parameters (default None) that generate() passes through."""
    signature = inspect.signature(type(model).forward)
    parameters = [p for name, p in signature.parameters.items() if name not in ("self", "mm_encoder_outputs")]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in extra_inputs]
    at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    return signature.replace(parameters=parameters[:at] + extra + parameters[at:])


def _split_rows(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                image_token_id: int) -> list[tuple[list[int], list[int]]]:
    """(B, L) ids (+ mask) -> per row (ids before the image, ids after it), padding dropped. Each row must hold
    one contiguous run of image tokens (one image per prompt)."""
    if input_ids is None:
        raise UserError("svdprune: pass input_ids with the image token(s) and pixel_values")
    ids = input_ids.tolist()
    real = attention_mask.bool().tolist() if attention_mask is not None else [[True] * len(r) for r in ids]
    rows = []
    for b, (row_ids, row_real) in enumerate(zip(ids, real)):
        row = [t for t, r in zip(row_ids, row_real) if r]
        at = [i for i, t in enumerate(row) if t == image_token_id]
        if not at:
            raise UserError(f"svdprune: prompt {b} has no image token ({image_token_id}); with pixel_values every "
                            "prompt needs one image")
        if at[-1] + 1 - at[0] != len(at):
            raise UserError(f"svdprune: prompt {b} has more than one image; allowed: one image per prompt")
        rows.append((row[:at[0]], row[at[-1] + 1:]))
    return rows


def _output(family, logits, loss, cache, extra: dict):
    """The family's HF output (``return_dict=False``: its tuple)."""
    output = family.model_output(logits, loss, cache)
    return output if extra.get("return_dict", True) is not False else output.to_tuple()


def prune(model, method: str = "svd", budget: int = 64, *, budget_ratio: float | None = None, seed: int = 0,
          tokenizer=None, **params) -> PruneHandle:
    """Install ``method`` keeping ``budget`` vision tokens on a transformers ``LlavaForConditionalGeneration``,
    ``Qwen2_5_VLForConditionalGeneration`` or ``LlavaNextForConditionalGeneration`` (the methods a family runs:
    ``svdprune.families.supported_methods(name)``).

    params: the method's parameters as in ``configs/method/<method>.yaml`` (its defaults are used for the rest),
    e.g. ``tau=0.9`` for svd, ``agg_layer=1`` for fastv. seed: as run.py's ``seed`` (random-k).
    budget_ratio: families whose images have their own token counts (Qwen2.5-VL, LLaVA-NeXT), as run.py's: each
    image keeps this share (0, 1] of its own tokens instead of ``budget`` tokens.
    tokenizer: only for a method that reads the question (TRIM; see :class:`PruneHandle`).
    Returns the :class:`PruneHandle`; ``handle.remove()`` restores the model. A model already pruned is refused.
    """
    existing = getattr(model, _HANDLE_ATTRIBUTE, None)
    if existing is not None and existing.active:
        raise UserError(f"this model is already pruned ({existing.method_name}, budget={existing.budget}); call "
                        "handle.remove() first")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise UserError(f"budget={budget!r}; allowed: an integer number of vision tokens")
    handle = PruneHandle(model, method, budget, {**default_params(method), **params}, seed=seed,
                         tokenizer=tokenizer, budget_ratio=budget_ratio)
    handle._install()
    return handle


@contextlib.contextmanager
def pruned(model, method: str = "svd", budget: int = 64, **kwargs):
    """``with svdprune.pruned(model, "svd", 32) as handle: ...``: :func:`prune` for the block, removed after it
    (also when the block raises)."""
    handle = prune(model, method, budget, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()
