"""LLaVA-1.5, the paper's model family: its front of the engine (:mod:`svdprune.surgery` holds the shared LLM half).

Vision: the CLIP tower's penultimate-layer patch features (B, 576, 1024) of the 336 px padded image, where an
encoder-side method cuts (``method.encode`` / ``method.reduce``), then the projector to LLM-input embeddings. Prompt:
LLaVA's vicuna_v1 conversation with k image ids where ``<image>`` stands (k = the tokens the cut kept), left-padded, at
1-D RoPE positions 0, 1, ... (:func:`build_inputs`). The prompt prefix up to and including the image tokens is
question-independent for vanilla and encoder-side methods, so :func:`generate_by_image` prefills it once per image
and its questions share its KV cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..models import (LoadedModel, build_tiny_tokenizer, cast_like_from_pretrained, check_local_folder, dtype_of,
                      hub_loading, in_project, read_config_json, resolve_device)
from ..prompts import (CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER, preprocess_image, tokenizer_image_token, vicuna_answer,
                       vicuna_prompt, vicuna_question)
from ..pruning import PruneContext, TokenState, reads_question_text
from ..surgery import (Generation, finish, greedy, left_pad, new_cache, padded_positions, prefill, prefill_suffixes,
                      shares_prefix)

NAME = "llava15"  # model.family (the default when a model config names none)
LABEL = "LLaVA-1.5"
MODEL_TYPE = "llava"  # its config.json's model_type
MODEL_CLASS = "LlavaForConditionalGeneration"  # what svdprune.prune() accepts for this family
TINY_GRID = 336 // 14  # the tiny model's patch grid side (build_tiny: 336 px images, 14 px patches)
#: what this family provides to the methods (their ``needs``, svdprune/pruning.py): a CLIP vision tower with a [CLS]
#: token and its attention, whose encoder layers a method may prune inside, whose text tower scores patches against
#: the question, and one token count (576) for every image
# view_cls_attention: an image is one CLIP view here, so a per-view method's views need no merging
CAPABILITIES = frozenset({"cls_attention", "view_cls_attention", "vision_layers", "clip_text", "fixed_grid"})
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


# ---------------------------------------------------------------- loading

def _finish(model, tokenizer, name, revision, image_mean, image_std, device, dtype) -> LoadedModel:
    model.to(device=device).eval()  # the dtype is the loader's business: see cast_like_from_pretrained
    return _describe(model, tokenizer, name, revision, image_mean, image_std, device, dtype)


def _describe(model, tokenizer, name, revision, image_mean, image_std, device, dtype) -> LoadedModel:
    """The engine's view of a LLaVA-1.5 model (its geometry, checked); moves and casts nothing."""
    config = model.config
    if config.vision_feature_select_strategy != "default":
        raise UserError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} "
                        "is not LLaVA-1.5's; allowed: 'default' (CLS dropped)")
    if not isinstance(config.vision_feature_layer, int):
        raise UserError(f"vision_feature_layer={config.vision_feature_layer!r}; allowed: one int (LLaVA-1.5: -2)")
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, revision=revision, image_size=vision.image_size,
        image_mean=tuple(image_mean), image_std=tuple(image_std), image_token_id=config.image_token_id,
        feature_layer=config.vision_feature_layer, num_patches=grid * grid, device=device, dtype=dtype, family=NAME,
        vision_tower=model.model.vision_tower, projector=model.model.multi_modal_projector,
    )




def from_model(model: torch.nn.Module, tokenizer=None) -> LoadedModel:
    """The engine's view of a ``LlavaForConditionalGeneration`` someone else loaded (any dtype, any device; used by
    :func:`svdprune.prune` through :func:`svdprune.families.from_model`). Nothing is moved or cast: the device and dtype
    are those of the model's own parameters (the vision tower's dtype: pixels and kept features are cast to it, as HF's
    LLaVA does)."""
    embed = model.model.language_model.embed_tokens.weight
    tower_dtype = next(p.dtype for p in model.model.vision_tower.parameters() if p.is_floating_point())
    return _describe(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__, None,
                     CLIP_MEAN, CLIP_STD, embed.device, tower_dtype)




def load_pretrained(path: str, revision: str | None, dtype: str, device: str, progress: bool = True) -> LoadedModel:
    """Load a llava-hf format checkpoint from a local folder or a hub id (e.g. llava-hf/llava-1.5-7b-hf).
    ``progress=False`` hides transformers' "Loading weights" bar."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    path = in_project(path)
    check_local_folder(path, "a llava-hf format folder (config.json, *.safetensors, tokenizer files)")
    torch_dtype, torch_device = dtype_of(dtype, device), resolve_device(device)
    with hub_loading(path, revision, progress):
        # on a GPU the weights go straight to it (accelerate's device_map), never through host RAM first
        on_gpu = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}
        model = LlavaForConditionalGeneration.from_pretrained(
            path, revision=revision, dtype=torch_dtype, attn_implementation="sdpa", **on_gpu)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    image_mean, image_std = _preprocessor_stats(path, revision)
    return _finish(model, tokenizer, path, revision, image_mean, image_std, torch_device, torch_dtype)




def _preprocessor_stats(path: str, revision: str | None):
    """image_mean / image_std from preprocessor_config.json (CLIP's when the file is absent)."""
    try:
        from huggingface_hub import hf_hub_download

        local = Path(path) / "preprocessor_config.json"
        file = local if local.is_file() else Path(hf_hub_download(path, "preprocessor_config.json", revision=revision))
        stats = json.loads(file.read_text())
        return stats.get("image_mean", CLIP_MEAN), stats.get("image_std", CLIP_STD)
    except Exception:  # noqa: BLE001 - the CLIP constants are LLaVA-1.5's anyway
        return CLIP_MEAN, CLIP_STD




def build_tiny(seed: int = 0, image_size: int = 336, patch_size: int = 14, vision_hidden: int = 32,
               vision_layers: int = 24, text_hidden: int = 64, text_layers: int = 32, heads: int = 4,
               initializer_range: float = 0.2, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """A random-weight LlavaForConditionalGeneration with LLaVA-1.5's token geometry (577 = CLS + 24 x 24).

    Same classes and forward code as the 7B model, built from a LlavaConfig in milliseconds, no download.
    Default depth is LLaVA-1.5-7B's (24 CLIP layers, 32 LLM layers) so that every method runs with its LLaVA
    schedule (ToMe's 23 merging layers, SparseVLM's layer 15, PyramidDrop's layer 16); tests that only need
    the plumbing pass smaller depths.
    ``initializer_range`` is larger than HF's 0.02 so that image features visibly move the logits.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                              patch_size=patch_size, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                       num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       initializer_range=initializer_range)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
                         initializer_range=initializer_range)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cast_like_from_pretrained(LlavaForConditionalGeneration(config), dtype_of(dtype, device))
    return _finish(model, tokenizer, "tiny", None, CLIP_MEAN, CLIP_STD, resolve_device(device), dtype_of(dtype, device))


def load(model_cfg, progress: bool = True) -> LoadedModel:
    """``model.kind``: ``pretrained`` (a llava-hf hub id or local folder, :func:`load_pretrained`) or ``tiny``
    (:func:`build_tiny`)."""
    if model_cfg.kind == "pretrained":
        return load_pretrained(model_cfg.path, model_cfg.get("revision"), model_cfg.dtype, model_cfg.device, progress)
    return build_tiny(seed=model_cfg.seed, device=model_cfg.device, dtype=model_cfg.dtype,
                      **{k: model_cfg[k] for k in ("vision_layers", "text_layers", "initializer_range") if k in model_cfg})


def max_image_tokens(model_cfg) -> int | None:
    """Image tokens per image without loading the model: 24 x 24 = 576 for the tiny model; a local folder's (or the HF
    cache's) config.json when it is there; None when unknown."""
    if model_cfg.get("kind") != "pretrained":
        return TINY_GRID * TINY_GRID
    config = read_config_json(model_cfg)
    try:
        vision = config["vision_config"]
        return (vision.get("image_size", 336) // vision.get("patch_size", 14)) ** 2
    except (KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------- a user's own inputs (svdprune.prune, lmms-eval)

def prefill_inputs(lm: LoadedModel, method, rows: list[tuple[list[int], list[int]]], inputs: dict, *, seed: int,
                   questions: list[str] | None):
    """The pruned prefill's inputs from a user's call (:class:`svdprune.api.PruneHandle`): vision tower, cut and
    projector over the batch's images (``inputs["pixel_values"]``, one per row), each row's image run (``rows``: the
    ids before and after it) replaced by the k kept tokens, left-padded. Returns (parts, the token rows, per-row
    stats); parts: one (row indices, TokenState, the method to run, its context) per prefill, here one for all rows."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None or pixel_values.shape[0] != len(rows):
        got = "none" if pixel_values is None else pixel_values.shape[0]
        raise UserError(f"svdprune: {len(rows)} prompts with an image need {len(rows)} images in pixel_values "
                        f"(one per prompt, {LABEL}); got {got}")
    context = PruneContext(questions=questions, seed=seed, model=lm.model, lm=lm, instruction=None)
    # float32 pixels on the context as run.py hands them over (random-k seeds), cast to the model's dtype
    embeds = encode_images(lm, method, to_model(lm, pixel_values.to(torch.float32), context), context)  # (B, k, d)
    k = embeds.shape[1]
    token_rows = [prefix + [lm.image_token_id] * k + suffix for prefix, suffix in rows]
    return [(list(range(len(rows))), build_inputs_from_ids(lm, token_rows, embeds), method, context)], token_rows, {}


def question_text(lm: LoadedModel, suffix_ids: list[int]) -> str:
    """The question of a prompt from the ids after its image (vicuna_v1: the user turn up to " ASSISTANT:")."""
    return vicuna_question(lm.tokenizer, suffix_ids)


def model_output(logits, loss, cache):
    """The HF output class of this family's forward."""
    from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

    return LlavaCausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


def prompt(question: str, instruction: str | None = None) -> str:
    """The prompt run.py feeds for one question (vicuna_v1, the image first; ``<image>`` expanded later)."""
    return vicuna_prompt(question, instruction)


def full_prompt_ids(lm: LoadedModel, prompt_text: str, image: Image.Image | None = None) -> list[int]:
    """A prompt's ids with its image placeholder expanded to the unpruned count (576), as LLaVA's
    ``tokenizer_image_token`` and llava-hf's processor give them (every image has the same count)."""
    return tokenizer_image_token(prompt_text, lm.tokenizer, lm.image_token_id, lm.num_patches)


def model_inputs(lm: LoadedModel, prompts: list[str], images: list[Image.Image]) -> dict:
    """The forward's keyword arguments for prompts and their images (one each), left-padded: what llava-hf's
    processor gives, with official LLaVA-1.5's pixels (:func:`preprocess`)."""
    ids, padding = left_pad(lm, [full_prompt_ids(lm, text) for text in prompts])
    pixels = torch.stack([preprocess(lm, image) for image in images])
    return {"input_ids": ids, "attention_mask": (~padding).long(), "pixel_values": pixels}


def answer_text(lm: LoadedModel, prompt_text: str, continuation: str) -> str:
    """The prompt followed by an assistant turn holding ``continuation`` (lmms-eval's loglikelihood)."""
    return vicuna_answer(lm.tokenizer, prompt_text, continuation)
