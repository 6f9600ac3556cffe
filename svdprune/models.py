"""What every model family hands the engine, and the loading helpers the families share.

A family's loader (``svdprune/families/<family>.py``: a hub id, a local folder, a model the user loaded, the random
tiny model) returns a :class:`LoadedModel`: the HF model, its tokenizer, the modules and constants the engine and
the methods read. Here also: dtype and device settings, the float32-to-half cast ``from_pretrained`` does, the
one-line errors of a failed hub load, and the tiny byte-level tokenizer and CLIP towers the offline tests build.
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
from .prompts import IMAGE_PLACEHOLDER

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LoadedModel:
    """One loaded model as its family describes it (``svdprune/families/<family>.py``); the engine and the methods
    read the model through these fields, never through the HF model's attribute paths."""

    model: torch.nn.Module  # the HF model (LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, ...)
    tokenizer: object
    name: str
    revision: str | None
    image_size: int  # the square side pixels are resized to (0: the image's own size, set by the processor)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_token_id: int
    feature_layer: int  # index into the vision tower's hidden_states (LLaVA-1.5: -2)
    num_patches: int  # the most image tokens one image feeds the LLM unpruned (576 for LLaVA-1.5's 336 px / 14 px)
    device: torch.device
    dtype: torch.dtype
    family: str  # the family's NAME (svdprune.families)
    vision_tower: torch.nn.Module | None = None  # what the family's vision call runs (methods' ``encode`` gets it)
    projector: torch.nn.Module | None = None  # vision features -> LLM-input embeddings (None: inside the tower)
    image_processor: object = None  # the family's own image processor, when preprocessing is not svdprune.prompts'
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


def dtype_of(name: str, device: str = "auto") -> torch.dtype:
    """``model.dtype`` (``auto`` resolved for ``device``) as a torch dtype."""
    return DTYPES[resolve_dtype(name, device)]


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


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def in_project(path: str) -> str:
    """A relative path that does not exist from the working directory but does inside the project
    (e.g. the committed ``checkpoints/mini``) resolves there, so run.py works from any directory."""
    if not os.path.isabs(path) and not os.path.exists(path) and (PROJECT_ROOT / path).exists():
        return str(PROJECT_ROOT / path)
    return path


def read_config_json(model_cfg) -> dict | None:
    """A pretrained model setting's config.json without loading the model: the local folder's, else the HF cache's
    snapshot of the hub id (no download); None when neither is there or the file does not parse."""
    path = in_project(str(model_cfg.get("path") or ""))
    file = Path(path).expanduser() / "config.json"
    if not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json", revision=model_cfg.get("revision"))
        except Exception:  # noqa: BLE001 - an odd id or cache layout: not resolvable offline
            return None
        if not isinstance(cached, str):
            return None
        file = Path(cached)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


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
