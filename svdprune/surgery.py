"""The engine: the LLM half every model family shares. It imports no model family (:mod:`svdprune.families` picks one).

A model family's *front* is its module in ``svdprune/families/`` (picked by :func:`svdprune.families.front`):
``llava15.py`` (LLaVA-1.5: CLIP tower -> [encoder-side cut] -> projector, the vicuna prompt, 1-D positions, the
per-image prompt prefix), ``qwen25vl.py`` (Qwen2.5-VL: its own-size images, window-attention tower + merger, chat
prompt, 3-D M-RoPE positions), ``llava_next.py`` (LLaVA-NeXT: AnyRes views packed with a newline per row, 1-D
positions). A front turns questions and images into a :class:`~svdprune.pruning.TokenState` (LLM-input embeddings
with the kept image tokens, positions, padding) and calls the shared part here:

* :func:`prefill` / :func:`prefill_states`: the loop over the LLM's decoder layers (HF's own ``LlamaDecoderLayer`` /
  ``Qwen2_5_VLDecoderLayer`` with SDPA, the model's rotary embedding, ``DynamicCache``), letting a decoder-side method
  change the token set between layers; each layer's KV cache keeps exactly the tokens that layer saw;
* :func:`decode_step` / :func:`greedy`: greedy decoding, each group of layers at its own next position.

With no cut, this computes exactly what the family's HF ``generate`` computes (tested token for token). Only the
surviving image tokens are placed in the prompt (k image positions, not N with a mask), so the projector and every LLM
layer process the shorter sequence.

The fronts use the public helpers here (:func:`left_pad`, :func:`padded_positions`, :func:`new_cache`, :func:`greedy`,
:func:`finish`). The two entry points, same predictions, are in :mod:`svdprune.families`: ``generate`` (every question
pays for its own image and whole prompt; the reference) and ``generate_by_image`` (the vision side once per distinct
image; on LLaVA-1.5 also the prompt prefix up to the image tokens for vanilla and encoder-side methods, whose KV cache
the image's questions share).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .models import LoadedModel
from .pruning import LayerView, PruneContext, TokenState


@dataclass
class Generation:
    """Output of :func:`generate` for one batch."""

    token_ids: list[list[int]]  # generated ids per row, EOS excluded
    texts: list[str]
    prompts: list[str]
    image_tokens_per_layer: list[list[int]]  # per row: image tokens each LLM layer saw in prefill
    prompt_lengths: list[int]  # per row: tokens entering layer 0 (without padding)
    stats: dict = field(default_factory=dict)  # per-image values a method recorded


@dataclass
class _LayerCache:
    """What decoding needs to know about a group of consecutive layers that saw the same prefill tokens."""

    layers: range
    padding: torch.Tensor  # (B, L_l) bool: padded slots of these layers' KV cache
    next_position: torch.Tensor  # (B,) RoPE position of the first generated token; (3, B) for M-RoPE

    def __post_init__(self):
        self.has_padding = bool(self.padding.any())  # no padding: decoding attends without a mask


def kept_tokens(per_layer: list[int]) -> int:
    """Image tokens after the method's (first) cut, from one row's per-layer counts: layer 0's count, or the first
    count that differs (the ``kept_tokens`` of predictions.jsonl and of :class:`svdprune.api.PruneHandle` records)."""
    first = per_layer[0]
    return next((n for n in per_layer if n != first), first)


def _attention_mask(padding: torch.Tensor) -> torch.Tensor:
    """(B, L) padding -> (B, 1, L, L) bool causal mask, True = attend. Padded rows attend to themselves
    only (their outputs are never read) so that no softmax row is empty."""
    length = padding.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
    mask = causal[None] & ~padding[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool, device=padding.device)[None]
    return mask[:, None]


def _layer_mask(padding: torch.Tensor) -> torch.Tensor | None:
    """The mask the decoder layers get in prefill: None when no row is padded, so that SDPA runs with
    ``is_causal`` (its fastest kernels on a GPU); the explicit causal + padding mask otherwise."""
    return _attention_mask(padding) if bool(padding.any()) else None


def left_pad(lm: LoadedModel, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (ids (B, L), padding (B, L) bool, True at left padding), on the model's device."""
    length = max(map(len, rows))
    pad_id = lm.pad_token_id
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    padding = torch.ones(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        padding[i, length - len(row):] = False
    return ids.to(lm.device), padding.to(lm.device)


def padded_positions(padding: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, L) padding -> RoPE positions start, start + 1, ... of the real tokens (as HF generate:
    cumsum(mask) - 1; padded slots get ``start``, they are never attended to)."""
    return start + (torch.cumsum(~padding, dim=1) - 1).clamp_min(0)


def prefill(lm: LoadedModel, state: TokenState, method, context: PruneContext, cache):
    """Run every decoder layer over the prompt, letting a decoder-side method cut between layers.

    Without padding the layers get no mask (SDPA ``is_causal``); a decoder-side method still sees the
    explicit (B, 1, L, L) mask in its :class:`LayerView`.
    Returns (last hidden state of each row (B, d), per-layer image-token counts (B, n_layers), layer groups).
    """
    final, image_counts, groups = prefill_states(lm, state, method, context, cache)
    return lm.language_model.norm(final.hidden[:, -1]), image_counts, groups  # left padding: last slot = last token


def prefill_states(lm: LoadedModel, state: TokenState, method, context: PruneContext, cache):
    """:func:`prefill`, returning the last layer's whole :class:`TokenState` (hidden states before the final
    norm, every position that survived the cuts) instead of the last position's normed hidden state."""
    llm = lm.language_model
    groups: list[_LayerCache] = []
    image_counts = []
    group_start, position_embeddings, mask = 0, None, None
    for layer_idx, layer in enumerate(llm.layers):
        if position_embeddings is None:  # first layer, or the token set changed
            position_embeddings = llm.rotary_emb(state.hidden, state.position_ids)
            mask = _layer_mask(state.padding)
            group_start = layer_idx
        layer_input = state.hidden
        output = layer(layer_input, attention_mask=mask, position_embeddings=position_embeddings,
                       position_ids=state.position_ids, cache=cache, use_cache=True)
        image_counts.append(state.image_count)
        state = state.with_hidden(output)
        new_state = None
        if method.kind == "decoder" and layer_idx < len(llm.layers) - 1:
            view = LayerView(layer_idx=layer_idx, layer_input=layer_input, state=state,
                             position_embeddings=position_embeddings,
                             attention_mask=mask if mask is not None else _attention_mask(state.padding),
                             layers=llm.layers, rotary=llm.rotary_emb, context=context)
            new_state = method.after_layer(layer_idx, view)
        if new_state is not None and getattr(method, "cuts_earlier_caches", False):
            if groups:
                raise ValueError(f"{type(method).__name__}: cuts_earlier_caches needs a single cut")
            _cut_caches(cache, range(layer_idx + 1), new_state.source_index)
            state = replace(state, padding=new_state.padding)  # these layers' caches now hold the kept slots
        if new_state is not None or layer_idx == len(llm.layers) - 1:
            groups.append(_LayerCache(range(group_start, layer_idx + 1), state.padding,
                                      state.position_ids[..., -1] + 1))
        if new_state is not None:
            state, position_embeddings = new_state, None
    return state, torch.stack(image_counts, dim=1), groups


def _left_pad_rows(x: torch.Tensor, length: int, dim: int, value) -> torch.Tensor:
    """Left-pad ``x`` along ``dim`` to ``length`` with ``value``."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([torch.full(shape, value, dtype=x.dtype, device=x.device), x], dim=dim)


def merge_prefills(lm: LoadedModel, parts: list, cache):
    """One batch's prefill from prefills of disjoint row groups (``parts``: per group (row indices, the
    :func:`prefill_states` result, the group's own cache)), as if the rows had been prefilled together: each layer's
    KV cache left-padded to the longest group's length and the rows put back in their order into ``cache``; the
    decoding groups split wherever any group's cut changes the length; the final states left-padded alike.

    For a caller that must hand one cache to its own decoding loop (:func:`svdprune.prune` under HF ``generate``) while
    a method's cut needs its rows grouped (Qwen2.5-VL: one image size per decoder-side prefill). Returns what
    :func:`prefill_states` returns for the whole batch."""
    order = torch.tensor([i for members, _, _ in parts for i in members])
    back = torch.argsort(order)  # merged position of each original row

    # the cache, layer by layer: (B_p, H, L_p, hd) -> (B, H, max L_p, hd), zeros where padded (never attended)
    n_layers = len(lm.language_model.layers)
    for layer_idx in range(n_layers):
        keys = [part_cache.layers[layer_idx].keys for _, _, part_cache in parts]
        values = [part_cache.layers[layer_idx].values for _, _, part_cache in parts]
        length = max(k.shape[2] for k in keys)
        k = torch.cat([_left_pad_rows(t, length, 2, 0) for t in keys])[back.to(keys[0].device)]
        v = torch.cat([_left_pad_rows(t, length, 2, 0) for t in values])[back.to(values[0].device)]
        cache.update(k, v, layer_idx)

    # decoding groups: a boundary wherever any part's group ends
    ends = sorted({group.layers[-1] for _, (_, _, groups), _ in parts for group in groups})
    groups, start = [], 0
    for end in ends:
        paddings, positions = [], []
        for _, (_, _, part_groups), _ in parts:
            group = next(g for g in part_groups if start in g.layers)
            paddings.append(group.padding)
            positions.append(group.next_position)
        length = max(p.shape[1] for p in paddings)
        padding = torch.cat([_left_pad_rows(p, length, 1, True) for p in paddings])[back.to(paddings[0].device)]
        next_position = torch.cat(positions, dim=-1)[..., back.to(positions[0].device)]
        groups.append(_LayerCache(range(start, end + 1), padding, next_position))
        start = end + 1

    finals = [final for _, (final, _, _), _ in parts]
    length = max(f.hidden.shape[1] for f in finals)
    index = back.to(finals[0].hidden.device)
    final = TokenState(
        hidden=torch.cat([_left_pad_rows(f.hidden, length, 1, 0) for f in finals])[index],
        position_ids=torch.cat([_left_pad_rows(f.position_ids, length, -1, 0) for f in finals], dim=-2)[..., index, :],
        padding=torch.cat([_left_pad_rows(f.padding, length, 1, True) for f in finals])[index],
        is_image=torch.cat([_left_pad_rows(f.is_image, length, 1, False) for f in finals])[index])
    image_counts = torch.cat([counts for _, (_, counts, _), _ in parts])[back.to(parts[0][1][1].device)]
    return final, image_counts, groups


def shares_prefix(method) -> bool:
    """Whether the LLM prefill of the image prefix can be shared by the image's questions: only when every
    layer sees the same image tokens whatever the question (no question-dependent selection, no cut between
    LLM layers)."""
    return method.kind != "decoder" and not method.question_dependent


def prefill_suffixes(lm: LoadedModel, prefix_kv, prefix_len: int, suffixes: list[list[int]], cache, *,
                     text_start: torch.Tensor | None = None, axes: int = 1):
    """Prefill only the question suffixes of B rows whose prefix is already in the KV cache.

    prefix_kv: per layer (keys, values), each (B, H_kv, P, head_dim), one row per question; consumed (the list
    is emptied once its tensors are in ``cache``);
    suffixes: B token lists (the text after the image tokens). The suffixes are left-padded *after* the
    prefix ([prefix][padding][suffix]), so the last slot is still every row's last token; each suffix
    token sits at RoPE position P + its index, as in the whole-prompt prefill; ``text_start`` (B,) moves each row's
    first suffix position elsewhere (Qwen2.5-VL: the text after an image continues at its start + max(h, w)) and
    ``axes=3`` gives the (3, B, S) positions of M-RoPE (text: the same position on all three axes).
    Returns (last hidden states (B, d), one layer group for decoding).
    """
    llm = lm.language_model
    ids, padding = left_pad(lm, suffixes)  # (B, S)
    hidden = llm.embed_tokens(ids)  # (B, S, d)
    positions = padded_positions(padding, prefix_len)
    if text_start is not None:
        positions = positions - prefix_len + text_start.to(positions.device)[:, None]
    if axes != 1:
        positions = positions[None].expand(axes, -1, -1)
    full_padding = torch.cat([padding.new_zeros(padding.shape[0], prefix_len), padding], dim=1)  # (B, P + S)
    mask = _attention_mask(full_padding)[:, :, prefix_len:]  # (B, 1, S, P + S): the suffix rows
    for layer_idx, (keys, values) in enumerate(prefix_kv):
        cache.update(keys, values, layer_idx)
    del keys, values
    prefix_kv.clear()  # consumed: from here the cache holds the only reference to the prefix KV
    position_embeddings = llm.rotary_emb(hidden, positions)
    for layer in llm.layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=positions,
                       cache=cache, use_cache=True)
    group = _LayerCache(range(len(llm.layers)), full_padding, positions[..., -1] + 1)
    return llm.norm(hidden[:, -1]), group


def _cut_caches(cache, layers: range, keep: torch.Tensor) -> None:
    """Keep only the slots ``keep`` (B, L') of the KV caches of ``layers`` (each (B, H_kv, L, head_dim))."""
    for layer_idx in layers:
        entry = cache.layers[layer_idx]
        index = keep[:, None, :, None].expand(-1, entry.keys.shape[1], -1, entry.keys.shape[-1])
        entry.keys = torch.gather(entry.keys, 2, index)
        entry.values = torch.gather(entry.values, 2, index)


def decode_step(lm: LoadedModel, token_ids: torch.Tensor, step: int, groups: list[_LayerCache], cache) -> torch.Tensor:
    """One greedy step for tokens (B,) at generation step ``step`` (0 = first generated token fed back).

    Each layer group attends over its own (pruned) cache and places the new token at its own position
    (no mask when that cache holds no padding). Returns last hidden states (B, d) after the final norm.
    """
    llm = lm.language_model
    hidden = llm.embed_tokens(token_ids[:, None])  # (B, 1, d)
    for group in groups:
        mask = None
        if group.has_padding:
            batch = group.padding.shape[0]
            generated = torch.zeros(batch, step + 1, dtype=torch.bool, device=hidden.device)
            mask = ~torch.cat([group.padding, generated], dim=1)[:, None, None, :]  # (B, 1, 1, L_l + step + 1)
        positions = (group.next_position + step)[..., None]  # (B, 1); (3, B, 1) for M-RoPE
        position_embeddings = llm.rotary_emb(hidden, positions)
        for layer_idx in group.layers:
            hidden = llm.layers[layer_idx](hidden, attention_mask=mask, position_embeddings=position_embeddings,
                                           position_ids=positions, cache=cache, use_cache=True)
    return llm.norm(hidden[:, -1])


def greedy(lm: LoadedModel, last_hidden: torch.Tensor, groups: list[_LayerCache], cache,
           max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding from the prefill's last hidden states (B, d); generated ids per row, EOS excluded."""
    stops = lm.stop_ids
    finished = torch.zeros(last_hidden.shape[0], dtype=torch.bool, device=last_hidden.device)
    steps: list[torch.Tensor] = []  # per step (B,) ids, with -1 once a row has finished
    for step in range(max_new_tokens):
        next_ids = lm.model.lm_head(last_hidden).argmax(-1)  # (B,)
        stopped = (next_ids == stops[0]) if len(stops) == 1 else torch.isin(
            next_ids, torch.tensor(stops, device=next_ids.device))
        finished |= stopped
        steps.append(torch.where(finished, -1, next_ids))
        if step == max_new_tokens - 1 or bool(finished.all()):  # one device sync per step
            break
        last_hidden = decode_step(lm, next_ids, step, groups, cache)
    table = torch.stack(steps, dim=1).tolist()  # (B, T), copied to the host once
    return [[token for token in row if token >= 0] for row in table]


def new_cache(lm: LoadedModel):
    from transformers import DynamicCache

    return DynamicCache(config=lm.language_model.config)


def finish(lm: LoadedModel, generated: list[list[int]], prompts: list[str], image_counts: list[list[int]],
           prompt_lengths: list[int], stats: dict) -> Generation:
    texts = [lm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    return Generation(token_ids=generated, texts=texts, prompts=prompts, image_tokens_per_layer=image_counts,
                      prompt_lengths=prompt_lengths, stats=stats)
