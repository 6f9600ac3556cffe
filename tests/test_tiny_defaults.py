"""model=tiny has LLaVA-1.5's depth (24 vision, 32 LLM layers): every method runs on it with its LLaVA
defaults at budget 16 (ToMe's 23-layer schedule, SparseVLM's [2, 6, 15], PyramidDrop's [2, 8, 16], FastV K=2,
TRIM with a random tiny CLIP built in-process), offline, and keeps what the README's schedule table says.
(tests/test_runner.py covers run.py's plumbing on a shallow tiny model.)"""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from svdprune.families import generate, load_model
from svdprune.prompts import ANSWER_INSTRUCTION
from svdprune.pruning import build_method

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = ["vanilla", "svd", "tome", "visionzip", "trim", "fastervlm", "divprune", "vispruner", "cdpruner", "holov",
           "random", "pooling", "fastv", "pyramiddrop", "sparsevlm", "dart", "tokencarve",
           "flowcut"]
# image tokens after the first cut at budget 16 (README: SparseVLM keeps 16 and appends 17 recycled tokens;
# DART keeps its 4 image pivots + 8 pivots x 16 // 8)
FIRST_CUT = {"vanilla": 576, "sparsevlm": 33, "dart": 20}
# image tokens averaged over the 32 layers (README's schedule table)
AVERAGE = {"vanilla": 576.0, "fastv": 51.0, "pyramiddrop": 39.0, "tokencarve": 51.0}


def composed(method: str):
    """configs/model/tiny.yaml + configs/method/<method>.yaml, resolved as run.py composes them."""
    cfg = OmegaConf.create({"model": OmegaConf.load(CONFIGS / "model" / "tiny.yaml"),
                            "method": OmegaConf.load(CONFIGS / "method" / f"{method}.yaml")})
    params = cfg.method.get("params")
    return cfg.model, (OmegaConf.to_container(params, resolve=True) if params is not None else {})


@pytest.fixture(scope="module")
def deep_tiny():
    model_cfg, _ = composed("vanilla")
    lm = load_model(model_cfg)
    assert (lm.model.config.vision_config.num_hidden_layers, lm.model.config.text_config.num_hidden_layers) == (24, 32)
    return lm


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_tiny_with_llava_defaults(method, deep_tiny, random_images):
    _, params = composed(method)
    if method == "trim":
        assert params["clip_path"] == "tiny"  # the tiny model's config names its CLIP: no download
    pruner = build_method(method, 16, params)
    if pruner.kind == "none":
        pruner.budget = deep_tiny.num_patches
    out = generate(deep_tiny, pruner, ["What color is the shape?"], random_images[:1],
                   instruction=ANSWER_INSTRUCTION, max_new_tokens=1)
    per_layer = out.image_tokens_per_layer[0]
    assert len(per_layer) == 32
    assert next((n for n in per_layer if n != per_layer[0]), per_layer[0]) == FIRST_CUT.get(method, 16)
    if method in AVERAGE:
        assert sum(per_layer) / 32 == pytest.approx(AVERAGE[method], abs=0.05)
