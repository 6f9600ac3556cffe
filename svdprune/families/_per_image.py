"""What the families whose images each have their own token count share (Qwen2.5-VL, LLaVA-NeXT): a budget per
image, the groups of rows a decoder-side cut prefills together, and the image prefix prefilled once and shared by
the image's questions."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models import LoadedModel
from ..pruning import PruneContext, Vanilla
from ..surgery import greedy, new_cache, prefill, prefill_suffixes


def image_budget(method, num_tokens: int) -> int:
    """The tokens an image of ``num_tokens`` keeps: ``budget``, or with ``budget_ratio`` set, that share of its own
    tokens rounded down (at least 1)."""
    if method.budget_ratio is None:
        return method.budget
    return max(1, int(method.budget_ratio * num_tokens))


def group_indices(values: list) -> dict:
    """value -> the indices that have it, in first-seen order (rows that can share one prefill)."""
    groups: dict = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    return groups


def stat_columns(per_row: list[dict]) -> dict[str, list]:
    """Per-row stat dicts -> {key: one value per row (None where a row lacks it)}, keys in first-seen order."""
    keys = list(dict.fromkeys(key for stats in per_row for key in stats))
    return {key: [stats.get(key) for stats in per_row] for key in keys}


def parts_by_image_tokens(lm: LoadedModel, method, image_tokens: list[int]) -> list[tuple[list[int], object]]:
    """(row indices, the method for them) groups of one prefill each (``image_tokens``: each row's image token
    count): an encoder-side method or vanilla runs all rows together; a decoder-side cut needs the same number of
    image tokens in every row, so its rows go in groups of equal image size, each with the method fitted to that size
    (``for_image_tokens``; an image at or under its budget without a cut)."""
    if method.kind != "decoder":
        return [(list(range(len(image_tokens))), method)]
    n_layers = lm.language_model.config.num_hidden_layers
    return [(members, method.for_image_tokens(n, image_budget(method, n), n_layers)
             if n > image_budget(method, n) else Vanilla())
            for n, members in group_indices(image_tokens).items()]


def prefill_parts(lm: LoadedModel, method, rows: list, make_state, *, seed: int, questions: list[str] | None,
                  instruction: str | None) -> list[tuple[list[int], object, object, PruneContext]]:
    """One (row indices, TokenState, the method to run, its context) per prefill (:func:`parts_by_image_tokens`);
    ``rows``: each with ``embeds`` (its kept image tokens); ``make_state(lm, rows)``: the family's left-padded
    :class:`~svdprune.pruning.TokenState` of some rows."""
    parts = []
    for members, part_method in parts_by_image_tokens(lm, method, [len(row.embeds) for row in rows]):
        context = PruneContext(questions=[questions[i] for i in members] if questions is not None else None,
                               seed=seed, model=lm.model, lm=lm, instruction=instruction)
        parts.append((members, make_state(lm, [rows[i] for i in members]), part_method, context))
    return parts


def generate_parts(lm: LoadedModel, method, questions: list[str], rows: list, make_state, *, instruction: str | None,
                   seed: int, max_new_tokens: int) -> list[tuple]:
    """Every row's whole prompt prefilled (a decoder-side cut in groups of one image size) and decoded greedily: per
    row (generated ids, per-layer image counts, prompt length, stats: the row's and the method's)."""
    out: list = [None] * len(rows)
    for members, state, part_method, context in prefill_parts(lm, method, rows, make_state, seed=seed,
                                                               questions=questions, instruction=instruction):
        cache = new_cache(lm)
        last_hidden, image_counts, layer_groups = prefill(lm, state, part_method, context, cache)
        generated = greedy(lm, last_hidden, layer_groups, cache, max_new_tokens)
        counts = image_counts.tolist()
        for j, i in enumerate(members):
            stats = {**rows[i].stats, **{key: values[j] for key, values in context.stats.items()}}
            out[i] = (generated[j], counts[j], len(rows[i].ids), stats)
    return out


def image_token_counts(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Image tokens per row of a user's (B, L) ids, padding left out."""
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    return ((input_ids == lm.image_token_id) & real).sum(-1).tolist()


def check_image_tokens(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, images: list,
                       named) -> None:
    """A user's prompts hold as many image tokens as their images make (``image.num_tokens``), else a one-line
    UserError naming the prompt; ``named(b)``: how prompt b's image was given, e.g. ``image_sizes [300, 120] make``."""
    for b, (count, image) in enumerate(zip(image_token_counts(lm, input_ids, attention_mask), images)):
        if count != image.num_tokens:
            raise UserError(f"svdprune: prompt {b} has {count} image tokens but its {named(b)} {image.num_tokens}")


def prefill_cut_rows(lm: LoadedModel, method, rows: list[tuple[list[int], list[int]]], images: list, cuts: list,
                     make_row, make_state, *, seed: int, questions: list[str] | None):
    """A user's prompts with their images' cuts -> (prefill parts (:func:`prefill_parts`), the token rows, per-row
    stats), as ``prefill_inputs`` returns them; ``make_row(lm, method, before, after, image, cut)`` builds one row,
    ``make_state`` is the family's left-padded state of some rows."""
    built = [make_row(lm, method, before, after, image, cut) for (before, after), image, cut in zip(rows, images, cuts)]
    parts = prefill_parts(lm, method, built, make_state, seed=seed, questions=questions, instruction=None)
    return parts, [row.ids for row in built], stat_columns([row.stats for row in built])


# ---------------------------------------------------------------- one prefix per image

@dataclass
class SharedPrefix:
    """One image's question-independent prompt part, prefilled once and shared by the image's questions.

    row: the prefix (``ids``: the prompt up to and including the image's kept tokens; ``embeds``: those tokens;
    ``stats``: the method's per-image values); kv: per LLM layer (keys, values), each (H_kv, P, head_dim),
    P = len(row.ids); text_start: the position the text after the image continues at (Qwen2.5-VL's M-RoPE: the
    image's start + max(h, w)); None: right after the prefix, 1-D positions."""

    row: object
    kv: list
    text_start: int | None = None


def prefill_prefixes(lm: LoadedModel, rows: list, make_state, text_starts: list[int] | None = None) -> list[SharedPrefix]:
    """Prefill the prefix rows (their cut already made); rows of one length are prefilled together (no padding),
    each keeps its own copy of the KV (a view would keep the group's KV alive)."""
    kv: list = [None] * len(rows)
    for members in group_indices([len(row.ids) for row in rows]).values():
        cache = new_cache(lm)
        prefill(lm, make_state(lm, [rows[i] for i in members]), Vanilla(), PruneContext(questions=None), cache)
        for j, i in enumerate(members):
            kv[i] = [(layer.keys[j].clone(), layer.values[j].clone()) for layer in cache.layers]
        del cache
    return [SharedPrefix(row, kv[i], None if text_starts is None else text_starts[i]) for i, row in enumerate(rows)]


def generate_shared_prefix(lm: LoadedModel, questions: list[str], image_keys: list, prefixes: dict, encode,
                           question_parts, *, max_new_tokens: int, axes: int = 1) -> list[tuple]:
    """Vanilla and encoder-side methods: each image's prefix prefilled once (``encode(keys)``: the
    :class:`SharedPrefix` of the images not yet in ``prefixes``, which keeps them for the next batch), each question's
    suffix (``question_parts(question)``: its ids before and after the image) after it; rows whose prefixes have one
    length share a suffix prefill. Per question (generated ids, per-layer image counts, prompt length, stats)."""
    missing = [key for key in dict.fromkeys(image_keys) if key not in prefixes]
    if missing:
        prefixes.update(zip(missing, encode(missing)))
    suffixes = []
    for question, key in zip(questions, image_keys):
        before, after = question_parts(question)
        assert before == prefixes[key].row.ids[:len(before)], "prompts do not share the prefix"
        suffixes.append(after)
    n_layers = len(lm.language_model.layers)
    out: list = [None] * len(questions)
    for length, members in group_indices([len(prefixes[key].row.ids) for key in image_keys]).items():
        rows = [prefixes[image_keys[i]] for i in members]
        starts = None if rows[0].text_start is None else torch.tensor([row.text_start for row in rows])
        cache = new_cache(lm)
        # handed over without a name: once in the cache, the batch's prefix KV is referenced there only
        last_hidden, group = prefill_suffixes(
            lm, [(torch.stack([row.kv[layer][0] for row in rows]), torch.stack([row.kv[layer][1] for row in rows]))
                 for layer in range(n_layers)], length, [suffixes[i] for i in members], cache,
            text_start=starts, axes=axes)
        generated = greedy(lm, last_hidden, [group], cache, max_new_tokens)
        for j, (i, row) in enumerate(zip(members, rows)):
            out[i] = (generated[j], [len(row.row.embeds)] * n_layers, length + len(suffixes[i]), dict(row.row.stats))
    return out
