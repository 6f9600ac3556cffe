"""The one module that cuts LLaVA open: vision tower -> [encoder-side cut] -> projector -> LLM prefill
with [decoder-side cuts] -> greedy decoding with the pruned KV cache.

It calls HF's own modules (CLIP vision tower, LlavaMultiModalProjector, LlamaDecoderLayer with SDPA,
LlamaRotaryEmbedding, DynamicCache) and writes only the loop over decoder layers, so that a decoder-side
method can change the token set between layers. With no cut, this loop computes exactly what
``LlavaForConditionalGeneration.generate`` computes (tested token for token).

Only surviving image tokens are placed in the prompt (k image positions, not 576 with a mask), so the
projector and every LLM layer process the shorter sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from .models import LoadedModel
from .prompts import preprocess_image, tokenizer_image_token, vicuna_prompt
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
    next_position: torch.Tensor  # (B,) RoPE position of the first generated token


def _attention_mask(padding: torch.Tensor) -> torch.Tensor:
    """(B, L) padding -> (B, 1, L, L) bool causal mask, True = attend. Padded rows attend to themselves
    only (their outputs are never read) so that no softmax row is empty."""
    length = padding.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
    mask = causal[None] & ~padding[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool, device=padding.device)[None]
    return mask[:, None]


def encode_images(lm: LoadedModel, method, pixel_values: torch.Tensor, context: PruneContext) -> torch.Tensor:
    """Vision tower + encoder-side cut + projector. Returns LLM-input image embeddings (B, k, d)."""
    features = method.encode(lm.vision_tower, pixel_values, lm.feature_layer, context)  # (B, N, Dv)
    kept = method.reduce(features, context)  # (B, k, Dv)
    if method.kind == "encoder":
        assert kept.shape[1] == method.budget, f"{type(method).__name__} returned {kept.shape[1]} tokens, budget {method.budget}"
    return lm.projector(kept.to(lm.dtype))


def build_inputs(lm: LoadedModel, prompts: list[str], image_embeds: torch.Tensor) -> TokenState:
    """Tokenise with k image positions, left-pad, embed, place the image embeddings. image_embeds: (B, k, d)."""
    k = image_embeds.shape[1]
    rows = [tokenizer_image_token(p, lm.tokenizer, lm.image_token_id, k) for p in prompts]
    length = max(map(len, rows))
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    padding = torch.ones(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        padding[i, length - len(row):] = False
    ids, padding = ids.to(lm.device), padding.to(lm.device)
    is_image = ids == lm.image_token_id
    embeds = lm.language_model.embed_tokens(ids)  # (B, L, d)
    embeds = embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))
    position_ids = (torch.cumsum(~padding, dim=1) - 1).clamp_min(0)  # as HF generate: cumsum(mask) - 1
    return TokenState(hidden=embeds, position_ids=position_ids, padding=padding, is_image=is_image)


def prefill(lm: LoadedModel, state: TokenState, method, context: PruneContext, cache):
    """Run every decoder layer over the prompt, letting a decoder-side method cut between layers.

    Returns (last hidden state of each row (B, d), per-layer image-token counts (B, n_layers), layer groups).
    """
    llm = lm.language_model
    groups: list[_LayerCache] = []
    image_counts = []
    group_start, position_embeddings, mask = 0, None, None
    for layer_idx, layer in enumerate(llm.layers):
        if position_embeddings is None:  # first layer, or the token set changed
            position_embeddings = llm.rotary_emb(state.hidden, state.position_ids)
            mask = _attention_mask(state.padding)
            group_start = layer_idx
        layer_input = state.hidden
        output = layer(layer_input, attention_mask=mask, position_embeddings=position_embeddings,
                       position_ids=state.position_ids, cache=cache, use_cache=True)
        image_counts.append(state.image_count)
        state = state.with_hidden(output)
        new_state = None
        if method.kind == "decoder" and layer_idx < len(llm.layers) - 1:
            view = LayerView(layer_idx=layer_idx, layer_input=layer_input, state=state,
                             position_embeddings=position_embeddings, attention_mask=mask,
                             layers=llm.layers, rotary=llm.rotary_emb, context=context)
            new_state = method.after_layer(layer_idx, view)
        if new_state is not None or layer_idx == len(llm.layers) - 1:
            groups.append(_LayerCache(range(group_start, layer_idx + 1), state.padding,
                                      state.position_ids[:, -1] + 1))
        if new_state is not None:
            state, position_embeddings = new_state, None
    last_hidden = llm.norm(state.hidden[:, -1])  # left padding: the last slot is every row's last token
    return last_hidden, torch.stack(image_counts, dim=1), groups


def decode_step(lm: LoadedModel, token_ids: torch.Tensor, step: int, groups: list[_LayerCache], cache) -> torch.Tensor:
    """One greedy step for tokens (B,) at generation step ``step`` (0 = first generated token fed back).

    Each layer group attends over its own (pruned) cache and places the new token at its own position.
    Returns last hidden states (B, d) after the final norm.
    """
    llm = lm.language_model
    hidden = llm.embed_tokens(token_ids[:, None])  # (B, 1, d)
    for group in groups:
        batch = group.padding.shape[0]
        generated = torch.zeros(batch, step + 1, dtype=torch.bool, device=hidden.device)
        mask = ~torch.cat([group.padding, generated], dim=1)[:, None, None, :]  # (B, 1, 1, L_l + step + 1)
        positions = (group.next_position + step)[:, None]  # (B, 1)
        position_embeddings = llm.rotary_emb(hidden, positions)
        for layer_idx in group.layers:
            hidden = llm.layers[layer_idx](hidden, attention_mask=mask, position_embeddings=position_embeddings,
                                           position_ids=positions, cache=cache, use_cache=True)
    return llm.norm(hidden[:, -1])


@torch.inference_mode()
def generate(lm: LoadedModel, method, questions: list[str], images: list[Image.Image], *,
             instruction: str | None, max_new_tokens: int = 128, seed: int = 0) -> Generation:
    """Greedy generation for one batch of (question, image) pairs with ``method`` applied."""
    from transformers import DynamicCache

    assert len(questions) == len(images), f"{len(questions)} questions for {len(images)} images"
    method.check(lm)
    context = PruneContext(questions=questions, seed=seed, model=lm.model, instruction=instruction)
    pixels = torch.stack([preprocess_image(img, lm.image_size, lm.image_mean, lm.image_std) for img in images])
    image_embeds = encode_images(lm, method, pixels.to(lm.device, lm.dtype), context)
    prompts = [vicuna_prompt(q, instruction) for q in questions]
    state = build_inputs(lm, prompts, image_embeds)
    prompt_lengths = (~state.padding).sum(-1).tolist()

    cache = DynamicCache(config=lm.language_model.config)
    last_hidden, image_counts, groups = prefill(lm, state, method, context, cache)
    eos = lm.tokenizer.eos_token_id
    batch = len(questions)
    finished = torch.zeros(batch, dtype=torch.bool, device=lm.device)
    steps: list[torch.Tensor] = []  # per step (B,) ids, with -1 once a row has finished
    for step in range(max_new_tokens):
        next_ids = lm.model.lm_head(last_hidden).argmax(-1)  # (B,)
        finished |= next_ids == eos
        steps.append(torch.where(finished, -1, next_ids))
        if step == max_new_tokens - 1 or bool(finished.all()):  # one device sync per step
            break
        last_hidden = decode_step(lm, next_ids, step, groups, cache)
    table = torch.stack(steps, dim=1).tolist()  # (B, T), copied to the host once
    generated = [[token for token in row if token >= 0] for row in table]
    texts = [lm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    return Generation(token_ids=generated, texts=texts, prompts=prompts,
                      image_tokens_per_layer=image_counts.tolist(), prompt_lengths=prompt_lengths,
                      stats=dict(context.stats))
