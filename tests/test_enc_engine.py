"""The encoder-side baselines through the engine: configs, registry, and budget 576 == unpruned LLaVA."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from svdprune.pruning import METHODS, Vanilla, build_method
from svdprune.families import generate

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "method"
ENCODER_BASELINES = ("tome", "visionzip", "trim", "fastervlm", "divprune", "random", "pooling")
QUESTIONS = ["What color is the shape?", "How many?"]


def config_params(name: str) -> dict:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    return OmegaConf.to_container(cfg.params, resolve=True) if cfg.get("params") is not None else {}


@pytest.mark.parametrize("name", ENCODER_BASELINES)
def test_registered_with_a_config(name):
    assert name in METHODS
    params = config_params(name)
    if name == "trim":
        assert params["clip_path"] == "openai/clip-vit-large-patch14-336" and params["sign"] == "official"
        return  # constructing it would load CLIP from the hub; tests/test_enc_trim.py loads a local one
    for budget in (192, 128, 64, 32, 16):
        method = build_method(name, budget, params)
        assert method.kind == "encoder" and method.budget == budget


@pytest.fixture(scope="module")
def unpruned(tiny, random_images):
    return generate(tiny, Vanilla(), QUESTIONS, random_images[:2], instruction="Answer briefly.", max_new_tokens=6)


@pytest.mark.parametrize("name", ["tome", "fastervlm", "divprune", "random", "pooling"])
def test_all_tokens_reproduce_the_unpruned_model(tiny, random_images, unpruned, name):
    method = build_method(name, 576, config_params(name))
    out = generate(tiny, method, QUESTIONS, random_images[:2], instruction="Answer briefly.", max_new_tokens=6)
    assert out.token_ids == unpruned.token_ids
    assert out.image_tokens_per_layer == unpruned.image_tokens_per_layer


def test_the_comparison_can_fail(tiny, random_images, unpruned):
    """Control: the tiny model's answers do depend on which image tokens it sees."""
    out = generate(tiny, build_method("random", 64, {}), QUESTIONS, random_images[:2],
                   instruction="Answer briefly.", max_new_tokens=6)
    assert out.token_ids != unpruned.token_ids


def test_check_against_the_loaded_model(tiny):
    """``method.check(lm)`` refuses, before any result is written, what the loaded tower cannot do."""
    from svdprune.errors import UserError
    from svdprune.families.llava15 import build_tiny

    tome = build_method("tome", 64, config_params("tome"))  # CLIP-L has 23 merge layers, the tiny tower 2
    with pytest.raises(UserError, match="tome: budget=64"):
        tome.check(tiny)
    reachable = build_method("tome", 200, config_params("tome"))
    reachable.check(tiny)
    assert reachable.schedule == [264, 112]
    for name in ("visionzip", "fastervlm", "divprune", "random", "pooling"):
        build_method(name, 16, config_params(name)).check(tiny)

    small = build_tiny(seed=0, image_size=224, vision_hidden=48, vision_layers=2, text_layers=1)  # 16 x 16 grid
    pooling = build_method("pooling", 34, {})  # 2 x 17 fits a 24 x 24 grid, not 16 x 16
    with pytest.raises(UserError, match="pooling: budget=34"):
        pooling.check(small)
    build_method("pooling", 32, {}).check(small)
    with pytest.raises(UserError, match="visionzip: budget"):
        build_method("visionzip", 300, {}).check(small)
