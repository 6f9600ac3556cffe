"""LLaVA-1.5, the paper's model family: its front of the engine (:mod:`svdprune.surgery` holds the shared LLM half).

Vision: the CLIP tower's penultimate-layer patch features (B, 576, 1024) of the 336 px padded image, where an
encoder-side method cuts (``method.encode`` / ``method.reduce``), then the projector to LLM-input embeddings. Prompt:
LLaVA's vicuna_v1 conversation with k image ids where ``<image>`` stands (k = the tokens the cut kept), left-padded, at
1-D RoPE positions 0, 1, ... (:func:`build_inputs`). The prompt prefix up to and including the image tokens is
question-independent for vanilla and encoder-side methods, so :func:`generate_by_image` prefills it once per image
and its questions share its KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .models import LoadedModel
from .prompts import preprocess_image, tokenizer_image_token, vicuna_prompt
from .pruning import PruneContext, TokenState, reads_question_text
from .surgery import (Generation, finish, greedy, left_pad, new_cache, padded_positions, prefill, prefill_suffixes,
                      shares_prefix)

LABEL = "LLaVA-1.5"
#: what this family provides to the methods (their ``needs``, svdprune/pruning.py): a CLIP vision tower with a [CLS]
#: token and its attention, whose encoder layers a method may prune inside, whose text tower scores patches against
#: the question, and one token count (576) for every image
CAPABILITIES = frozenset({"cls_attention", "vision_layers", "clip_text", "fixed_grid"})
LACKS: dict[str, str] = {}


def preprocess(lm: LoadedModel, image: Image.Image) -> torch.Tensor:
    """LLaVA-1.5's pixels of one image: padded to a square with the mean colour, resized to 336 px, normalised
    (3, S, S) float32."""
    return preprocess_image(image, lm.image_size, lm.image_mean, lm.image_std)


def to_model(lm: LoadedModel, pixels: torch.Tensor, context: PruneContext) -> torch.Tensor:
    """Preprocessed pixels (B, 3, H, W, float32) -> the model's device and dtype; the float32 values stay on
    ``context.pixels_float32`` for methods whose randomness follows the image."""
    context.pixels_float32 = pixels
    return pixels.to(lm.device, lm.dtype)


def _forget_vision(context: PruneContext) -> None:
    """After the encoder-side cut: the vision tower's hidden states (25 x (B, 577, 1024) for LLaVA-1.5, ~30 MB
    per image in fp16), the tensors ``encode`` handed to ``reduce`` and the float32 pixels are not needed by
    the LLM or a decoder-side method; dropped so that they do not live through prefill and decoding."""
    context.vision_hidden_states = None
    context.encoder_aux = {}
    context.pixels_float32 = None


def encode_images(lm: LoadedModel, method, pixel_values: torch.Tensor, context: PruneContext) -> torch.Tensor:
    """Vision tower + encoder-side cut + projector. Returns LLM-input image embeddings (B, k, d). A context
    without float32 pixels (a caller that skipped :func:`to_model`) gets ``pixel_values`` as them."""
    if context.pixels_float32 is None:
        context.pixels_float32 = pixel_values
    if context.lm is None:  # a context made by the caller: the family fills what methods read
        context.lm = lm
    features = method.encode(lm.vision_tower, pixel_values, lm.feature_layer, context)  # (B, N, Dv)
    kept = method.reduce(features, context)  # (B, k, Dv)
    _forget_vision(context)
    if method.kind == "encoder":
        assert kept.shape[1] == method.budget, f"{type(method).__name__} returned {kept.shape[1]} tokens, budget {method.budget}"
    embeds = lm.projector(kept.to(lm.dtype))  # (B, k, d)
    if context.zero_slots is not None:  # slots the method's released code fills with zero embeddings (HoloV)
        embeds = embeds.masked_fill(context.zero_slots[..., None].to(embeds.device), 0.0)
        context.zero_slots = None
    return embeds


def _embed(lm: LoadedModel, ids: torch.Tensor, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed ids (B, L) and place image_embeds (B, k, d) at the image positions. Returns (embeds, is_image)."""
    is_image = ids == lm.image_token_id
    embeds = lm.language_model.embed_tokens(ids)  # (B, L, d)
    return embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype)), is_image


def build_inputs(lm: LoadedModel, prompts: list[str], image_embeds: torch.Tensor) -> TokenState:
    """Tokenise with k image positions, left-pad, embed, place the image embeddings. image_embeds: (B, k, d)."""
    k = image_embeds.shape[1]
    return build_inputs_from_ids(
        lm, [tokenizer_image_token(p, lm.tokenizer, lm.image_token_id, k) for p in prompts], image_embeds)


def build_inputs_from_ids(lm: LoadedModel, rows: list[list[int]], image_embeds: torch.Tensor) -> TokenState:
    """Token rows (each with exactly k image ids, no padding) -> left-padded, embedded :class:`TokenState`
    with image_embeds (B, k, d) at the image positions. The runner's prompts and :mod:`svdprune.api`'s
    (the user's own input_ids) enter the LLM through here."""
    ids, padding = left_pad(lm, rows)
    embeds, is_image = _embed(lm, ids, image_embeds)
    return TokenState(hidden=embeds, position_ids=padded_positions(padding), padding=padding, is_image=is_image)


def _generate_full(lm: LoadedModel, method, prompts: list[str], image_embeds: torch.Tensor, context: PruneContext,
                   max_new_tokens: int, stats: dict | None = None) -> Generation:
    """Whole-prompt prefill (with the method's decoder-side cuts) + greedy decoding; image_embeds (B, k, d)."""
    state = build_inputs(lm, prompts, image_embeds)
    prompt_lengths = (~state.padding).sum(-1).tolist()
    cache = new_cache(lm)
    last_hidden, image_counts, groups = prefill(lm, state, method, context, cache)
    generated = greedy(lm, last_hidden, groups, cache, max_new_tokens)
    return finish(lm, generated, prompts, image_counts.tolist(), prompt_lengths, {**(stats or {}), **context.stats})


@torch.inference_mode()
def generate(lm: LoadedModel, method, questions: list[str], images: list[Image.Image], *,
             instruction: str | None, max_new_tokens: int = 128, seed: int = 0) -> Generation:
    """:func:`svdprune.families.generate` on LLaVA-1.5 (the caller has checked the method): the per-question path,
    every row pays for its own image and whole prompt; the reference :func:`generate_by_image` is tested against."""
    context = PruneContext(questions=questions, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    pixels = torch.stack([preprocess(lm, image) for image in images])
    image_embeds = encode_images(lm, method, to_model(lm, pixels, context), context)
    prompts = [vicuna_prompt(q, instruction) for q in questions]
    return _generate_full(lm, method, prompts, image_embeds, context, max_new_tokens)


# ---------------------------------------------------------------- one vision pass and one prefix per image

@dataclass
class ImagePrefix:
    """The question-independent part of one image's prompts, computed once and shared by its questions.

    embeds: (k, d) LLM-input image embeddings after the encoder-side cut and the projector.
    stats: the per-image values the method recorded (one value per key).
    prefix_ids: the ids every prompt of the image starts with: BOS, system prompt, "USER: ", k image ids.
    kv: per LLM layer (keys, values), each (H_kv, P, head_dim): the prefilled prefix. None for methods whose
        LLM prefill cannot be shared (decoder-side cuts).
    """

    embeds: torch.Tensor
    stats: dict
    prefix_ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def split_prompt(lm: LoadedModel, prompt: str, k: int) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids of one prompt with k image positions: the prefix ends with the last image token.
    Their concatenation is exactly ``tokenizer_image_token(prompt, ..., k)``."""
    ids = tokenizer_image_token(prompt, lm.tokenizer, lm.image_token_id, k)
    end = len(ids) - ids[::-1].index(lm.image_token_id)
    return ids[:end], ids[end:]


def prefill_prefixes(lm: LoadedModel, prefix_ids: list[int], image_embeds: torch.Tensor):
    """Run every decoder layer over the shared prefix of n images (no padding: SDPA ``is_causal``).

    prefix_ids: P ids (k of them image ids); image_embeds: (n, k, d).
    Returns per layer (keys, values), each (n, H_kv, P, head_dim) with RoPE applied, as the KV cache holds them.
    """
    n = image_embeds.shape[0]
    ids = torch.tensor([prefix_ids], device=lm.device).expand(n, -1)  # (n, P)
    hidden, _ = _embed(lm, ids, image_embeds)
    positions = torch.arange(len(prefix_ids), device=lm.device)[None].expand(n, -1)
    llm = lm.language_model
    position_embeddings = llm.rotary_emb(hidden, positions)
    cache = new_cache(lm)
    for layer in llm.layers:
        hidden = layer(hidden, attention_mask=None, position_embeddings=position_embeddings, position_ids=positions,
                       cache=cache, use_cache=True)
    return [(cache.layers[i].keys, cache.layers[i].values) for i in range(len(llm.layers))]


def _per_image_stats(stats: dict, n: int) -> list[dict]:
    """{key: [v_0 .. v_n-1]} as recorded for n images -> n dicts {key: v_j}."""
    return [{key: values[j] for key, values in stats.items()} for j in range(n)]


def _row_stats(per_image: list[dict], row_image: list[int]) -> dict:
    """Per-image stat dicts -> {key: one value per row}."""
    keys = list(dict.fromkeys(key for stats in per_image for key in stats))
    return {key: [per_image[j][key] for j in row_image] for key in keys}


def encode_prefixes(lm: LoadedModel, method, pixel_values: torch.Tensor, *, instruction: str | None,
                    seed: int) -> list[ImagePrefix]:
    """Vision tower, encoder-side cut, projector and (where :func:`shares_prefix`) the prefix prefill of n
    distinct images (pixel_values (n, 3, S, S)). The method's context has no questions (``None``): a method
    that reads them must declare ``question_dependent``."""
    context = PruneContext(questions=None, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    embeds = encode_images(lm, method, to_model(lm, pixel_values, context), context)  # (n, k, d)
    prefix_ids, _ = split_prompt(lm, vicuna_prompt("", instruction), embeds.shape[1])
    kv = prefill_prefixes(lm, prefix_ids, embeds) if shares_prefix(method) else None
    stats = _per_image_stats(context.stats, embeds.shape[0])
    per_image = _split_per_image(kv, embeds.shape[0]) if kv is not None else [None] * embeds.shape[0]
    return [ImagePrefix(embeds=embeds[j], stats=stats[j], prefix_ids=prefix_ids, kv=per_image[j])
            for j in range(embeds.shape[0])]


def _split_per_image(kv: list, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer (keys, values) of n images, each (n, H_kv, P, D) -> per image, per layer (H_kv, P, D), each
    image's own copy: a view would keep the whole batch's KV alive while one image's prefix is carried on
    to the next batch. The batch's tensors are released layer by layer (``kv`` is emptied)."""
    if n == 1:
        return [[(keys[0], values[0]) for keys, values in kv]]
    out: list[list] = [[] for _ in range(n)]
    for layer in range(len(kv)):
        keys, values = kv[layer]
        kv[layer] = None
        for j in range(n):
            out[j].append((keys[j].clone(), values[j].clone()))
        del keys, values
    return out


def _expand_context(image_context: PruneContext, n: int, index: torch.Tensor, questions: list[str], seed: int,
                    lm, instruction: str | None) -> PruneContext:
    """A per-question context from the one of n images: vision hidden states and encoder_aux tensors of the
    image stage repeated per row (index (B,) -> image), per-image stats repeated per row."""
    context = PruneContext(questions=questions, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    if image_context.vision_hidden_states is not None:
        context.vision_hidden_states = tuple(h.index_select(0, index) for h in image_context.vision_hidden_states)
    context.encoder_aux = {key: value.index_select(0, index) if isinstance(value, torch.Tensor) else value
                           for key, value in image_context.encoder_aux.items()}
    if image_context.stats:
        context.stats.update(_row_stats(_per_image_stats(image_context.stats, n), index.tolist()))
    return context


def _generate_question_dependent(lm, method, prompts, questions, pixel_values, row_image, *, instruction,
                                 max_new_tokens, seed) -> Generation:
    """Encoder-side selection that reads the question (TRIM): the vision tower runs once per distinct image,
    ``reduce`` once per question, the whole prompt is prefilled per question."""
    image_context = PruneContext(questions=None, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    features = method.encode(lm.vision_tower, to_model(lm, pixel_values, image_context), lm.feature_layer,
                             image_context)  # (n, N, Dv)
    index = torch.tensor(row_image, device=features.device)
    context = _expand_context(image_context, features.shape[0], index, questions, seed, lm, instruction)
    kept = method.reduce(features.index_select(0, index), context)  # (B, k, Dv)
    _forget_vision(context)
    _forget_vision(image_context)
    del features
    assert kept.shape[1] == method.budget, f"{type(method).__name__} returned {kept.shape[1]} tokens, budget {method.budget}"
    return _generate_full(lm, method, prompts, lm.projector(kept.to(lm.dtype)), context, max_new_tokens)


@torch.inference_mode()
def generate_by_image(lm: LoadedModel, method, questions: list[str], image_keys: list, pixels, *,
                      instruction: str | None, max_new_tokens: int = 128, seed: int = 0,
                      prefixes: dict | None = None) -> Generation:
    """:func:`svdprune.families.generate_by_image` on LLaVA-1.5 (the caller has checked the method): greedy generation
    for a batch of questions, paying once per distinct image instead of once per question.

    image_keys: one hashable per question naming its image; pixels: key -> preprocessed image (3, S, S)
    (needed for the keys not in ``prefixes``). ``prefixes`` (key -> :class:`ImagePrefix`, owned by the caller)
    carries images from one batch to the next: missing keys are computed and added, the caller drops what it no
    longer needs. Per method (``method.kind``, ``method.question_dependent``):

    * vanilla and encoder-side: vision tower, cut and projector once per image, the prompt prefix (up to and
      including the image tokens) prefilled once per image; only the question suffixes are prefilled per
      question, decoding continues from the shared prefix cache;
    * decoder-side: vision tower and projector once per image; the whole prompt is prefilled per question
      (the cuts depend on the question from the first cut on);
    * question-dependent encoder-side (TRIM): vision tower once per distinct image in the batch, the cut and
      the whole prompt per question.

    Same predictions as :func:`generate` on the same questions (up to floating-point summation order).
    """
    prefixes = {} if prefixes is None else prefixes
    prompts = [vicuna_prompt(q, instruction) for q in questions]
    distinct = list(dict.fromkeys(image_keys))
    row_image = [distinct.index(key) for key in image_keys]
    if reads_question_text(method):
        stacked = torch.stack([pixels[key] for key in distinct])
        return _generate_question_dependent(lm, method, prompts, questions, stacked, row_image,
                                            instruction=instruction, max_new_tokens=max_new_tokens, seed=seed)

    missing = [key for key in distinct if key not in prefixes]
    if missing:
        new = encode_prefixes(lm, method, torch.stack([pixels[key] for key in missing]), instruction=instruction,
                              seed=seed)
        prefixes.update(zip(missing, new))
    rows = [prefixes[key] for key in image_keys]
    stats = _row_stats([prefixes[key].stats for key in distinct], row_image)
    if not shares_prefix(method):
        context = PruneContext(questions=questions, seed=seed, model=lm.model, lm=lm, instruction=instruction)
        embeds = torch.stack([row.embeds for row in rows])  # (B, N, d)
        return _generate_full(lm, method, prompts, embeds, context, max_new_tokens, stats)

    k = rows[0].embeds.shape[0]
    split = [split_prompt(lm, prompt, k) for prompt in prompts]
    assert all(prefix == row.prefix_ids for (prefix, _), row in zip(split, rows)), "prompts do not share the prefix"
    prefix_ids = rows[0].prefix_ids
    index = torch.tensor(row_image, device=lm.device)
    cache = new_cache(lm)
    suffixes = [suffix for _, suffix in split]
    # the batch's prefix KV (per layer (B, H_kv, P, head_dim)) is handed over without a name here: once in the
    # cache it is referenced there only, so the cache's growth replaces it instead of doubling it
    last_hidden, group = prefill_suffixes(
        lm, [(torch.stack([prefixes[key].kv[layer][0] for key in distinct]).index_select(0, index),
              torch.stack([prefixes[key].kv[layer][1] for key in distinct]).index_select(0, index))
             for layer in range(len(lm.language_model.layers))], len(prefix_ids), suffixes, cache)
    generated = greedy(lm, last_hidden, [group], cache, max_new_tokens)
    n_layers = len(lm.language_model.layers)
    return finish(lm, generated, prompts, [[k] * n_layers for _ in questions],
                   [len(prefix_ids) + len(suffix) for suffix in suffixes], stats)
