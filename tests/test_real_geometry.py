"""The real-geometry path: every method on one question through LLaVA-1.5-7B's exact geometry in bf16 on CPU.

Opt-in (``slow``; CI deselects it and it skips without the folder): point ``SVDPRUNE_LLAVA7B`` at a llava-hf
folder with LLaVA-1.5-7B's config (``scripts/make_random_llava.py`` writes one with random weights) and, for
TRIM, ``SVDPRUNE_CLIP_L`` at a CLIP-L/14-336 folder (``make_random_llava.py --clip``)::

    SVDPRUNE_LLAVA7B=/work/llava7b-random SVDPRUNE_CLIP_L=/work/clip-l-random python -m pytest -m slow tests/test_real_geometry.py

The model is loaded once (about 14 GB of RAM); each method runs one question at budget 16 with its LLaVA
defaults and 2 new tokens (about 10-60 s each on two CPU cores, vanilla several minutes).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from eval.fixtures import write_local_fixture

FOLDER = os.environ.get("SVDPRUNE_LLAVA7B")
CLIP = os.environ.get("SVDPRUNE_CLIP_L")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"
METHODS = ["vanilla", "svd", "tome", "visionzip", "trim", "fastervlm", "divprune", "random", "pooling",
           "fastv", "pyramiddrop", "sparsevlm"]
# image tokens after the first cut at budget 16 (README's schedule table; SparseVLM adds its recycled tokens)
FIRST_CUT = {"vanilla": 576, "sparsevlm": 33}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FOLDER, reason="set SVDPRUNE_LLAVA7B to a LLaVA-1.5-7B-geometry folder")]


@pytest.fixture(scope="module")
def lm():
    from svdprune.families.llava15 import load_pretrained

    model = load_pretrained(FOLDER, None, "bfloat16", "cpu")
    text, vision = model.model.config.text_config, model.model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (4096, 32, 32064)
    assert (vision.hidden_size, vision.num_hidden_layers, model.num_patches) == (1024, 24, 576)
    assert model.dtype == torch.bfloat16 and len(model.tokenizer) == 32002
    return model


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    from eval.datasets import load_dataset, load_image

    folder = write_local_fixture(tmp_path_factory.mktemp("fx"), questions=1, images=1, seed=0)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS.parent / "dataset" / "local.yaml"), {"path": str(folder)})
    record = load_dataset(cfg).records[0]
    return record.question, load_image(record)


def params_of(name: str) -> dict:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    params = OmegaConf.to_container(cfg.params, resolve=True) if cfg.get("params") is not None else {}
    if name == "trim":
        if not CLIP:
            pytest.skip("set SVDPRUNE_CLIP_L to a CLIP-L/14-336 folder for TRIM")
        params["clip_path"] = CLIP
    return params


@pytest.mark.parametrize("name", METHODS)
def test_method_at_real_geometry(lm, question, name):
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method
    from svdprune.families import generate

    method = build_method(name, 16, params_of(name))
    if method.kind == "none":
        method.budget = lm.num_patches
    logits = []
    hook = lm.model.lm_head.register_forward_hook(lambda m, i, out: logits.append(out.float()))
    try:
        out = generate(lm, method, [question[0]], [question[1]], instruction=ANSWER_INSTRUCTION, max_new_tokens=2)
    finally:
        hook.remove()
    per_layer = out.image_tokens_per_layer[0]
    assert len(per_layer) == 32
    first_cut = next((n for n in per_layer if n != per_layer[0]), per_layer[0])
    assert first_cut == FIRST_CUT.get(name, 16)
    assert per_layer[0] == (16 if method.kind == "encoder" else 576)
    assert 55 <= out.prompt_lengths[0] - per_layer[0] <= 75  # Llama-2 prompt around the image (59 for this one)
    assert 1 <= len(out.token_ids[0]) <= 2 and all(math.isfinite(v) for l in logits for v in (l.min(), l.max()))


def test_folder_loads_with_autoprocessor_and_expands_the_image_to_576_tokens():
    """llava-hf's processor files (processor_config.json: patch 14, CLS dropped): <image> -> 576 image ids, the
    text around it as LLaVA's tokenizer_image_token gives it (llava-hf's processor resizes and centre-crops;
    run.py pads to a square first, so pixels agree for square images)."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from svdprune.prompts import preprocess_image, tokenizer_image_token, vicuna_prompt

    processor = AutoProcessor.from_pretrained(FOLDER)
    prompt = vicuna_prompt("What is the colour of the bus?")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert inputs.input_ids[0].tolist() == tokenizer_image_token(prompt, processor.tokenizer, 32000, 576)
    torch.testing.assert_close(inputs.pixel_values[0], preprocess_image(image), atol=1e-5, rtol=0)
