"""The models the benchmarks measure: the random tiny LLaVA, LLaVA-1.5-7B's geometry with random weights built on the
device (``geometry7b``), or a llava-hf folder / hub id loaded exactly as run.py loads it; the command-line arguments
that choose one (shared by scripts/bench_latency.py and scripts/bench_throughput.py) and the output folder rule."""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from svdprune import flops as F
from svdprune.models import DTYPES

BUDGETS = [192, 128, 64, 32, 16]

SCRATCH = Path(tempfile.gettempdir()) / "svdprune-bench"


def output_dir(value: str | None) -> Path:
    """``--output-dir`` as given, else (default) a scratch folder: ad-hoc runs never overwrite committed results."""
    if value is None or Path(value) == SCRATCH:
        print(f"no --output-dir: writing to {SCRATCH} (committed figures: --output-dir results/efficiency)")
        return SCRATCH
    return Path(value)


class ModelArgument(argparse.Action):
    """``--model tiny|geometry7b`` names a built-in model; anything else is a llava-hf folder or hub id, stored
    as ``model_path`` (and ``model`` = "real") so that every script sharing these arguments loads it."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value in ("tiny", "geometry7b"):
            namespace.model = value
        else:
            namespace.model, namespace.model_path = "real", value


LLAVA_7B_GEOMETRY = dict(text_hidden=4096, text_layers=32, vision_hidden=1024, vision_layers=24, image_size=336)


def folder_model_name(path: str) -> str:
    """``7b`` for a folder with LLaVA-1.5-7B's geometry (file tag latency_<device>-7b), else ``real``."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        text, vision = config.get("text_config", {}), config.get("vision_config", {})
        geometry = dict(text_hidden=text.get("hidden_size", 4096), text_layers=text.get("num_hidden_layers", 32),
                        vision_hidden=vision.get("hidden_size"), vision_layers=vision.get("num_hidden_layers"),
                        image_size=vision.get("image_size"))
        return "7b" if geometry == LLAVA_7B_GEOMETRY else "real"
    except (OSError, ValueError):
        return "real"


def model_note(lm, args, model_name: str) -> str:
    config = lm.model.config
    if model_name == "tiny":
        return (f"random tiny LLaVA (CLIP {config.vision_config.num_hidden_layers} layers x "
                f"{config.vision_config.hidden_size}, Llama {config.text_config.num_hidden_layers} layers x "
                f"{config.text_config.hidden_size}; 577 vision tokens)")
    if model_name == "geometry7b":
        return "LLaVA-1.5-7B geometry, random weights"
    marker = Path(args.model_path) / "random_weights.json"
    origin = "seeded random weights (scripts/make_random_llava.py)" if marker.is_file() else "weights"
    geometry = "LLaVA-1.5-7B geometry, " if model_name == "7b" else ""
    return f"{geometry}{origin} from `{args.model_path}`"


def word_tokenizer_note(lm) -> str:
    return "model folder's tokenizer" if lm.name not in ("tiny", "geometry7b") else "tiny byte-level BPE tokenizer"


def build_geometry7b(device: torch.device, dtype: torch.dtype, tokenizer_path: str | None = None):
    """LlavaForConditionalGeneration with LLaVA-1.5-7B's config, random weights, built on ``device`` directly.

    Without ``tokenizer_path`` the tiny byte-level tokenizer is used (the GQA prompt is 55-77 tokens with it,
    60-68 with the real Llama-2 tokenizer); ``<image>``'s id is set into the config.
    """
    from transformers import LlavaForConditionalGeneration

    from svdprune.models import build_tiny_tokenizer
    from svdprune.prompts import IMAGE_PLACEHOLDER

    if tokenizer_path:
        from svdprune.probing import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = build_tiny_tokenizer()
    config = F.llava15_7b_config()
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    from svdprune.families import family

    return dataclasses.replace(family("llava15").from_model(model, tokenizer), name="geometry7b")


def load_model(args, device: torch.device):
    from svdprune.families import family

    llava15 = family("llava15")
    if args.model_path:
        return llava15.load_pretrained(args.model_path, None, args.dtype or "float16", str(device))
    if args.model == "geometry7b":
        return build_geometry7b(device, DTYPES[args.dtype or "float16"], args.tokenizer)
    vision_layers, text_layers = args.tiny_layers
    return llava15.build_tiny(seed=0, device=str(device), dtype=args.dtype or "float32", vision_layers=vision_layers,
                      text_layers=text_layers)


def clip_l_tower(device: torch.device, dtype: torch.dtype):
    """CLIP ViT-L/14-336 vision tower with random weights (LLaVA-1.5's geometry), built on ``device``."""
    from transformers import CLIPVisionModel

    config = F.llava15_7b_config().vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return CLIPVisionModel._from_config(config, dtype=dtype).eval()


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", action=ModelArgument, metavar="{tiny,geometry7b,FOLDER}",
                        help="tiny: random tiny LLaVA; geometry7b: LLaVA-1.5-7B config, random weights on the device; "
                             "a llava-hf folder (e.g. scripts/make_random_llava.py's): loaded like run.py loads it")
    parser.add_argument("--model-path", default=None, help="llava-hf folder or hub id (same as --model FOLDER)")
    parser.add_argument("--tiny-layers", nargs=2, type=int, default=[24, 32], metavar=("VISION", "TEXT"),
                        help="depth of the tiny model (default LLaVA-1.5's, so that every method's schedule applies)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for --model geometry7b (folder or tokenizer.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: float16 for 7B, float32 for tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--budgets", nargs="*", type=int, default=BUDGETS)
    parser.add_argument("--output-dir", default=str(SCRATCH),
                        help=f"where the files go; default {SCRATCH} (never the committed results/efficiency: "
                             "pass --output-dir results/efficiency to refresh those)")

