"""What the families whose images each have their own token count share (Qwen2.5-VL, LLaVA-NeXT): a budget per
image, and the groups of rows a decoder-side cut prefills together."""
from __future__ import annotations

from ..models import LoadedModel
from ..pruning import PruneContext, Vanilla
from ..surgery import greedy, new_cache, prefill


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
