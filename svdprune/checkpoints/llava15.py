"""A llava-hf folder with LLaVA-1.5-7B's exact geometry and seeded random weights (no network).

Runs the 7B code path at the 7B cost on machines the real weights cannot reach: ``config.json`` is
``llava-hf/llava-1.5-7b-hf``'s (CLIP ViT-L/14-336 tower, 24 layers, 577 tokens; Vicuna-7B / Llama-2-7B LLM,
32 layers of width 4096, vocabulary 32064; ``image_token_index`` 32000, ``pad_token_id`` 32001), the weights
are written in the hub's tensor names (``language_model.model.*``, ``vision_tower.vision_model.*``,
``multi_modal_projector.*``, so loading goes through transformers' checkpoint renaming like the real files)
as bf16 safetensors shards, one shard in memory at a time. The tokenizer is Llama-2's real vocabulary, built
from the npm package ``llama-tokenizer-js`` (:mod:`svdprune.checkpoints.llama2_tokenizer`; not committed, see
there).

``--clip OUT`` also writes a random ``openai/clip-vit-large-patch14-336``-geometry CLIPModel (text tower 12 x
768, vision tower 24 x 1024, projections 768) for TRIM's ``method.params.clip_path``. Its tokenizer is the
project's small byte-level BPE (CLIP's 49,408-piece BPE cannot reach us): question lines tokenise to a few
more pieces than with CLIP's, and the config's ``bos/eos/pad`` ids are that tokenizer's; all else is CLIP-L's.

``scripts/make_random_llava.py`` is its command line.

Weights: :mod:`svdprune.checkpoints.random_weights` with std = 0.02 (HF's ``initializer_range``). Answers are noise; costs, shapes, dtypes and code paths are the real ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from svdprune.checkpoints import llama2_tokenizer
from svdprune.checkpoints.random_weights import hub_renamer, tensor_specs, write_sharded

# llava-hf/llava-1.5-7b-hf config.json (hub revision of transformers 4.36.0.dev0); the fields not listed
# take LlamaConfig / CLIPVisionConfig defaults, which are Llama-2-7B's and CLIP ViT-L's.
LLAVA_15_7B_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}

PREPROCESSOR_CONFIG = {  # llava-hf/llava-1.5-7b-hf preprocessor_config.json
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

PROCESSOR_CONFIG = {  # llava-hf/llava-1.5-7b-hf processor_config.json: <image> expands to 576 tokens
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}

GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}

# openai/clip-vit-large-patch14-336: the fields that differ from CLIPConfig's defaults
CLIP_L_336 = {
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12, "projection_dim": 768, "max_position_embeddings": 77,
                    "vocab_size": 49408},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "image_size": 336, "projection_dim": 768},
    "projection_dim": 768,
}

# transformers-5 module names -> the names in llava-hf's 4.36-era safetensors
hub_name = hub_renamer([("lm_head.", "language_model.lm_head."),
                        ("model.language_model.", "language_model.model."),
                        ("model.vision_tower.", "vision_tower.vision_model."),
                        ("model.multi_modal_projector.", "multi_modal_projector.")])


def write_llava(out: Path, tokenizer_js: Path, seed: int, dtype: torch.dtype, shard_bytes: int) -> int:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(LLAVA_15_7B_CONFIG, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    llama2_tokenizer.write(tokenizer_js, out)
    specs = tensor_specs(LlavaForConditionalGeneration, LlavaConfig.from_pretrained(out))
    total = write_sharded(specs, out, seed, 0.02, dtype, shard_bytes, rename=hub_name)
    write_marker(out, seed, dtype)
    return total



def write_marker(out: Path, seed: int, dtype) -> None:
    """``random_weights.json``: says (to people and to scripts/bench_latency.py) that the weights are noise."""
    marker = {"generator": "scripts/make_random_llava.py", "seed": seed, "std": 0.02, "dtype": str(dtype)[6:],
              "geometry": "llava-hf/llava-1.5-7b-hf config.json", "tokenizer": "Llama-2 (llama-tokenizer-js "
              f"{llama2_tokenizer.VERSION})", "note": "random weights: answers are noise; costs and shapes are real"}
    (out / "random_weights.json").write_text(json.dumps(marker, indent=2) + "\n")



def write_clip(out: Path, seed: int) -> int:
    """A random CLIP-L/14-336 (float32, as TRIM loads it) with the project's byte-level BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from svdprune.models import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(text_config={**CLIP_L_336["text_config"], **ids},
                        vision_config=CLIP_L_336["vision_config"], projection_dim=CLIP_L_336["projection_dim"])
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return write_sharded(tensor_specs(CLIPModel, config), out, seed, 0.02, torch.float32, 4 << 30)
