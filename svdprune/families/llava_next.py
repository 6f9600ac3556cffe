"""LLaVA-NeXT (LLaVA-1.6), the third model family: AnyRes inputs in front of the shared engine.

What differs from LLaVA-1.5, and how this file meets the engine (:mod:`svdprune.surgery`):

* **AnyRes views.** The model card's image processor picks, from ``image_grid_pinpoints``, the resolution that keeps
  most of the image at its aspect (``select_best_resolution``), resizes the image into it and pads it, and cuts it into
  tiles of the CLIP tower's size (336 px on the 7B); a base view is the whole image resized to one tile. CLIP encodes
  the base view and every tile (576 patch features each on the 7B, [CLS] dropped), the projector maps them to LLM
  inputs, and HF's ``pack_image_features`` lays them out: the base view's 576 tokens, then the tiles' feature map
  unpadded back to the image's aspect, row by row, with the learned ``image_newline`` token after each row. So an
  image has its own token count N = 576 + rows x (columns + 1) (:func:`token_layout`), up to 2,928 on the 7B.
* **Positions** are LLaVA's 1-D RoPE positions: the kept tokens are placed contiguously in the prompt (k image ids
  where ``<image>`` stands), as on LLaVA-1.5.
* **Prompt.** The vicuna_v1 conversation of LLaVA-NeXT's eval for the vicuna model, the same text as LLaVA-1.5's
  (:func:`svdprune.prompts.vicuna_prompt`).

Budgets, as the two authors' LLaVA-NeXT codes among the methods that run here have it (DivPrune: vbdi/divprune's
``prepare_inputs_labels_for_multimodal`` selects among ``image_features[0]``, the whole packed span; DART: its
llava-v1.6 path takes every token between the prompt's prefix and its text). The image's tokens are its whole
packed span: base view, unpadded tiles and newline tokens, in that order, after the projector (the tokens the LLM
would see). A count ``budget=640`` means 640 of them reach the LLM, whatever the image's own count N;
``budget_ratio`` a share of N (rounded down; DivPrune's own code rounds to nearest). An encoder-side method
(SVD-Prune, DivPrune, random-k) selects among all N, newline tokens included (each is the same learned vector: a
diversity or leverage selection keeps about one), and the kept ones stay in their packed order at contiguous
positions, as the authors' code leaves them. A decoder-side method (FastV, PyramidDrop, SparseVLM, DART) sees the
same N tokens at their positions in the prompt. An image with at most its budget of tokens keeps everything.
tests/fixtures/official/{divprune,dart}_llava_next.json hold the authors' code's selections on seeded spans of a
336 x 336 and a 672 x 672 image (``scripts/official_fixtures.py``); ours are the same tokens.

Methods: those whose algorithm needs only the LLM-input tokens or the LLM's attention run, and the per-view methods
(``view_cls_attention``: FasterVLM, VisPruner) run as their authors' LLaVA-NeXT code runs them
(:func:`select_per_view`: their selection on every view, ``budget`` split evenly over the views, the kept tokens merged
without unpadding or newline tokens). Methods that read CLIP's [CLS] attention one view per image, run inside CLIP's
layers, use CLIP's text tower or a fixed token count are refused with the reason (:data:`LACKS`): on AnyRes each of
those is a per-view design of its own in its authors' LLaVA-NeXT code (VisionZip's, for one, restores the tiles'
dominant tokens to the grid and appends each tile's [CLS] and contextual tokens), not modelled yet. Pooling is
refused by its own check (an AnyRes image is not one h x w grid).

Batches: the vision tower and the cut run once per distinct image; vanilla and encoder-side methods also prefill
each image's prompt prefix once (:class:`._per_image.SharedPrefix`) and each question only its suffix, as on the other families; a
decoder-side cut prefills whole prompts, in groups of one image token count (:mod:`._per_image`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError
from ..models import (LoadedModel, build_tiny_tokenizer, cast_like_from_pretrained, check_local_folder, dtype_of,
                      hub_loading, in_project, read_config_json, resolve_device)
from ..prompts import (CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER, tokenizer_image_token, vicuna_answer, vicuna_prompt,
                       vicuna_question)
from ..pruning import PruneContext, TokenState
from ..surgery import finish, left_pad, padded_positions, shares_prefix
from ._per_image import (SharedPrefix, check_image_tokens, generate_parts, generate_shared_prefix, image_budget,
                         prefill_cut_rows, prefill_prefixes, stat_columns)

NAME = "llava_next"  # model.family
LABEL = "LLaVA-NeXT"
MODEL_TYPE = "llava_next"  # its config.json's model_type
MODEL_CLASS = "LlavaNextForConditionalGeneration"  # what svdprune.prune() accepts for this family
#: inputs a pruned forward takes beyond the model's own: ``image_tiles`` (B, 2), each image's (rows, columns) of tiles
#: when the pixels were not tiled as llava-hf's processor tiles them (:func:`model_inputs` tiles as official LLaVA-NeXT)
EXTRA_INPUTS = ("image_tiles",)
#: view_cls_attention: the per-view methods (FasterVLM, VisPruner) run on an image's views and their kept tokens are
#: merged as those methods' authors merge them on LLaVA-NeXT (:func:`select_per_view`)
CAPABILITIES = frozenset({"view_cls_attention"})
LACKS = {
    "cls_attention": "it reads the vision tower's [CLS] attention, and an AnyRes image is a base view and tiles, each "
                     "with its own [CLS]; how its authors combine them on LLaVA-NeXT is not modelled yet",
    "vision_layers": "it works inside CLIP's encoder layers, and an AnyRes image is several CLIP views packed after "
                     "the projector; per-view pruning inside CLIP is not modelled yet",
    "clip_text": "it scores patches against the question with CLIP's text tower, per view on AnyRes; not modelled yet",
    "fixed_grid": "its schedule is fitted to one token count for every image (LLaVA-1.5's 576), and LLaVA-NeXT's "
                  "images each have their own",
}


# ---------------------------------------------------------------- inputs

@dataclass
class NextImage:
    """One preprocessed image: ``pixels`` (V, 3, S, S) float32, its base view and then its tiles row by row, as the
    image processor emits them; ``image_size`` (2,) long, the image's (height, width); ``tiles`` (rows, columns) of
    tiles; ``layout`` (base tokens, rows, columns) of its packed tokens (:func:`token_layout`)."""

    pixels: torch.Tensor
    image_size: torch.Tensor
    tiles: tuple[int, int]
    layout: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        base, rows, cols = self.layout
        return base + rows * (cols + 1)

    def newline_mask(self) -> torch.Tensor:
        """(N,) bool: True at the newline tokens (the last of each unpadded row)."""
        base, rows, cols = self.layout
        mask = torch.zeros(self.num_tokens, dtype=torch.bool)
        mask[base + cols::cols + 1] = True
        return mask


def official_tiles(config, image_size) -> tuple[int, int]:
    """(rows, columns) of tiles official LLaVA-NeXT cuts an image of ``image_size`` (height, width) into:
    ``select_best_resolution`` over the pinpoints read as (width, height), the first of equally good ones winning.
    transformers reads the same pinpoints as (height, width), so where two resolutions are equally good (an image of
    at most one tile on each side: e.g. 336 x 2 tiles wide or high) it tiles 1 x 2 where official tiles 2 x 1. The
    official eval's choice is followed here (tests/test_llava_next.py holds it to official outputs)."""
    from transformers.image_processing_utils import select_best_resolution

    side = config.vision_config.image_size
    best_h, best_w = select_best_resolution([int(v) for v in image_size],
                                            [[int(p[1]), int(p[0])] for p in config.image_grid_pinpoints])
    return best_h // side, best_w // side


def hf_tiles(config, image_size) -> tuple[int, int]:
    """(rows, columns) of tiles transformers' processor and ``get_image_features`` use (see :func:`official_tiles`):
    how a user's own llava-hf inputs are laid out."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    rows, cols = get_anyres_image_grid_shape([int(v) for v in image_size], config.image_grid_pinpoints,
                                             config.vision_config.image_size)
    return int(rows), int(cols)


def token_layout(config, image_size, tiles: tuple[int, int]) -> tuple[int, int, int]:
    """(base view tokens, rows, columns) of an image's packed tokens: the ``tiles`` grid of feature maps unpadded to the
    image's aspect (the rule of official ``unpad_image`` and of transformers')."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    height, width = (int(v) for v in image_size)
    rows, cols = tiles[0] * side, tiles[1] * side
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
    return side * side, rows, cols


def most_tokens(config) -> int:
    """The most image tokens one image can have: an image at a pinpoint's exact aspect (nothing unpadded)."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    return max(side * side + (h // vision.patch_size) * (w // vision.patch_size + 1)
               for h, w in config.image_grid_pinpoints)


def image_processor(config, path: str | None = None, revision: str | None = None):
    """The model card's image processor (the PIL implementation), or one built from the model's config (the tiny
    model, a model the user loaded): CLIP's mean and std, bicubic resize, the config's tile size and pinpoints."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    if path is not None:
        return LlavaNextImageProcessorPil.from_pretrained(path, revision=revision)
    side = config.vision_config.image_size
    return LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                      image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
                                      image_mean=CLIP_MEAN, image_std=CLIP_STD)


def preprocess(lm: LoadedModel, image: Image.Image) -> NextImage:
    """AnyRes pixels of one image as official LLaVA-NeXT's ``process_anyres_image`` makes them: the model card's image
    processor at the resolution the official rule picks (:func:`official_tiles`; where transformers would pick the
    same, its pixels are these)."""
    config = lm.model.config
    image = image.convert("RGB")
    size = (image.height, image.width)
    tiles = official_tiles(config, size)
    side = config.vision_config.image_size
    out = lm.image_processor(images=[image], image_grid_pinpoints=[[tiles[0] * side, tiles[1] * side]],
                             return_tensors="pt")
    pixels = out["pixel_values"][0, :1 + tiles[0] * tiles[1]].to(torch.float32)
    return NextImage(pixels=pixels, image_size=out["image_sizes"][0], tiles=tiles,
                     layout=token_layout(config, size, tiles))


def prompt(question: str, instruction: str | None = None) -> str:
    """The prompt run.py feeds for one question: LLaVA-NeXT's vicuna_v1 conversation, the image first."""
    return vicuna_prompt(question, instruction)


def _parts(lm: LoadedModel, question: str, instruction: str | None) -> tuple[list[int], list[int]]:
    """(ids before the image, ids after it) of one question's prompt."""
    ids = tokenizer_image_token(prompt(question, instruction), lm.tokenizer, lm.image_token_id, 1)
    at = ids.index(lm.image_token_id)
    return ids[:at], ids[at + 1:]


# ---------------------------------------------------------------- vision and the cut

def vision_tokens(lm: LoadedModel, images: list[NextImage]) -> list[torch.Tensor]:
    """LLM-input image tokens per image, (N_i, d): the vision tower over every view of the images together, the
    feature layer without [CLS], the projector, then each image packed (:func:`pack`)."""
    pixels = torch.cat([image.pixels for image in images]).to(lm.device, lm.dtype)
    hidden = lm.vision_tower(pixels, output_hidden_states=True).hidden_states[lm.feature_layer][:, 1:]  # (V, P, Dv)
    features = lm.projector(hidden)  # (V, P, d)
    newline = lm.model.model.image_newline
    views = torch.split(features, [image.pixels.shape[0] for image in images])
    return [pack(image_views, image, newline) for image_views, image in zip(views, images)]


def pack(views: torch.Tensor, image: NextImage, newline: torch.Tensor) -> torch.Tensor:
    """(1 + T, P, d) projected views of one image -> its packed tokens (N, d): the base view's P tokens, then the tiles'
    feature map (rows x columns of tiles, each side x side) cut to the image's aspect, row by row, each row followed by
    ``newline`` (the layout of official LLaVA-NeXT's ``spatial_unpad`` merge and of transformers'
    ``pack_image_features``)."""
    tiles_h, tiles_w = image.tiles
    side = math.isqrt(views.shape[1])
    grid = views[1:].view(tiles_h, tiles_w, side, side, -1)  # (th, tw, side, side, d)
    grid = grid.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)  # (d, th * side, tw * side)
    _, rows, cols = image.layout
    top, left = (grid.shape[1] - rows) // 2, (grid.shape[2] - cols) // 2
    grid = grid[:, top:top + rows, left:left + cols]  # (d, rows, cols): the image's own aspect
    grid = torch.cat([grid, newline[:, None, None].expand(-1, rows, 1).to(grid.device, grid.dtype)], dim=-1)
    return torch.cat([views[0], grid.flatten(1, 2).transpose(0, 1)])  # (P + rows * (cols + 1), d)


def select(lm: LoadedModel, method, tokens: torch.Tensor, image: NextImage, seed: int,
           instruction: str | None) -> tuple[torch.Tensor, dict]:
    """One image's encoder-side cut over its whole packed span (base view, unpadded tiles, newline tokens: the
    candidates of the authors' LLaVA-NeXT code, see the module's docstring): (kept tokens (k, d) in packed order, the
    method's stats). Vanilla, decoder-side methods and an image with at most its budget of tokens keep every token."""
    n = tokens.shape[0]
    if method.kind != "encoder" or n <= image_budget(method, n):
        return tokens, {}
    if method.budget_ratio is not None:
        method = method.with_budget(image_budget(method, n))
    context = PruneContext(questions=None, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    context.pixels_float32 = image.pixels[None]  # what per-image randomness derives from (random-k)
    context.features_are_llm_inputs = True  # the projector ran: DivPrune measures distances on these as they are
    kept = method.reduce(tokens[None], context)[0]  # (k, d) of (n, d): base view, then the tile rows, each ending in a newline
    stats = {key: values[0] for key, values in context.stats.items()}
    if "kept_indices" in stats:
        index = torch.tensor(stats["kept_indices"], device=tokens.device)
        if not torch.equal(tokens.index_select(0, index), kept):
            raise ValueError(f"{type(method).__name__}: kept_indices do not name the tokens it returned")
    return kept, stats


def per_view(method) -> bool:
    """Whether ``method`` selects on each CLIP view of an image (``view_cls_attention``: FasterVLM, VisPruner)."""
    return method.kind == "encoder" and "view_cls_attention" in method.needs


def view_budget(method, image: NextImage, patches: int) -> int:
    """Tokens each view of ``image`` keeps under a per-view method: ``budget`` split evenly over the views (so at most
    ``budget`` reach the LLM), or with ``budget_ratio`` that share of a view's patches; at most a view's patches."""
    views = image.pixels.shape[0]
    share = method.budget // views if method.budget_ratio is None else int(method.budget_ratio * patches)
    return min(patches, max(1, share))


def spatial_merge_order(image: NextImage, kept: list[list[int]], side: int) -> list[tuple[int, int]]:
    """(view, patch) of the kept tokens in the order FasterVLM's and VisPruner's LLaVA-NeXT code lays them out
    (``mm_patch_merge_type`` ``spatial``, no unpadding, no newline tokens): the base view's kept patches in raster
    order, then the tiles' kept patches in the raster order of the whole tiled grid (rows of tiles x ``side`` rows,
    columns of tiles x ``side`` columns)."""
    _, tiles_w = image.tiles
    order = [(0, p) for p in sorted(kept[0])]
    tile_tokens = []
    for view in range(1, len(kept)):
        tile_row, tile_col = divmod(view - 1, tiles_w)
        for p in kept[view]:
            row, col = divmod(p, side)
            tile_tokens.append(((tile_row * side + row) * tiles_w * side + tile_col * side + col, view, p))
    return order + [(view, p) for _, view, p in sorted(tile_tokens)]


def select_per_view(lm: LoadedModel, method, image: NextImage, seed: int,
                    instruction: str | None) -> tuple[torch.Tensor, dict]:
    """A per-view method (``view_cls_attention``: FasterVLM, VisPruner) on one image, as its authors' LLaVA-NeXT code
    runs it: the method's own selection on each view (the base view and every tile, one batch, :func:`view_budget`
    tokens each), the kept features projected, and the views merged by :func:`spatial_merge_order`. The image's token
    count is then views x per-view budget, not its packed count. Stats: ``kept_indices``, the kept patches of each
    view (raster indices)."""
    vision = lm.vision_tower.config
    side = vision.image_size // vision.patch_size  # a view's patches per side
    view_method = method.with_budget(view_budget(method, image, side * side))
    pixels = image.pixels.to(lm.device, lm.dtype)  # (V, 3, S, S)
    context = PruneContext(questions=None, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    features = view_method.encode(lm.vision_tower, pixels, lm.feature_layer, context)  # (V, P, Dv), scores stashed
    kept = view_method.reduce(features, context)  # (V, T, Dv), each view's kept patches in raster order
    indices = context.stats["kept_indices"]  # V lists, ascending
    projected = lm.projector(kept).flatten(0, 1)  # (V * T, d)
    slot = {(v, p): v * kept.shape[1] + i for v, view in enumerate(indices) for i, p in enumerate(view)}
    order = torch.tensor([slot[key] for key in spatial_merge_order(image, indices, side)], device=projected.device)
    return projected.index_select(0, order), {"kept_indices": indices}


@dataclass
class _Row:
    ids: list[int]
    embeds: torch.Tensor  # (k, d)
    stats: dict


def cut_images(lm: LoadedModel, method, images: list[NextImage], *, seed: int, instruction: str | None) -> list:
    if per_view(method):  # its own pass over each image's views: the packed tokens are not needed
        return [select_per_view(lm, method, image, seed, instruction) for image in images]
    tokens = vision_tokens(lm, images)
    return [select(lm, method, t, image, seed, instruction) for t, image in zip(tokens, images)]


def make_row(lm: LoadedModel, method, before: list[int], after: list[int], image: NextImage, cut) -> _Row:
    embeds, stats = cut
    per_image = {"image_tokens_unpruned": image.num_tokens}
    if method.budget_ratio is not None:
        per_image["image_budget"] = len(embeds) if per_view(method) else image_budget(method, image.num_tokens)
    return _Row(before + [lm.image_token_id] * len(embeds) + after, embeds, {**per_image, **stats})


def _state(lm: LoadedModel, rows: list[_Row]) -> TokenState:
    """Left-padded rows, each its own number of image tokens, at 1-D positions 0, 1, ... of its real tokens."""
    ids, padding = left_pad(lm, [row.ids for row in rows])
    is_image = ids == lm.image_token_id
    embeds = lm.language_model.embed_tokens(ids)  # (B, L, d)
    image_embeds = torch.cat([row.embeds for row in rows]).to(embeds.dtype)  # row-major, as masked_scatter fills
    embeds = embeds.masked_scatter(is_image[..., None], image_embeds)
    return TokenState(hidden=embeds, position_ids=padded_positions(padding), padding=padding, is_image=is_image)


# ---------------------------------------------------------------- generation

@torch.inference_mode()
def generate(lm: LoadedModel, method, questions: list[str], images: list[Image.Image], *, instruction: str | None,
             max_new_tokens: int = 128, seed: int = 0):
    """:func:`svdprune.families.generate` on LLaVA-NeXT (the caller has checked the method)."""
    prepared = {i: preprocess(lm, image) for i, image in enumerate(images)}
    return generate_by_image(lm, method, questions, list(prepared), prepared, instruction=instruction,
                             max_new_tokens=max_new_tokens, seed=seed)


@torch.inference_mode()
def generate_by_image(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                      instruction: str | None, max_new_tokens: int = 128, seed: int = 0, prefixes: dict | None = None):
    """Greedy answers for a batch of questions (``families.generate_by_image``'s contract; ``images``: key ->
    :class:`NextImage`): the vision tower and the cut once per distinct image. Vanilla and encoder-side methods also
    prefill the prompt up to and including the image tokens once per image (a ``SharedPrefix``, carried to the next
    batch in ``prefixes``) and only the question suffixes per question; decoder-side cuts depend on the question, so
    their prompts are prefilled whole, in groups of one image token count."""
    if shares_prefix(method):
        return _generate_shared_prefix(lm, method, questions, image_keys, images, instruction=instruction,
                                       max_new_tokens=max_new_tokens, seed=seed, prefixes=prefixes)
    return _generate_whole(lm, method, questions, image_keys, images, instruction=instruction,
                           max_new_tokens=max_new_tokens, seed=seed)


def _generate_whole(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                    instruction: str | None, max_new_tokens: int, seed: int):
    """Every question's whole prompt prefilled (a decoder-side cut in groups of one image token count)."""
    distinct = list(dict.fromkeys(image_keys))
    cuts = dict(zip(distinct, cut_images(lm, method, [images[key] for key in distinct], seed=seed,
                                         instruction=instruction)))
    rows = [make_row(lm, method, *_parts(lm, question, instruction), images[key], cuts[key])
            for question, key in zip(questions, image_keys)]
    out = generate_parts(lm, method, questions, rows, _state, instruction=instruction, seed=seed,
                         max_new_tokens=max_new_tokens)
    return _collect(lm, questions, instruction, out)


def _collect(lm: LoadedModel, questions: list[str], instruction: str | None, out: list):
    prompts = [prompt(q, instruction) for q in questions]
    return finish(lm, [o[0] for o in out], prompts, [o[1] for o in out], [o[2] for o in out],
                  stat_columns([o[3] for o in out]))


def encode_prefixes(lm: LoadedModel, method, images: list[NextImage], *, instruction: str | None,
                    seed: int) -> list[SharedPrefix]:
    """Vision tower, cut and the prefix prefill of n distinct images: BOS, system prompt, "USER: " and the image's
    kept tokens; the question's text continues right after them."""
    before, _ = _parts(lm, "", instruction)
    cuts = cut_images(lm, method, images, seed=seed, instruction=instruction)
    return prefill_prefixes(lm, [make_row(lm, method, before, [], image, cut) for image, cut in zip(images, cuts)],
                            _state)


def _generate_shared_prefix(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                            instruction: str | None, max_new_tokens: int, seed: int, prefixes: dict | None):
    """Vanilla and encoder-side methods: each image's prefix once (or from ``prefixes``), each question's suffix
    after it at 1-D positions (:func:`svdprune.families._per_image.generate_shared_prefix`)."""
    out = generate_shared_prefix(
        lm, questions, image_keys, {} if prefixes is None else prefixes,
        lambda keys: encode_prefixes(lm, method, [images[key] for key in keys], instruction=instruction, seed=seed),
        lambda question: _parts(lm, question, instruction), max_new_tokens=max_new_tokens)
    return _collect(lm, questions, instruction, out)


# ---------------------------------------------------------------- a user's own inputs (svdprune.prune, lmms-eval)

def prefill_inputs(lm: LoadedModel, method, rows: list[tuple[list[int], list[int]]], inputs: dict, *, seed: int,
                   questions: list[str] | None):
    """The pruned prefill's inputs from a user's call (:class:`svdprune.api.PruneHandle`): ``pixel_values`` (B, V, 3,
    S, S) cut to each image's views by ``image_sizes`` (laid out as llava-hf's processor tiles them, :func:`hf_tiles`),
    the vision tower and each image's cut, each row's image run replaced by its kept tokens, left-padded. Returns
    (parts, the token rows, per-row stats), as the other families."""
    pixel_values, image_sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
    input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
    if pixel_values is None or image_sizes is None or image_sizes.shape[0] != len(rows):
        got = "none" if pixel_values is None or image_sizes is None else image_sizes.shape[0]
        raise UserError(f"svdprune: {len(rows)} prompts with an image need {len(rows)} images (pixel_values and "
                        f"image_sizes, one image per prompt); got {got}")
    config = lm.model.config
    given = inputs.get("image_tiles")
    images, start = [], 0
    for b, size in enumerate(image_sizes.cpu()):
        # the user's pixels are llava-hf's unless image_tiles says how they were tiled (model_inputs: official)
        tiles = tuple(int(v) for v in given[b]) if given is not None else hf_tiles(config, size)
        count = 1 + tiles[0] * tiles[1]
        views = pixel_values[b, :count] if pixel_values.dim() == 5 else pixel_values[start:start + count]
        start += count
        images.append(NextImage(views.to(torch.float32), size, tiles, token_layout(config, size, tiles)))
    check_image_tokens(lm, input_ids, attention_mask, images,
                       lambda b: f"image_sizes {images[b].image_size.tolist()} make")
    cuts = cut_images(lm, method, images, seed=seed, instruction=None)
    return prefill_cut_rows(lm, method, rows, images, cuts, make_row, _state, seed=seed, questions=questions)


def question_text(lm: LoadedModel, suffix_ids: list[int]) -> str:
    """The question of a prompt from the ids after its image (vicuna_v1: the user turn up to " ASSISTANT:")."""
    return vicuna_question(lm.tokenizer, suffix_ids)


def model_output(logits, loss, cache):
    from transformers.models.llava_next.modeling_llava_next import LlavaNextCausalLMOutputWithPast

    return LlavaNextCausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


def full_prompt_ids(lm: LoadedModel, prompt_text: str, image: Image.Image) -> list[int]:
    """A prompt's ids with ``<image>`` expanded to the image's own token count, as llava-hf's processor expands it."""
    return tokenizer_image_token(prompt_text, lm.tokenizer, lm.image_token_id, preprocess(lm, image).num_tokens)


def model_inputs(lm: LoadedModel, prompts: list[str], images: list[Image.Image]) -> dict:
    """The forward's keyword arguments for prompts and their images (one each), left-padded, as run.py feeds the model:
    llava-hf's layout (``pixel_values`` (B, V_max, 3, S, S) zero-padded over views, ``image_sizes``) with official
    LLaVA-NeXT's tiling, which ``image_tiles`` (B, 2) states (it differs from llava-hf's for an image of at most one
    tile on each side: :func:`official_tiles`)."""
    prepared = [preprocess(lm, image) for image in images]
    ids, padding = left_pad(lm, [tokenizer_image_token(p, lm.tokenizer, lm.image_token_id, image.num_tokens)
                                 for p, image in zip(prompts, prepared)])
    views = max(image.pixels.shape[0] for image in prepared)
    pixels = torch.zeros(len(prepared), views, *prepared[0].pixels.shape[1:])
    for b, image in enumerate(prepared):
        pixels[b, :image.pixels.shape[0]] = image.pixels
    return {"input_ids": ids, "attention_mask": (~padding).long(), "pixel_values": pixels,
            "image_sizes": torch.stack([image.image_size for image in prepared]),
            "image_tiles": torch.tensor([list(image.tiles) for image in prepared])}


def answer_text(lm: LoadedModel, prompt_text: str, continuation: str) -> str:
    """The prompt followed by an assistant turn holding ``continuation`` (lmms-eval's loglikelihood)."""
    return vicuna_answer(lm.tokenizer, prompt_text, continuation)


# ---------------------------------------------------------------- loading

def _describe(model, tokenizer, processor, name: str, revision, device, dtype) -> LoadedModel:
    config = model.config
    if config.vision_feature_select_strategy != "default":
        raise UserError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}; allowed: "
                        "'default' (CLS dropped, as llava-v1.6)")
    if not isinstance(config.vision_feature_layer, int):
        raise UserError(f"vision_feature_layer={config.vision_feature_layer!r}; allowed: one int (llava-v1.6: -2)")
    vision = config.vision_config
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, revision=revision, image_size=vision.image_size,
        image_mean=tuple(CLIP_MEAN), image_std=tuple(CLIP_STD), image_token_id=config.image_token_id,
        feature_layer=config.vision_feature_layer, num_patches=most_tokens(config), device=device, dtype=dtype,
        family=NAME, vision_tower=model.model.vision_tower, projector=model.model.multi_modal_projector,
        image_processor=processor if processor is not None else image_processor(config))


def from_model(model, tokenizer=None) -> LoadedModel:
    """The engine's view of a ``LlavaNextForConditionalGeneration`` someone else loaded (:func:`svdprune.prune`):
    nothing moved or cast; the user's processor makes the pixels."""
    embed = model.model.language_model.embed_tokens.weight
    tower_dtype = next(p.dtype for p in model.model.vision_tower.parameters() if p.is_floating_point())
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return _describe(model, tokenizer, None, name, None, embed.device, tower_dtype)


def load_pretrained(path: str, revision: str | None, dtype: str, device: str, progress: bool = True) -> LoadedModel:
    """LLaVA-NeXT in llava-hf format from a hub id (e.g. llava-hf/llava-v1.6-vicuna-7b-hf) or a local folder."""
    from transformers import AutoConfig, AutoTokenizer, LlavaNextForConditionalGeneration

    path = in_project(path)
    check_local_folder(path, "a llava-hf LLaVA-NeXT folder")
    torch_dtype, torch_device = dtype_of(dtype, device), resolve_device(device)
    with hub_loading(path, revision, progress):
        model_type = AutoConfig.from_pretrained(path, revision=revision).model_type
        if model_type != MODEL_TYPE:  # before any weight is read
            raise UserError(f"model.path={path!r} holds a {model_type!r} model; family {NAME} needs {MODEL_TYPE!r}")
        on_gpu = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}
        model = LlavaNextForConditionalGeneration.from_pretrained(
            path, revision=revision, dtype=torch_dtype, attn_implementation="sdpa", **on_gpu)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        processor = image_processor(model.config, path, revision)
    model.to(device=torch_device).eval()
    return _describe(model, tokenizer, processor, path, revision, torch_device, torch_dtype)


def tiny_config(tokenizer, *, image_size: int = 112, vision_layers: int = 4, text_layers: int = 32,
                initializer_range: float = 0.2):
    """LLaVA-NeXT's structure at a tiny size: a CLIP tower of 112 px views (8 x 8 patches of 14 px), pinpoints of
    1 x 2, 2 x 1 and 2 x 2 tiles (so an image has 64 + up to 16 x 17 = 336 tokens), the 7B's 32 LLM layers at width 64."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                              num_attention_heads=2, image_size=image_size, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, initializer_range=initializer_range)
    side = image_size
    config = LlavaNextConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                             vision_feature_select_strategy="default",
                             image_grid_pinpoints=[[side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
                             image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
                             initializer_range=initializer_range)
    config._attn_implementation = "sdpa"
    return config


def build_tiny(seed: int = 0, vision_layers: int = 4, text_layers: int = 32, initializer_range: float = 0.2,
               device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """A random-weight ``LlavaNextForConditionalGeneration`` (:func:`tiny_config`), built in milliseconds offline."""
    from transformers import LlavaNextForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, vision_layers=vision_layers, text_layers=text_layers,
                         initializer_range=initializer_range)
    model = cast_like_from_pretrained(LlavaNextForConditionalGeneration(config), dtype_of(dtype, device))
    torch_device = resolve_device(device)
    model.to(device=torch_device).eval()
    return _describe(model, tokenizer, None, "llava-next-tiny", None, torch_device, dtype_of(dtype, device))


def load(model_cfg, progress: bool = True) -> LoadedModel:
    """``model.kind``: ``pretrained`` (:func:`load_pretrained`) or ``tiny`` (:func:`build_tiny`)."""
    if model_cfg.kind == "pretrained":
        return load_pretrained(model_cfg.path, model_cfg.get("revision"), model_cfg.dtype, model_cfg.device, progress)
    return build_tiny(seed=model_cfg.seed, device=model_cfg.device, dtype=model_cfg.dtype,
                      **{k: model_cfg[k] for k in ("vision_layers", "text_layers", "initializer_range") if k in model_cfg})


def max_image_tokens(model_cfg) -> int | None:
    """The most image tokens an image can have, without loading the model (the tiny config; a local folder's or the
    HF cache's config.json); None when unknown."""
    from transformers import LlavaNextConfig

    if model_cfg.get("kind") != "pretrained":
        return most_tokens(tiny_config(build_tiny_tokenizer()))
    raw = read_config_json(model_cfg)
    if raw is None:
        return None
    try:
        return most_tokens(LlavaNextConfig.from_dict(raw))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
