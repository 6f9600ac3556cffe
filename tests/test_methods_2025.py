"""The 2025 methods against their authors' code (fixtures recorded by scripts/official_fixtures.py on the
seeded inputs of tests/official_inputs.py), and their behaviour inside the engine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from baselines.fastervlm import FasterVLM
from baselines.vispruner import VisPruner, split_budget, vispruner_select
from svdprune.errors import UserError
from svdprune.prompts import ANSWER_INSTRUCTION
from svdprune.surgery import generate
from tests.official_inputs import input_digest, vispruner_inputs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"


def fixture(method: str) -> dict:
    return json.loads((FIXTURES / f"{method}.json").read_text())


# ------------------------------------------------------------------------------------------------ VisPruner


def test_vispruner_equals_the_official_code_on_recorded_inputs():
    recorded = fixture("vispruner")
    assert recorded["official"]["commit"] == "aefa01adc7c7ce6334e880c88225e90cede760d1"
    budgets = {case["budget"] for case in recorded["cases"]}
    assert {192, 128, 64, 32, 16} <= budgets
    inputs = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in inputs:
            inputs[seed] = vispruner_inputs(seed)
            assert input_digest(*inputs[seed]) == recorded["input_sha256"][str(seed)], "torch's generator changed"
        features, attentions = inputs[seed]
        important, diverse = split_budget(case["budget"], case["important_ratio"])
        kept = vispruner_select(features, attentions.mean(dim=1), important, diverse)
        assert kept.tolist() == case["kept"], (seed, case["budget"])


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 30, 191, 575, 576])
def test_vispruner_budgets_the_official_loop_cannot_run_give_exactly_the_budget(budget):
    features, attentions = vispruner_inputs(0)
    important, diverse = split_budget(budget, 0.5)
    kept = vispruner_select(features, attentions.mean(dim=1), important, diverse)
    assert kept.shape == (2, budget)
    for row in kept.tolist():
        assert row == sorted(set(row))
    if budget == 576:
        assert kept.tolist() == [list(range(576))] * 2


def test_vispruner_with_only_important_tokens_is_fastervlm(tiny, random_images):
    kept = {}
    for name, method in (("vispruner", VisPruner(16, important_ratio=1.0)), ("fastervlm", FasterVLM(16))):
        out = generate(tiny, method, ["What is it?"] * 2, random_images[:2], instruction=ANSWER_INSTRUCTION,
                       max_new_tokens=1)
        kept[name] = out.stats["kept_indices"]
    assert kept["vispruner"] == kept["fastervlm"]


def test_vispruner_keeps_the_budget_in_the_engine_and_records_it(tiny, random_images):
    out = generate(tiny, VisPruner(32), ["What is it?"] * 2, random_images[:2], instruction=ANSWER_INSTRUCTION,
                   max_new_tokens=1)
    assert [len(k) for k in out.stats["kept_indices"]] == [32, 32]
    assert out.image_tokens_per_layer[0][0] == 32


@pytest.mark.parametrize("value", [-0.1, 1.5, "half", True])
def test_vispruner_rejects_a_bad_ratio(value):
    with pytest.raises(UserError, match=r"^vispruner: method.params.important_ratio=.*allowed: a number in \[0, 1\]$"):
        VisPruner(16, important_ratio=value)
