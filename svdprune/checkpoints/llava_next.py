"""A LLaVA-NeXT folder in llava-v1.6-vicuna-7b's geometry as reconstructed here, with HF's random initialisation
(:func:`next_7b_config`: LLaVA-1.5-7B's CLIP ViT-L/14-336 and Vicuna-7B, the v1.6 pinpoints 336 x 672 .. 672 x 672,
336 x 1008, an ``image_newline``; not read from the hub, which this machine cannot reach), the project's tiny
byte-level tokenizer (prompt lengths a few tokens off Llama-2's) and the llava-hf image processor. Answers are
noise; shapes, dtypes and costs are the 7B's. ``scripts/llava_next_geometry.py`` writes it when its ``--model``
is absent."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]



def next_7b_config(image_token_id: int, pad_token_id: int):
    from transformers import LlavaNextConfig

    from svdprune.flops import llava15_7b_config

    base = llava15_7b_config()
    base.text_config.pad_token_id = pad_token_id
    config = LlavaNextConfig(vision_config=base.vision_config.to_dict(), text_config=base.text_config.to_dict(),
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=PINPOINTS, image_token_id=image_token_id,
                             projector_hidden_act="gelu", tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return config



def write_model(folder: Path) -> None:
    from transformers import LlavaNextForConditionalGeneration

    from svdprune.families import family
    from svdprune.models import build_tiny_tokenizer
    from svdprune.prompts import IMAGE_PLACEHOLDER

    tokenizer = build_tiny_tokenizer()
    config = next_7b_config(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER), tokenizer.pad_token_id)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = LlavaNextForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    family("llava_next").image_processor(config).save_pretrained(folder)
    (folder / "random_weights.json").write_text(json.dumps({"generator": "scripts/llava_next_geometry.py",
                                                            "seed": 0, "dtype": "bfloat16"}) + "\n")
    print(f"wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
