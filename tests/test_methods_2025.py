"""The 2025 methods against their authors' code (fixtures recorded by scripts/official_fixtures.py on the
seeded inputs of baselines/official/inputs.py), and their behaviour inside the engine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from baselines.cdpruner import CDPruner, cdpruner_select, dpp_greedy
from baselines.dart import Dart, dart_retained
from baselines.fastervlm import FasterVLM
from baselines.flowcut import FlowCut
from baselines.holov import HoloV, holov_select
from baselines.vispruner import VisPruner, split_budget, vispruner_select
from svdprune.errors import UserError
from svdprune.prompts import ANSWER_INSTRUCTION
from svdprune.families import generate
from baselines.tokencarve import TokenCarve, carve, fused_ranks, information_scores, stage_counts
from baselines.official.inputs import (cdpruner_inputs, dart_inputs, flowcut_inputs, flowcut_tower, holov_inputs,
                                   input_digest, tokencarve_inputs, vispruner_inputs)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
INPUTS_DIFFER = ("the seeded inputs differ from the recorded ones (torch's generator changed, or this CPU has "
                 "no AVX2: see baselines/official/inputs.py)")


def fixture(method: str) -> dict:
    return json.loads((FIXTURES / f"{method}.json").read_text())


BATCH_QUESTIONS = ["What is it?", "Where is the red circle on the left side of the picture?"]


def batched_equals_alone(lm, make_method, images):
    """Generate BATCH_QUESTIONS as one left-padded batch and each alone with a fresh ``make_method()``; require the
    same kept indices and tokens per row. Returns the batched generation."""
    batched = generate(lm, make_method(), BATCH_QUESTIONS, images[:2], instruction=ANSWER_INSTRUCTION,
                       max_new_tokens=3)
    for row, question in enumerate(BATCH_QUESTIONS):
        alone = generate(lm, make_method(), [question], images[row:row + 1], instruction=ANSWER_INSTRUCTION,
                         max_new_tokens=3)
        assert alone.stats["kept_indices"][0] == batched.stats["kept_indices"][row]
        assert alone.token_ids[0] == batched.token_ids[row]
    return batched


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
            assert input_digest(*inputs[seed]) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
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


def test_vispruner_batched_equals_one_image_at_a_time_with_duplicate_tokens():
    features, attentions = vispruner_inputs(0)
    features[:, 100:300] = features[:, 100:101]  # a uniform background: 200 identical tokens (exact ties)
    scores = attentions.mean(dim=1)
    batched = vispruner_select(features, scores, 8, 24)
    for row in range(2):
        assert batched[row].tolist() == vispruner_select(features[row:row + 1], scores[row:row + 1], 8, 24)[0].tolist()


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


# ------------------------------------------------------------------------------------------------- CDPruner


def test_cdpruner_equals_the_official_code_on_recorded_inputs():
    recorded = fixture("cdpruner")
    assert recorded["official"]["commit"] == "9541616c40fcd5625de1cdb8ea6c33c129eb7864"
    assert {192, 128, 64, 32, 16} <= {case["budget"] for case in recorded["cases"]}
    assert {case["windows"] for case in recorded["cases"]} == {1, 2}
    inputs = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in inputs:
            inputs[seed] = cdpruner_inputs(seed, case["windows"])
            assert input_digest(*inputs[seed]) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
        tokens, image, text = inputs[seed]
        kept = cdpruner_select(tokens, image, [text], case["budget"])
        assert kept.tolist() == case["kept"], (seed, case["budget"])


def test_cdpruner_batched_equals_one_image_at_a_time():
    a, b = cdpruner_inputs(0, 1), cdpruner_inputs(2, 2)
    batched = cdpruner_select(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), [a[2], b[2]], 64)
    assert batched.tolist() == [cdpruner_select(*x[:2], [x[2]], 64)[0].tolist() for x in (a, b)]


def test_cdpruner_low_rank_kernel_fills_the_budget_by_relevance():
    # a rank-3 kernel and 6 picks: 3 by the DPP, then the 3 unpicked tokens of highest quality
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(1, 10, 3, generator=generator)
    kernel = vectors @ vectors.transpose(1, 2)
    quality = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.05]])
    picks = dpp_greedy(kernel, quality, 6)[0].tolist()
    assert len(set(picks)) == 6
    first = picks[:3]
    rest = [i for i in sorted(range(10), key=lambda i: -quality[0, i].item()) if i not in first][:3]
    assert picks[3:] == rest


def test_cdpruner_text_is_the_question_line_without_the_short_answer_instruction():
    short = "Answer the question using a single word or phrase."
    assert CDPruner.instruction_text("What is it?", short) == "What is it?"
    assert CDPruner.instruction_text("Q?\nReference OCR token: A, b", short) == "Q?\nReference OCR token: A, b"
    assert CDPruner.instruction_text("Q?", "Answer with the option's letter.") == "Q?\nAnswer with the option's letter."


def test_cdpruner_runs_per_question_in_the_engine(tiny, random_images):
    method = CDPruner(16, clip_path="tiny")
    method.check(tiny)
    out = generate(tiny, method, ["What is it?", "Where is the red circle on the left?"], random_images[:2],
                   instruction=ANSWER_INSTRUCTION, max_new_tokens=1)
    assert [len(k) for k in out.stats["kept_indices"]] == [16, 16]
    assert out.image_tokens_per_layer[0][0] == 16


def test_cdpruner_long_instruction_is_cut_into_text_windows_not_truncated(tiny):
    method = CDPruner(16, clip_path="tiny")
    method.check(tiny)
    clip = method.clip
    text = " ".join(["red circle"] * 60)
    ids = clip.tokenizer(text=text, return_tensors="pt")["input_ids"]
    window = clip.max_position_embeddings
    assert ids.shape[1] > window
    embeds = clip.segment_embeds(text, "cpu")
    assert embeds.shape[0] == -(-ids.shape[1] // window)
    first = clip.text_projection(clip.text_model(input_ids=ids[:, :window],
                                                 attention_mask=torch.ones(1, window, dtype=torch.long)).pooler_output)
    torch.testing.assert_close(embeds[:1], first, rtol=1e-5, atol=1e-6)  # batch of windows vs one: rounding


# ----------------------------------------------------------------------------------------------------- DART


def test_dart_equals_the_authors_llmc_code_on_recorded_inputs():
    recorded = fixture("dart")
    assert recorded["official"]["commit"] == "05eedff08c58ce5a3a4e2e879133bc922dff6ff5"
    assert {192, 128, 64, 32, 16} <= {case["budget"] for case in recorded["cases"]}
    prefix, suffix = recorded["prefix"], recorded["suffix"]
    inputs = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in inputs:
            inputs[seed] = dart_inputs(seed, prefix, suffix)
            assert input_digest(*inputs[seed]) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
        keys, states = inputs[seed]
        length = keys.shape[2]
        norms = torch.norm(keys.transpose(1, 2).reshape(1, length, -1), p=1, dim=-1)[0]
        method = Dart(case["budget"])
        kept = dart_retained(norms, states[0], list(range(prefix, prefix + 576)), list(range(prefix + 576, length)),
                             method.pivot_image, method.pivot_text, method.per_pivot)
        assert kept == case["kept_positions"], (seed, case["budget"])
        assert len(kept) == method.kept_image_tokens()


def test_dart_cuts_after_layer_one_and_keeps_positions(tiny, random_images):
    method = Dart(16)
    method.check(tiny)
    out = generate(tiny, method, ["What is it?", "Where is the red circle on the left side?"], random_images[:2],
                   instruction=ANSWER_INSTRUCTION, max_new_tokens=2)
    assert [row[:3] for row in out.image_tokens_per_layer] == [[576, 576, 20]] * 2
    assert [len(k) for k in out.stats["kept_indices"]] == [20, 20]


def test_dart_batched_with_padding_equals_one_prompt_at_a_time(tiny, random_images):
    batched_equals_alone(tiny, lambda: Dart(32), random_images)


# ---------------------------------------------------------------------------------------------------- HoloV


def test_holov_equals_the_official_code_on_recorded_inputs():
    recorded = fixture("holov")
    assert recorded["official"]["commit"] == "1d2e65e961e698ff0e7d5bb4625489177dd9deba"
    assert {192, 128, 64, 32, 16} <= {case["budget"] for case in recorded["cases"]}
    assert any(-1 in row for case in recorded["cases"] for row in case["output_rows"])  # padding is covered
    inputs = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in inputs:
            inputs[seed] = holov_inputs(seed)
            assert input_digest(*inputs[seed]) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
        tokens, attention = inputs[seed]
        for row in range(2):
            kept = holov_select(tokens[row], attention[row], case["budget"])
            assert kept + [-1] * (case["budget"] - len(kept)) == case["output_rows"][row], (seed, case["budget"])


def test_holov_zero_slots_reach_the_llm_as_zero_embeddings(tiny, random_images):
    from baselines._encoder_common import stash
    from svdprune.prompts import preprocess_image
    from svdprune.pruning import PruneContext
    from svdprune.families.llava15 import encode_images, to_model

    class SinkHoloV(HoloV):  # the tower's attention replaced by one with sinks in the third chunk (as CLIP-L has)
        def encode(self, vision_tower, pixel_values, feature_layer, context):
            features = super().encode(vision_tower, pixel_values, feature_layer, context)
            attention = torch.full(features.shape[:2], 1e-4)
            attention[:, 80:86] = 0.1
            stash(context, holov_attention=attention)
            return features

    pixels = torch.stack([preprocess_image(img, tiny.image_size, tiny.image_mean, tiny.image_std)
                          for img in random_images[:2]])
    context = PruneContext(questions=None, model=tiny.model, lm=tiny)
    embeds = encode_images(tiny, SinkHoloV(192), to_model(tiny, pixels, context), context)  # (2, 192, d)
    kept = context.stats["kept_indices"]
    assert all(len(k) < 192 for k in kept)  # the sink chunk cannot take its share: the rest is padding
    for row in range(2):
        n = len(kept[row])
        assert torch.count_nonzero(embeds[row, n:]) == 0
        assert bool((embeds[row, :n].abs().sum(dim=-1) > 0).all())
    assert context.zero_slots is None


def test_holov_runs_in_the_engine(tiny, random_images):
    out = generate(tiny, HoloV(32), ["What is it?"] * 2, random_images[:2], instruction=ANSWER_INSTRUCTION,
                   max_new_tokens=1)
    assert out.image_tokens_per_layer[0][0] == 32
    assert all(len(k) <= 32 for k in out.stats["kept_indices"])


# ----------------------------------------------------------------------------------------------- TokenCarve


def test_tokencarve_equals_the_official_code_on_recorded_inputs():
    """Kept positions and the merged states (bit for bit) of the released work-layer branch, at the released
    weight 0.5 (cases with a tie at a cut are not recorded: the released order is unspecified there) and others."""
    recorded = fixture("tokencarve")
    assert recorded["official"]["commit"] == "a57bd59a214d9010eb1a4decb61b0e3543b7d125"
    assert {192, 128, 64, 32, 16} <= {case["budget"] for case in recorded["cases"] if case["weight"] == 0.5}
    prefix, suffix = recorded["prefix"], recorded["suffix"]
    inputs = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in inputs:
            states, last_row = tokencarve_inputs(seed, prefix, suffix)
            assert input_digest(states, last_row) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
            image = states[:, prefix:prefix + 576]  # (1, 576, 4096)
            attention = last_row[:, :, prefix:prefix + 576].mean(dim=1)  # (1, 576) head mean
            inputs[seed] = image, attention, information_scores(image)
        image, attention, information = inputs[seed]
        fused = fused_ranks(attention, information, case["weight"])
        kept, merged, _, _ = carve(fused, image, *stage_counts(case["budget"]))
        where = (seed, case["budget"], case["weight"])
        assert [prefix + i for i in kept[0].tolist()] == case["kept_positions"], where
        assert input_digest(merged[0, kept[0]]) == case["kept_states_sha256"], where
        assert kept.shape[1] == case["budget"]


def test_tokencarve_budgets_and_weight_are_checked():
    assert stage_counts(16) == (24, 8) and stage_counts(5) == (7, 2)
    TokenCarve(384)
    with pytest.raises(UserError, match=r"budget 385 .* allowed budgets: 1\.\.384"):
        TokenCarve(385)
    with pytest.raises(UserError, match=r"sv_av_weight=2.*\[0, 1\]"):
        TokenCarve(64, sv_av_weight=2)


def test_tokencarve_cuts_earlier_caches_to_the_kept_tokens(tiny, random_images):
    """After the cut before layer 2 every layer's KV cache holds exactly the kept slots, and layers 0 and 1 hold
    the KV an uncut prefill computed at those slots."""
    from svdprune.prompts import preprocess_image, vicuna_prompt
    from svdprune.pruning import PruneContext, Vanilla
    from svdprune.surgery import new_cache, prefill_states
    from svdprune.families.llava15 import build_inputs, encode_images, to_model

    questions = ["What is it?", "Where is the red circle on the left side of the picture?"]
    pixels = torch.stack([preprocess_image(img, tiny.image_size, tiny.image_mean, tiny.image_std)
                          for img in random_images[:2]])
    prompts = [vicuna_prompt(q, ANSWER_INSTRUCTION) for q in questions]
    caches, finals = {}, {}
    for name, method in (("vanilla", Vanilla()), ("tokencarve", TokenCarve(32))):
        context = PruneContext(questions=questions, model=tiny.model, lm=tiny)
        state = build_inputs(tiny, prompts, encode_images(tiny, method, to_model(tiny, pixels, context), context))
        caches[name] = new_cache(tiny)
        finals[name], counts, groups = prefill_states(tiny, state, method, context, caches[name])
    kept_slots = finals["tokencarve"].source_index  # (B, L') slots of the uncut prompt
    assert [len(group.layers) for group in groups] == [2, 2] and counts[0].tolist() == [576, 576, 32, 32]
    for layer in range(4):
        assert caches["tokencarve"].layers[layer].keys.shape[2] == kept_slots.shape[1]
    for layer in range(2):
        for cut, full in ((caches["tokencarve"].layers[layer].keys, caches["vanilla"].layers[layer].keys),
                          (caches["tokencarve"].layers[layer].values, caches["vanilla"].layers[layer].values)):
            index = kept_slots[:, None, :, None].expand(-1, full.shape[1], -1, full.shape[-1])
            assert torch.equal(cut, torch.gather(full, 2, index))


def test_tokencarve_batched_with_padding_equals_one_prompt_at_a_time(tiny, random_images):
    batched = batched_equals_alone(tiny, lambda: TokenCarve(16), random_images)
    assert [row[:3] for row in batched.image_tokens_per_layer] == [[576, 576, 16]] * 2


# -------------------------------------------------------------------------------------------------- FlowCut


def test_flowcut_equals_the_official_code_on_recorded_inputs():
    """The released encoder (eager attention) on a seeded random tower of CLIP-L's depth and token count: the
    same patches survive every cut; LLaVA's features agree to rounding (SDPA here)."""
    from svdprune.pruning import PruneContext

    recorded = fixture("flowcut")
    assert recorded["official"]["commit"] == "a2ecd247cb3c605773ec317a0c246425b47abdbe"
    assert {192, 128, 64, 32, 16} <= {case["budget"] for case in recorded["cases"]}
    towers = {}
    for case in recorded["cases"]:
        seed = case["seed"]
        if seed not in towers:
            inputs = flowcut_inputs(seed)
            assert input_digest(*inputs) == recorded["input_sha256"][str(seed)], INPUTS_DIFFER
            towers[seed] = flowcut_tower(seed), inputs[0]
        tower, pixels = towers[seed]
        context = PruneContext(questions=None)
        with torch.no_grad():
            features = FlowCut(case["budget"]).encode(tower, pixels, -2, context)  # (1, budget, 64)
        assert context.stats["kept_indices"][0] == case["kept_patches"], (seed, case["budget"])
        cuts = [count for _, count in context.stats["flowcut_cuts"][0]]
        assert len(set(cuts)) > 2  # the entropy-adaptive cuts drop patches before the last layer
        torch.testing.assert_close(features[0].double().sum(dim=-1), torch.tensor(case["feature_sums"],
                                   dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_flowcut_at_576_is_the_unpruned_tower(tiny, random_images):
    from svdprune.prompts import preprocess_image
    from svdprune.pruning import PruneContext, Vanilla

    pixels = torch.stack([preprocess_image(img, tiny.image_size, tiny.image_mean, tiny.image_std)
                          for img in random_images[:2]])
    with torch.no_grad():
        full = Vanilla().encode(tiny.vision_tower, pixels, tiny.feature_layer, PruneContext(questions=None))
        flow = FlowCut(576).encode(tiny.vision_tower, pixels, tiny.feature_layer, PruneContext(questions=None))
    assert torch.equal(flow, full)


def test_flowcut_batched_equals_one_image_at_a_time(tiny, random_images):
    batched = batched_equals_alone(tiny, lambda: FlowCut(16), random_images)
    assert [row[0] for row in batched.image_tokens_per_layer] == [16, 16]


def test_flowcut_refuses_a_tower_without_a_layer_before_the_feature_layer():
    from svdprune.families.llava15 import build_tiny

    shallow = build_tiny(seed=0, vision_layers=2, text_layers=1)  # features = layer 0's output
    with pytest.raises(UserError, match="flowcut: the vision layer that produces LLaVA's features is layer 0"):
        FlowCut(16).check(shallow)
