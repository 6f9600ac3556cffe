"""Loading LLaVA-1.5 (hub id or local folder) and building the random ``tiny`` model for tests.

Whatever the source, loading returns a :class:`LoadedModel`: the HF ``LlavaForConditionalGeneration``,
its tokenizer and the preprocessing constants the engine needs.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .prompts import CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LoadedModel:
    model: torch.nn.Module  # LlavaForConditionalGeneration
    tokenizer: object
    name: str
    revision: str | None
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_token_id: int
    feature_layer: int  # index into the vision tower's hidden_states (LLaVA-1.5: -2)
    num_patches: int  # image tokens LLaVA feeds the LLM unpruned (576 for 336 px / 14 px patches)
    device: torch.device
    dtype: torch.dtype
    family: str = "llava15"  # "llava15" or "qwen25vl" (svdprune/qwen25vl.py)
    image_processor: object = None  # Qwen2.5-VL's (LLaVA-1.5's preprocessing is svdprune.prompts')
    stop_token_ids: tuple[int, ...] = ()  # greedy decoding stops at any of them; empty: the tokenizer's eos

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.stop_token_ids or (self.tokenizer.eos_token_id,)

    @property
    def pad_token_id(self) -> int:
        """The id left padding uses (never attended to, so its value changes no output): the tokenizer's, else the
        text config's, else 0."""
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        if pad is None:
            pad = getattr(getattr(self.model.config, "text_config", self.model.config), "pad_token_id", None)
        return pad if pad is not None else 0

    @property
    def vision_tower(self):
        """LLaVA's CLIP tower; Qwen2.5-VL's ViT with its patch merger."""
        return self.model.model.visual if self.family == "qwen25vl" else self.model.model.vision_tower

    @property
    def projector(self):
        """LLaVA's projector (Qwen2.5-VL's merger is part of its vision tower)."""
        return self.model.model.multi_modal_projector

    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def final_norm(self):
        """The LLM's final norm (before the LM head)."""
        return self.language_model.norm


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device={device!r} but no CUDA device is available; use device=cpu or auto")
    return torch.device(device)


def device_type(device: str) -> str:
    """The kind of device a ``model.device`` setting runs on ("cpu", "cuda", "mps", ...), without loading
    anything: ``auto`` is CUDA where a CUDA device is available, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise UserError(f"model.device={device!r}; allowed: auto, cpu, cuda, cuda:N (or another torch device)") from None


DTYPE_SETTINGS = (*DTYPES, "auto")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 / AMX on x86, BF16 on Arm): there a
    half-precision run is several times faster than float32; elsewhere bfloat16 is emulated and slower."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def resolve_dtype(name: str, device: str = "auto") -> str:
    """``model.dtype`` as a concrete dtype name. ``auto``: float16 on CUDA (official LLaVA's evaluation dtype),
    bfloat16 on a CPU with native bf16 matrix products, float32 otherwise."""
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"unknown model.dtype {name!r}; allowed: {', '.join(DTYPE_SETTINGS)}")
        return name
    kind = device_type(device)
    if kind == "cuda":
        return "float16"
    return "bfloat16" if kind == "cpu" and cpu_has_native_bf16() else "float32"


def _dtype(name: str, device: str = "auto") -> torch.dtype:
    return DTYPES[resolve_dtype(name, device)]


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
        feature_layer=config.vision_feature_layer, num_patches=grid * grid, device=device, dtype=dtype,
    )


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a model built in float32 to ``dtype`` the way ``from_pretrained(dtype=...)`` leaves one: floating
    parameters in ``dtype`` (those of the class's ``_keep_in_fp32_modules`` in float32), buffers as the model
    built them. ``model.to(dtype)`` would also cast Llama's rotary ``inv_freq`` (float32 in HF and in official
    LLaVA), which moves the rotary angle at position 700 by up to 0.17 rad in float16 and 0.86 rad in
    bfloat16. In place; returns ``model``."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) | set(
        getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, param in model.named_parameters():
        if param.is_floating_point() and not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)
    return model


def llava_from_model(model: torch.nn.Module, tokenizer=None) -> LoadedModel:
    """The engine's view of a ``LlavaForConditionalGeneration`` someone else loaded (any dtype, any device; used by
    :func:`svdprune.prune` through :func:`svdprune.families.from_model`). Nothing is moved or cast: the device and dtype
    are those of the model's own parameters (the vision tower's dtype: pixels and kept features are cast to it, as HF's
    LLaVA does)."""
    embed = model.model.language_model.embed_tokens.weight
    tower_dtype = next(p.dtype for p in model.model.vision_tower.parameters() if p.is_floating_point())
    return _describe(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__, None,
                     CLIP_MEAN, CLIP_STD, embed.device, tower_dtype)


def check_local_folder(path: str, what: str) -> None:
    """A path that looks local (or exists) must be a folder with config.json (else it is taken as a hub id)."""
    if (path.startswith((".", "/", "~")) or os.path.exists(path)) and not (Path(path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path={path!r}: no config.json there; point it at {what} or a hub id")


@contextlib.contextmanager
def hub_loading(path: str, revision: str | None, progress: bool):
    """Around ``from_pretrained`` calls: transformers' "Loading weights" bar hidden unless ``progress``, and a failed
    load (missing files, no network: ``OSError``) as one line that names the model and the offline way."""
    from transformers.utils import logging as hf_logging

    hide_bar = not progress and hf_logging.is_progress_bar_enabled()
    if hide_bar:
        hf_logging.disable_progress_bar()
    try:
        yield
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {path!r} (revision {revision}): {first_line}; for offline use "
                        "download it once and set model.path=/local/folder") from None
    finally:
        if hide_bar:
            hf_logging.enable_progress_bar()


def load_pretrained(path: str, revision: str | None, dtype: str, device: str, progress: bool = True) -> LoadedModel:
    """Load a llava-hf format checkpoint from a local folder or a hub id (e.g. llava-hf/llava-1.5-7b-hf).
    ``progress=False`` hides transformers' "Loading weights" bar."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    path = in_project(path)
    check_local_folder(path, "a llava-hf format folder (config.json, *.safetensors, tokenizer files)")
    torch_dtype, torch_device = _dtype(dtype, device), resolve_device(device)
    with hub_loading(path, revision, progress):
        # on a GPU the weights go straight to it (accelerate's device_map), never through host RAM first
        on_gpu = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}
        model = LlavaForConditionalGeneration.from_pretrained(
            path, revision=revision, dtype=torch_dtype, attn_implementation="sdpa", **on_gpu)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    image_mean, image_std = _preprocessor_stats(path, revision)
    return _finish(model, tokenizer, path, revision, image_mean, image_std, torch_device, torch_dtype)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def in_project(path: str) -> str:
    """A relative path that does not exist from the working directory but does inside the project
    (e.g. the committed ``checkpoints/mini``) resolves there, so run.py works from any directory."""
    if not os.path.isabs(path) and not os.path.exists(path) and (PROJECT_ROOT / path).exists():
        return str(PROJECT_ROOT / path)
    return path


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


# ---------------------------------------------------------------- tiny random model (tests, first runs)

_TINY_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
    "Answer the question using a single word or phrase. Reference OCR token:",
    "What color is the shape? Is there a circle, a square or a triangle in the image? yes no",
    "red green blue black white gray yellow brown left right top bottom how many what is the name",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in memory on a fixed corpus (deterministic, offline).

    Any text tokenises (byte fallback); ``<s>`` is prepended like Llama's tokenizer; ``<image>`` is special.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


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
    model = cast_like_from_pretrained(LlavaForConditionalGeneration(config), _dtype(dtype, device))
    return _finish(model, tokenizer, "tiny", None, CLIP_MEAN, CLIP_STD, resolve_device(device), _dtype(dtype, device))


def build_clip_tokenizer():
    """:func:`build_tiny_tokenizer` made CLIP-like (:func:`clip_like`). For the random CLIP text towers TRIM
    uses offline."""
    return clip_like(build_tiny_tokenizer())


def clip_like(tokenizer):
    """A Llama-style tokenizer (``<s>`` prepended) made CLIP-like, in place: every text ends with an end-of-text
    token (``<|endoftext|>``, the eos, where CLIP's text tower pools) and is cut at 77 tokens."""
    from tokenizers import processors

    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A <|endoftext|>",
        special_tokens=[("<s>", tokenizer.bos_token_id), ("<|endoftext|>", tokenizer.eos_token_id)])
    tokenizer.model_max_length = 77
    return tokenizer


def build_tiny_clip(vision_config, seed: int = 0):
    """A random CLIP (text tower + projections) whose vision side matches ``vision_config``, and its tokenizer:
    TRIM's ``clip_path=tiny`` for the tiny model (CLIP's real text tower is a hub download). The tokenizer is
    :func:`build_clip_tokenizer`'s; the text tower
    is 2 layers of width 32, projections of width 16. Returns (CLIPModel in eval mode, tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = build_clip_tokenizer()
    eos = tokenizer.eos_token_id
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=vision_config.hidden_size, intermediate_size=vision_config.intermediate_size,
                           num_hidden_layers=1, num_attention_heads=vision_config.num_attention_heads,
                           image_size=vision_config.image_size, patch_size=vision_config.patch_size),
        projection_dim=16)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    torch.random.set_rng_state(generator_state)
    return model, tokenizer
