"""Qwen2.5-VL, the second model family: its inputs, its vision side and its positions, in front of the shared engine.

What differs from LLaVA-1.5, and how this file meets the engine (:mod:`svdprune.surgery`):

* **Images of their own size.** The image processor resizes each image to multiples of 28 px within
  ``min_pixels``..``max_pixels`` (``smart_resize``), cuts 14 px patches and the vision tower merges 2 x 2 of them into
  one LLM token: an h x w grid of N = h * w tokens, N different per image. The vision tower is a window-attention ViT
  *without* a [CLS] token; its merger (patch merger MLP) is the projector, so the tokens a method sees are the
  merged grid's LLM-input embeddings (N, d), in raster order.
* **3-D positions (M-RoPE).** Text tokens have one position t on all three axes; image cell (i, j) of an image that
  starts at position s has (s, s + i, s + j), and the text after the image continues at s + max(h, w)
  (``Qwen2_5_VLModel.get_rope_index``). A kept image token keeps its cell's position and the text keeps its positions
  whatever was cut (as DART's and FlowCut's Qwen code keep ``position_ids``); decoding continues at the last
  prompt position + 1 (HF's ``rope_deltas``). :func:`mrope_positions` is the rule, tested against HF's.
* **Chat prompt.** The model card's chat template for one image and a question:
  ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>`` N x
  ``<|image_pad|>`` ``<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n`` (:func:`chat_prompt`; a loaded
  tokenizer's own template is checked against it at load time).

The engine's LLM part (the decoder loop with decoder-side cuts, KV cache, greedy decoding) is the same code for both
families (``surgery.prefill`` / ``surgery.greedy``); only the front (pixels, vision tower, prompt rows, positions) is
this file's. Budgets are token counts by default, as the paper's (their 576-token meaning carries over as "k tokens
reach the LLM"), or with ``budget_ratio`` a share of each image's own tokens (:func:`image_budget`); an image with at
most its budget of tokens keeps them all.

Batches: the vision tower runs once per distinct image; vanilla and encoder-side methods also prefill each image's
prompt prefix once (:class:`~svdprune.families._per_image.SharedPrefix`) and each question only its suffix, as LLaVA-1.5's by-image path does;
decoder-side methods prefill whole prompts, in groups of equal image size (:func:`._per_image.parts_by_image_tokens`).

Methods: those whose algorithm needs only the LLM-input tokens or the LLM's attention run; a method that needs what
this family lacks (:data:`LACKS`: a [CLS] token, CLIP's layers or text tower, one token count for every image) is
refused with the reason (:func:`svdprune.families.check_method`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError
from ..models import (LoadedModel, dtype_of, cast_like_from_pretrained, check_local_folder, hub_loading, in_project,
                     resolve_device)
from ..prompts import CLIP_MEAN, CLIP_STD
from ..pruning import PruneContext, TokenState
from ..surgery import finish, left_pad, shares_prefix
from ._per_image import (SharedPrefix, check_image_tokens, generate_parts, generate_shared_prefix, image_budget,
                         prefill_cut_rows, prefill_prefixes, stat_columns)

NAME = "qwen25vl"  # model.family
MODEL_TYPE = "qwen2_5_vl"  # its config.json's model_type
MODEL_CLASS = "Qwen2_5_VLForConditionalGeneration"  # what svdprune.prune() accepts for this family
SYSTEM = "You are a helpful assistant."
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOKEN_PIXELS = 28 * 28  # pixels per LLM token: 14 px patches, 2 x 2 merged
# the model card's preprocessor_config.json (Qwen/Qwen2.5-VL-7B-Instruct)
DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS = 3136, 12845056

LABEL = "Qwen2.5-VL"
#: what this family provides to the methods (their ``needs``, svdprune/pruning.py), and why it lacks the rest: a
#: method that needs one of these is refused with the reason (svdprune.families.check_method)
CAPABILITIES = frozenset()
LACKS = {
    "cls_attention": "it reads the vision tower's [CLS] attention, and Qwen2.5-VL's window-attention ViT has no [CLS] "
                     "token",
    "view_cls_attention": "it reads each CLIP view's [CLS] attention, and Qwen2.5-VL's window-attention ViT has no "
                          "[CLS] token",
    "vision_layers": "it works inside CLIP's encoder layers, and Qwen2.5-VL's vision tower is not CLIP",
    "clip_text": "it scores patches against the question with CLIP's text tower, which Qwen2.5-VL does not have",
    "fixed_grid": "its schedule is fitted to one token count for every image (LLaVA-1.5's 576), and Qwen2.5-VL's images "
                  "each have their own",
}


# ---------------------------------------------------------------- inputs

@dataclass
class QwenImage:
    """One preprocessed image: ``patches`` (n, 3 * 2 * 14 * 14) float32 normalised patches as the image processor
    emits them (n = t * gh * gw, grouped by 2 x 2 merge block), ``grid`` (3,) long: t, gh, gw of the 14 px patch grid."""

    patches: torch.Tensor
    grid: torch.Tensor

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) of the merged grid: the image's LLM tokens are h * w cells in raster order."""
        return int(self.grid[1]) // 2, int(self.grid[2]) // 2

    @property
    def num_tokens(self) -> int:
        h, w = self.token_grid
        return int(self.grid[0]) * h * w


def image_processor(min_pixels: int, max_pixels: int, path: str | None = None, revision: str | None = None):
    """The model card's image processor (the PIL implementation, numerically the one Qwen's own ``qwen_vl_utils``
    evaluation used; the torchvision one resizes differently), with ``min_pixels``/``max_pixels`` as set."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if not 0 < min_pixels <= max_pixels:
        raise UserError(f"model.min_pixels={min_pixels}, model.max_pixels={max_pixels}; allowed: 0 < min <= max")
    size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    if path is None:
        return Qwen2VLImageProcessorPil(size=size)
    return Qwen2VLImageProcessorPil.from_pretrained(path, revision=revision, size=size)


def preprocess(lm: LoadedModel, image: Image.Image) -> QwenImage:
    out = lm.image_processor(images=[image.convert("RGB")], return_tensors="pt")
    return QwenImage(patches=out["pixel_values"].to(torch.float32), grid=out["image_grid_thw"][0])


def chat_prompt(question: str, instruction: str | None = None) -> str:
    """The chat template's text for one image (its single ``<|image_pad|>`` expanded later) and the question, the
    answer instruction on its own line after it (lmms-eval's GQA/TextVQA post-prompt)."""
    text = f"{question}\n{instruction}" if instruction else question
    return (f"{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n{VISION_START}{IMAGE_PAD}{VISION_END}{text}{IM_END}\n"
            f"{IM_START}assistant\n")


def prompt_ids(lm: LoadedModel, question: str, instruction: str | None, k: int) -> list[int]:
    """Token ids of :func:`chat_prompt` with its image pad repeated k times."""
    return text_ids(lm, chat_prompt(question, instruction), k)


def question_parts(lm: LoadedModel, question: str, instruction: str | None) -> tuple[list[int], list[int]]:
    """(ids before the image, ids after it) of one question's :func:`chat_prompt`; the part before is the same for
    every question (system turn, user turn up to ``<|vision_start|>``)."""
    ids = prompt_ids(lm, question, instruction, 1)
    at = ids.index(lm.image_token_id)
    return ids[:at], ids[at + 1:]


def text_ids(lm: LoadedModel, text: str, k: int) -> list[int]:
    """Token ids of a prompt text holding one ``<|image_pad|>``, the pad repeated k times (what the processor's text
    expansion gives: ``<|image_pad|>`` is a special token, so the text around it tokenises the same either way)."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if ids.count(lm.image_token_id) != 1:
        raise ValueError(f"the prompt must hold one {IMAGE_PAD}, found {ids.count(lm.image_token_id)}")
    at = ids.index(lm.image_token_id)
    return ids[:at] + [lm.image_token_id] * k + ids[at + 1:]


def raster_cells(index: torch.Tensor, width: int) -> torch.Tensor:
    """(k,) raster indices into a grid ``width`` cells wide -> (k, 2) (row, column)."""
    return torch.stack([index // width, index % width], dim=1)


def mrope_positions(before: int, token_grid: tuple[int, int], cells: torch.Tensor, after: int) -> torch.Tensor:
    """3-D positions (3, before + k + after) of one prompt: ``before`` text tokens, image tokens at the grid cells
    ``cells`` (k, 2) (row, column of the h x w merged grid, in the order they are placed) and ``after`` text tokens.
    Every token keeps the position it has in the unpruned prompt (``get_rope_index``): text t on all axes, cell (i, j)
    at (before, before + i, before + j), the text after the image from before + max(h, w) on."""
    h, w = token_grid
    head = torch.arange(before).expand(3, -1)
    image = torch.stack([torch.full_like(cells[:, 0], before), before + cells[:, 0], before + cells[:, 1]])
    tail = before + max(h, w) + torch.arange(after).expand(3, -1)
    return torch.cat([head, image, tail], dim=1)


# ---------------------------------------------------------------- vision side

def vision_tokens(lm: LoadedModel, images: list[QwenImage]) -> list[torch.Tensor]:
    """LLM-input image embeddings per image, (N_i, d) in raster order of the merged grid: the vision tower and its
    merger over the images' patches together (``get_image_features``: attention stays within each image)."""
    patches = torch.cat([image.patches for image in images]).to(lm.device, lm.dtype)
    grid = torch.stack([image.grid for image in images]).to(lm.device)
    merged = lm.vision_tower(patches, grid_thw=grid).pooler_output  # (sum N_i, d)
    return list(torch.split(merged, [image.num_tokens for image in images]))


def select(lm: LoadedModel, method, tokens: torch.Tensor, image: QwenImage, seed: int,
           instruction: str | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One image's encoder-side cut: (kept embeddings (k, d), the grid cell (row, column) each takes its 3-D position
    from (k, 2), the method's stats for the image). A selection keeps its tokens' own cells (``kept_indices``, checked
    to name the tokens returned); pooling puts each pooled token at the first cell of its bin (``pool_cells``). Vanilla,
    decoder-side methods and an image with at most its budget of tokens keep every token."""
    n = tokens.shape[0]
    h, w = image.token_grid
    if method.kind != "encoder" or n <= image_budget(method, n):
        return tokens, raster_cells(torch.arange(n), w), {}
    if method.budget_ratio is not None:
        method = method.with_budget(image_budget(method, n))
    context = PruneContext(questions=None, seed=seed, model=lm.model, lm=lm, instruction=instruction)
    context.pixels_float32 = image.patches[None]  # what per-image randomness derives from (random-k)
    context.features_are_llm_inputs = True  # the merger ran: DivPrune measures distances on these as they are
    context.token_grid = (h, w)  # the image's own grid shape (pooling)
    kept = method.reduce(tokens[None], context)[0]  # (k, d)
    stats = {key: values[0] for key, values in context.stats.items()}
    if "pool_cells" in stats:  # merged tokens: the cell each one's position comes from, as the method says
        return kept, torch.tensor(stats["pool_cells"]), stats
    if "kept_indices" not in stats:
        raise ValueError(f"{type(method).__name__} records no kept_indices: their positions are unknown")
    index = torch.tensor(stats["kept_indices"], device=tokens.device)
    if not torch.equal(tokens.index_select(0, index), kept):  # the positions given are those of the tokens kept
        raise ValueError(f"{type(method).__name__}: kept_indices do not name the tokens it returned")
    return kept, raster_cells(index.cpu(), w), stats


# ---------------------------------------------------------------- generation

@dataclass
class _Row:
    ids: list[int]
    positions: torch.Tensor  # (3, L)
    embeds: torch.Tensor  # (k, d)
    stats: dict


def cut_images(lm: LoadedModel, method, images: list[QwenImage], *, seed: int, instruction: str | None) -> list:
    """The vision tower over the images together, then each image's encoder-side cut: per image :func:`select`'s
    (kept embeddings, cells, stats)."""
    tokens = vision_tokens(lm, images)
    return [select(lm, method, t, image, seed, instruction) for t, image in zip(tokens, images)]


def make_row(lm: LoadedModel, method, before: list[int], after: list[int], image: QwenImage, cut) -> _Row:
    """One prompt row: the ids ``before`` the image, its kept tokens (``cut``, from :func:`cut_images`) and the ids
    ``after`` it, each at the position it has in the unpruned prompt."""
    embeds, cells, stats = cut
    ids = before + [lm.image_token_id] * len(cells) + after
    positions = mrope_positions(len(before), image.token_grid, cells, len(after))
    per_image = {"image_tokens_unpruned": image.num_tokens}
    if method.budget_ratio is not None:
        per_image["image_budget"] = image_budget(method, image.num_tokens)
    return _Row(ids, positions, embeds, {**per_image, **stats})


def _rows(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
          instruction: str | None, seed: int) -> list[_Row]:
    distinct = list(dict.fromkeys(image_keys))
    cuts = dict(zip(distinct, cut_images(lm, method, [images[key] for key in distinct], seed=seed,
                                         instruction=instruction)))
    return [make_row(lm, method, *question_parts(lm, question, instruction), images[key], cuts[key])
            for question, key in zip(questions, image_keys)]


def _state(lm: LoadedModel, rows: list[_Row]):
    """Left-padded :class:`~svdprune.pruning.TokenState` of the rows: (3, B, L) positions (padded slots 0, never
    attended), the rows' image embeddings in their image slots (each row its own count)."""
    ids, padding = left_pad(lm, [row.ids for row in rows])
    length = ids.shape[1]
    positions = torch.zeros(3, len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        positions[:, i, length - row.positions.shape[1]:] = row.positions
    is_image = ids == lm.image_token_id
    embeds = lm.language_model.embed_tokens(ids)
    image_embeds = torch.cat([row.embeds for row in rows]).to(embeds.dtype)  # row-major, as masked_scatter fills
    embeds = embeds.masked_scatter(is_image[..., None], image_embeds)
    return TokenState(hidden=embeds, position_ids=positions.to(lm.device), padding=padding, is_image=is_image)


@torch.inference_mode()
def generate(lm: LoadedModel, method, questions: list[str], images: list[Image.Image], *, instruction: str | None,
             max_new_tokens: int = 128, seed: int = 0):
    """:func:`svdprune.families.generate` on Qwen2.5-VL (the caller has checked the method): every row its own image
    and its whole prompt prefilled; the reference :func:`generate_by_image` is tested against."""
    keys = list(range(len(images)))
    return _generate_whole(lm, method, questions, keys, {i: preprocess(lm, image) for i, image in enumerate(images)},
                           instruction=instruction, max_new_tokens=max_new_tokens, seed=seed)


@torch.inference_mode()
def generate_by_image(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                      instruction: str | None, max_new_tokens: int = 128, seed: int = 0, prefixes: dict | None = None):
    """Greedy answers for a batch of questions on Qwen2.5-VL (``families.generate_by_image``'s contract, whose caller
    has checked the method; ``images``: key -> :class:`QwenImage`). The vision tower and the encoder-side cut run once per distinct image. Vanilla and
    encoder-side methods also prefill the prompt up to and including the image tokens once per image
    (a :class:`~svdprune.families._per_image.SharedPrefix`, carried to the next batch in ``prefixes``) and only the question suffixes per question;
    decoder-side cuts depend on the question, so their prompts are prefilled whole, in groups of equal image size
    (:func:`._per_image.parts_by_image_tokens`)."""
    if shares_prefix(method):
        return _generate_shared_prefix(lm, method, questions, image_keys, images, instruction=instruction,
                                       max_new_tokens=max_new_tokens, seed=seed, prefixes=prefixes)
    return _generate_whole(lm, method, questions, image_keys, images, instruction=instruction,
                           max_new_tokens=max_new_tokens, seed=seed)


def _collect(lm: LoadedModel, questions: list[str], instruction: str | None, out: list):
    """The batch's :class:`~svdprune.surgery.Generation` from per-row (generated ids, per-layer image counts, prompt
    length, stats)."""
    prompts = [chat_prompt(q, instruction) for q in questions]
    return finish(lm, [o[0] for o in out], prompts, [o[1] for o in out], [o[2] for o in out],
                   stat_columns([o[3] for o in out]))


def _generate_whole(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                    instruction: str | None, max_new_tokens: int, seed: int):
    """Every question's whole prompt prefilled (with the method's decoder-side cuts), the vision side once per
    distinct image."""
    rows = _rows(lm, method, questions, image_keys, images, instruction=instruction, seed=seed)
    out = generate_parts(lm, method, questions, rows, _state, instruction=instruction, seed=seed,
                         max_new_tokens=max_new_tokens)
    return _collect(lm, questions, instruction, out)


def encode_prefixes(lm: LoadedModel, method, images: list[QwenImage], *, instruction: str | None,
                    seed: int) -> list[SharedPrefix]:
    """Vision tower, cut and the prefix prefill of n distinct images: the ids before the image (system turn, user
    turn up to ``<|vision_start|>``) and its kept tokens; the text after continues at the image's start + max(h, w)."""
    before, _ = question_parts(lm, "", instruction)
    cuts = cut_images(lm, method, images, seed=seed, instruction=instruction)
    rows = [make_row(lm, method, before, [], image, cut) for image, cut in zip(images, cuts)]
    return prefill_prefixes(lm, rows, _state, [len(before) + max(image.token_grid) for image in images])


def _generate_shared_prefix(lm: LoadedModel, method, questions: list[str], image_keys: list, images: dict, *,
                            instruction: str | None, max_new_tokens: int, seed: int, prefixes: dict | None):
    """Vanilla and encoder-side methods: each image's prefix once (or from ``prefixes``), each question's suffix
    after it at M-RoPE positions (:func:`svdprune.families._per_image.generate_shared_prefix`)."""
    out = generate_shared_prefix(
        lm, questions, image_keys, {} if prefixes is None else prefixes,
        lambda keys: encode_prefixes(lm, method, [images[key] for key in keys], instruction=instruction, seed=seed),
        lambda question: question_parts(lm, question, instruction), max_new_tokens=max_new_tokens, axes=3)
    return _collect(lm, questions, instruction, out)


# ---------------------------------------------------------------- loading

def _describe(model, tokenizer, processor, name: str, revision, device, dtype, max_pixels: int) -> LoadedModel:
    config = model.config
    stops = config.text_config.eos_token_id if hasattr(config, "text_config") else None
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.eos_token_id is not None:
        stops = generation.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in stops:
        stops.append(eos)
    mean, std = (processor.image_mean, processor.image_std) if processor is not None else (CLIP_MEAN, CLIP_STD)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, revision=revision, image_size=0,
        image_mean=tuple(mean), image_std=tuple(std),
        image_token_id=config.image_token_id, feature_layer=-1, num_patches=int(max_pixels) // TOKEN_PIXELS,
        device=device, dtype=dtype, family=NAME, vision_tower=model.model.visual, image_processor=processor,
        stop_token_ids=tuple(stops))


def from_model(model, tokenizer=None) -> LoadedModel:
    """The engine's view of a ``Qwen2_5_VLForConditionalGeneration`` someone else loaded (:func:`svdprune.prune`):
    nothing moved or cast; the user's processor makes the pixels, so budgets are checked against the model card's
    max_pixels (the most tokens an image can have)."""
    embed = model.model.language_model.embed_tokens.weight
    tower_dtype = next(p.dtype for p in model.model.visual.parameters() if p.is_floating_point())
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return _describe(model, tokenizer, None, name, None, embed.device, tower_dtype, DEFAULT_MAX_PIXELS)


def check_chat_template(tokenizer) -> None:
    """A tokenizer with a chat template must render one image and a question as :func:`chat_prompt` does (the
    engine builds the prompt itself, so that the image pad can be expanded to the kept count)."""
    if not getattr(tokenizer, "chat_template", None):
        return
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    try:
        theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render this message is checked no further
        return
    if theirs != chat_prompt("What is it?"):
        raise UserError(f"this Qwen2.5-VL tokenizer's chat template renders {theirs!r}, not the model card's "
                        f"{chat_prompt('What is it?')!r}; svdprune builds the model card's prompt")


def load_pretrained(path: str, revision: str | None, dtype: str, device: str, *, min_pixels: int, max_pixels: int,
                    progress: bool = True) -> LoadedModel:
    """Qwen2.5-VL from a hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct) or a local folder in that format."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    path = in_project(path)
    check_local_folder(path, "a Qwen2.5-VL folder")
    torch_dtype, torch_device = dtype_of(dtype, device), resolve_device(device)
    with hub_loading(path, revision, progress):
        model_type = AutoConfig.from_pretrained(path, revision=revision).model_type
        if model_type != "qwen2_5_vl":  # before any weight is read
            raise UserError(f"model.path={path!r} holds a {model_type!r} model; family qwen25vl needs 'qwen2_5_vl'")
        on_gpu = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, revision=revision, dtype=torch_dtype, attn_implementation="sdpa", **on_gpu)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        processor = image_processor(min_pixels, max_pixels, path, revision)
    check_chat_template(tokenizer)
    model.to(device=torch_device).eval()
    return _describe(model, tokenizer, processor, path, revision, torch_device, torch_dtype, max_pixels)


# ---------------------------------------------------------------- tiny random model (tests, first runs)

_TINY_CORPUS = [
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "Answer the question using a single word or phrase. Reference OCR token:",
    "What color is the shape? Is there a circle, a square or a triangle in the image? yes no",
    "red green blue black white gray yellow brown left right top bottom how many what is the name",
]
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>",
                  IMAGE_PAD, "<|video_pad|>"]  # Qwen2's added tokens, in its order (ids 151643..151656 there)


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in memory (deterministic, offline) with Qwen2's special tokens, no BOS
    (as Qwen's), eos ``<|im_end|>`` and pad ``<|endoftext|>`` (as the Instruct model's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=END_OF_TEXT,
                                   additional_special_tokens=SPECIAL_TOKENS[1:])


def tiny_config(tokenizer, *, text_layers: int = 28, vision_layers: int = 4, initializer_range: float = 0.2):
    """Qwen2.5-VL's geometry at a tiny width: 28 LLM layers (the 7B's depth, so FastV's and DART's layer-2 cuts act
    where they do there) with grouped-query attention (4 heads, 2 KV heads) and M-RoPE sections [2, 3, 3] (the 7B's
    [16, 24, 24] scaled to head_dim 16); a window-attention ViT of ``vision_layers`` blocks, the last of each half
    with full attention (the 7B: 32 blocks, full at 7, 15, 23, 31), 112 px windows, 14 px patches, 2 x 2 merge."""
    from transformers import Qwen2_5_VLConfig

    full = sorted({vision_layers // 2 - 1, vision_layers - 1} - {-1})
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]),
                         initializer_range=initializer_range, bos_token_id=ids(END_OF_TEXT),
                         eos_token_id=ids(IM_END), pad_token_id=ids(END_OF_TEXT)),
        vision_config=dict(depth=vision_layers, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=full, initializer_range=initializer_range),
        image_token_id=ids(IMAGE_PAD), video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END), initializer_range=initializer_range)
    config._attn_implementation = "sdpa"
    return config


def build_tiny(seed: int = 0, text_layers: int = 28, vision_layers: int = 4, initializer_range: float = 0.2,
               min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = 448 * 448, device: str = "cpu",
               dtype: str = "float32") -> LoadedModel:
    """A random-weight ``Qwen2_5_VLForConditionalGeneration`` (:func:`tiny_config`), built in milliseconds offline.
    ``max_pixels`` defaults to 448 x 448 (256 tokens) so that tests stay small."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer, text_layers=text_layers,
                                                           vision_layers=vision_layers,
                                                           initializer_range=initializer_range))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model = cast_like_from_pretrained(model, dtype_of(dtype, device))
    torch_device = resolve_device(device)
    model.to(device=torch_device).eval()
    return _describe(model, tokenizer, image_processor(min_pixels, max_pixels), "qwen25vl-tiny", None, torch_device,
                     dtype_of(dtype, device), max_pixels)


def load(model_cfg, progress: bool = True) -> LoadedModel:
    """``model.kind``: ``pretrained`` (a hub id or local folder, :func:`load_pretrained`) or ``tiny``
    (:func:`build_tiny`); ``model.min_pixels`` / ``max_pixels`` set the image processor (the model card's by default)."""
    pixels = {"min_pixels": model_cfg.get("min_pixels") or DEFAULT_MIN_PIXELS,
              "max_pixels": model_cfg.get("max_pixels") or DEFAULT_MAX_PIXELS}
    if model_cfg.kind == "pretrained":
        return load_pretrained(model_cfg.path, model_cfg.get("revision"), model_cfg.dtype, model_cfg.device,
                               progress=progress, **pixels)
    return build_tiny(seed=model_cfg.seed, device=model_cfg.device, dtype=model_cfg.dtype, **pixels,
                      **{k: model_cfg[k] for k in ("vision_layers", "text_layers", "initializer_range") if k in model_cfg})


def max_image_tokens(model_cfg) -> int:
    """The most tokens an image can have, without loading the model: ``max_pixels`` / (28 x 28)."""
    return int(model_cfg.get("max_pixels") or DEFAULT_MAX_PIXELS) // TOKEN_PIXELS


# ---------------------------------------------------------------- a user's own inputs (svdprune.prune, lmms-eval)

def prefill_inputs(lm: LoadedModel, method, rows: list[tuple[list[int], list[int]]], inputs: dict, *, seed: int,
                   questions: list[str] | None):
    """The pruned prefill's inputs from a user's call (:class:`svdprune.api.PruneHandle`): ``pixel_values`` split per
    image by ``image_grid_thw``, vision tower + merger and the cut per image, each row's image run replaced by its kept
    tokens at their 3-D positions, left-padded. Returns (parts, the token rows, per-row stats); parts: one (row
    indices, TokenState, the method to run, its context) per prefill: all rows for vanilla and encoder-side methods,
    one group per image size for a decoder-side cut, fitted to that size (as run.py's)."""
    pixel_values, image_grid_thw = inputs.get("pixel_values"), inputs.get("image_grid_thw")
    input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
    if pixel_values is None or image_grid_thw is None or image_grid_thw.shape[0] != len(rows):
        got = "none" if pixel_values is None or image_grid_thw is None else image_grid_thw.shape[0]
        raise UserError(f"svdprune: {len(rows)} prompts with an image need {len(rows)} images (pixel_values and "
                        f"image_grid_thw, one image per prompt); got {got}")
    grid = image_grid_thw.cpu()
    patches = torch.split(pixel_values.to(torch.float32), [int(g.prod()) for g in grid])
    images = [QwenImage(p, g) for p, g in zip(patches, grid)]
    check_image_tokens(lm, input_ids, attention_mask, images, lambda b: f"image_grid_thw {grid[b].tolist()} makes")
    cuts = cut_images(lm, method, images, seed=seed, instruction=None)
    return prefill_cut_rows(lm, method, rows, images, cuts, make_row, _state, seed=seed, questions=questions)


def question_text(lm: LoadedModel, suffix_ids: list[int]) -> str:
    """The question of a prompt from the ids after its image: the user turn up to its ``<|im_end|>``."""
    text = lm.tokenizer.decode(suffix_ids, skip_special_tokens=False)
    text = text[len(VISION_END):] if text.startswith(VISION_END) else text
    return text[:text.find(IM_END)].strip() if IM_END in text else text.strip()


def model_output(logits, loss, cache):
    """The HF output class of this family's forward."""
    from transformers.modeling_outputs import MultimodalCausalLMOutputWithPast

    return MultimodalCausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


def prompt(question: str, instruction: str | None = None) -> str:
    """The prompt run.py feeds for one question (:func:`chat_prompt`; its image pad expanded later)."""
    return chat_prompt(question, instruction)


def full_prompt_ids(lm: LoadedModel, prompt_text: str, image: Image.Image) -> list[int]:
    """A prompt's ids with its image pad expanded to the image's own token count, as the model card's processor
    expands it."""
    return text_ids(lm, prompt_text, preprocess(lm, image).num_tokens)


def model_inputs(lm: LoadedModel, prompts: list[str], images: list[Image.Image]) -> dict:
    """The forward's keyword arguments for prompts and their images (one each), left-padded: what the model card's
    processor gives (``pixel_values`` of all images, ``image_grid_thw``, ``mm_token_type_ids``)."""
    prepared = [preprocess(lm, image) for image in images]
    ids, padding = left_pad(lm, [text_ids(lm, text, image.num_tokens) for text, image in zip(prompts, prepared)])
    return {"input_ids": ids, "attention_mask": (~padding).long(),
            "pixel_values": torch.cat([image.patches for image in prepared]),
            "image_grid_thw": torch.stack([image.grid for image in prepared]),
            "mm_token_type_ids": (ids == lm.image_token_id).long()}


def answer_text(lm: LoadedModel, prompt_text: str, continuation: str) -> str:
    """The prompt followed by the assistant turn holding ``continuation`` (lmms-eval's loglikelihood)."""
    return f"{prompt_text}{continuation}{IM_END}"
