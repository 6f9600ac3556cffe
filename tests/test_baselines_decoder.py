"""Decoder-side baselines (FastV, PyramidDrop, SparseVLM) on the tiny random LLaVA, real HF modules.

References are independent: HF's eager attention (``output_attentions``) for the scoring rows, a
brute-force top-k from it for the kept sets, the unpruned engine for keep-everything runs, and a full
uncached recomputation of the pruned sequence for the KV-cached decoding.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import DynamicCache

from baselines.attention import attention_rows, image_positions
from baselines.fastv import FastV
from baselines.pyramiddrop import PyramidDrop
from baselines.sparsevlm import SparseVLM, dpc_knn_merge
from svdprune.errors import UserError
from svdprune.families.llava15 import build_tiny
from svdprune.prompts import preprocess_image, vicuna_prompt
from svdprune.pruning import LayerView, PruneContext, TokenState, Vanilla, build_method
from svdprune.families import generate
from svdprune.surgery import _attention_mask, decode_step, prefill
from svdprune.families.llava15 import build_inputs, encode_images
from tests.conftest import QUESTIONS

INSTRUCTION = "Answer the question using a single word or phrase."
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are small: one intra-op thread is several times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_methods():
    """One instance of each method with a schedule that fits the 4-layer tiny model."""
    return {
        "fastv": FastV(64),
        "pyramiddrop": PyramidDrop(64, layers=[1, 2, 3], ratios=[0.5, 0.25, 0.1]),
        "sparsevlm": SparseVLM(64, layers=[1, 2], keep=[66, 30]),
    }


class Recorder:
    """Delegates to a method and keeps every TokenState it returns, by layer."""

    def __init__(self, method):
        self.method, self.kind, self.budget = method, method.kind, method.budget
        self.returned: dict[int, TokenState] = {}

    def encode(self, *args):
        return self.method.encode(*args)

    def check(self, lm):
        return self.method.check(lm)

    def reduce(self, features, context):
        return self.method.reduce(features, context)

    def after_layer(self, layer_idx, view):
        new_state = self.method.after_layer(layer_idx, view)
        if new_state is not None:
            self.returned[layer_idx] = new_state
        return new_state


class WithAppended(Recorder):
    """Applies a method's cut to the prompt part of a sequence whose last ``extra`` tokens were generated.

    The method sees exactly the view it would see on the prompt alone (causal attention: the prompt's
    hidden states do not depend on later tokens); the generated tokens are kept and placed where the
    engine's decoding places them: at the next positions after the last prompt token that survived.
    """

    def __init__(self, method, extra: int):
        super().__init__(method)
        self.extra = extra

    def after_layer(self, layer_idx, view):
        n = self.extra
        cut = lambda s: TokenState(s.hidden[:, :-n], s.position_ids[:, :-n], s.padding[:, :-n], s.is_image[:, :-n])
        cos, sin = view.position_embeddings
        prompt_view = LayerView(layer_idx=layer_idx, layer_input=view.layer_input[:, :-n], state=cut(view.state),
                                position_embeddings=(cos[:, :-n], sin[:, :-n]),
                                attention_mask=view.attention_mask[:, :, :-n, :-n], layers=view.layers,
                                rotary=view.rotary, context=view.context)
        new_prompt = self.method.after_layer(layer_idx, prompt_view)
        if new_prompt is None:
            return None
        state = view.state
        positions = new_prompt.position_ids[:, -1:] + 1 + torch.arange(n)[None]
        return TokenState(hidden=torch.cat([new_prompt.hidden, state.hidden[:, -n:]], 1),
                          position_ids=torch.cat([new_prompt.position_ids, positions], 1),
                          padding=torch.cat([new_prompt.padding, state.padding[:, -n:]], 1),
                          is_image=torch.cat([new_prompt.is_image, state.is_image[:, -n:]], 1))


def run(lm, method, questions, images, steps=6, seed=0):
    return generate(lm, method, questions, images, instruction=INSTRUCTION, max_new_tokens=steps, seed=seed)


def prompt_state(lm, method, questions, images, seed=0):
    context = PruneContext(questions=questions, seed=seed, model=lm.model, lm=lm)
    pixels = torch.stack([preprocess_image(img) for img in images])
    embeds = encode_images(lm, method, pixels, context)
    return build_inputs(lm, [vicuna_prompt(q, INSTRUCTION) for q in questions], embeds), context


@pytest.fixture(scope="module")
def eager(tiny):
    """The same weights with HF's eager attention (which can return attention weights)."""
    model = copy.deepcopy(tiny.model)
    model.model.language_model.config._attn_implementation = "eager"
    return model.model.language_model


def eager_forward(eager, state):
    with torch.no_grad():
        return eager(inputs_embeds=state.hidden, attention_mask=(~state.padding).long(),
                     position_ids=state.position_ids, output_attentions=True, output_hidden_states=True)


# ------------------------------------------------------------------ the recomputed attention row

@torch.no_grad()
def test_recomputed_rows_equal_eager_attention_weights(tiny, eager, random_images):
    questions = [QUESTIONS[3], QUESTIONS[2]]  # different lengths: row 1 is left-padded
    state, _ = prompt_state(tiny, Vanilla(), questions, random_images[:2])
    assert state.padding[1].any() and not state.padding[0].any()
    out = eager_forward(eager, state)
    llm = tiny.language_model
    mask = _attention_mask(state.padding)
    length = state.hidden.shape[1]
    first_real = int(state.padding[1].sum())
    rows = torch.tensor([[length - 1, length - 5, 40, 100]] * 2)
    rows[1, 2:] = torch.tensor([first_real, first_real + 300])
    for layer_idx, layer in enumerate(llm.layers):
        hidden = out.hidden_states[layer_idx]  # the layer's input
        cos_sin = llm.rotary_emb(hidden, state.position_ids)
        expected = torch.stack([out.attentions[layer_idx][b][:, rows[b]] for b in range(2)])  # (B, H, Q, L)
        for scale in ("multiply", "divide"):
            got = attention_rows(layer, hidden, cos_sin, mask, rows, scale=scale)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        # the rows really depend on RoPE and on the layer: a wrong position or layer is caught
        shifted = (cos_sin[0].roll(1, dims=1), cos_sin[1].roll(1, dims=1))
        assert not torch.allclose(attention_rows(layer, hidden, shifted, mask, rows), expected, atol=1e-4)


# ------------------------------------------------------------------ kept sets vs brute force from eager

def eager_topk(scores: torch.Tensor, image_pos: torch.Tensor, k: int) -> list[int]:
    return sorted(image_pos[scores[image_pos].topk(k).indices].tolist())


def kept_image_positions(state: TokenState, row: int = 0) -> list[int]:
    return state.position_ids[row][state.is_image[row]].tolist()


@torch.no_grad()
@pytest.mark.parametrize("agg_layer", [1, 2, 3])
def test_fastv_keeps_eager_topk_of_last_token(tiny, eager, random_images, agg_layer):
    question, image = QUESTIONS[0], random_images[0]
    state, _ = prompt_state(tiny, Vanilla(), [question], [image])
    attentions = eager_forward(eager, state).attentions
    image_pos = image_positions(state.is_image)[0]
    expected = eager_topk(attentions[agg_layer - 1][0].mean(0)[-1], image_pos, 64)

    recorder = Recorder(FastV(64, agg_layer=agg_layer))
    out = run(tiny, recorder, [question], [image], steps=2)
    (layer_idx, kept), = recorder.returned.items()
    assert layer_idx == agg_layer - 1
    assert kept_image_positions(kept) == expected  # original positions identify the original tokens
    text = state.position_ids[0][~state.is_image[0]].tolist()
    assert kept.position_ids[0][~kept.is_image[0]].tolist() == text  # all text kept, gapped positions
    assert out.image_tokens_per_layer[0] == [576] * agg_layer + [64] * (4 - agg_layer)


@torch.no_grad()
def test_pyramiddrop_first_stage_keeps_eager_topk_of_next_layer(tiny, eager, random_images):
    question, image = QUESTIONS[1], random_images[1]
    state, _ = prompt_state(tiny, Vanilla(), [question], [image])
    attentions = eager_forward(eager, state).attentions
    image_pos = image_positions(state.is_image)[0]
    expected = eager_topk(attentions[2][0].mean(0)[-1], image_pos, 288)  # stage layer 2 scores with layer 2

    recorder = Recorder(PyramidDrop(64, layers=[2, 3], ratios=[0.5, 0.25]))
    out = run(tiny, recorder, [question], [image], steps=2)
    first = recorder.returned[1]
    # positions are renumbered, so the kept tokens are identified by their hidden states (layer 1's
    # output, in original order): the i-th kept image token is the i-th of the expected set
    hidden_after_1 = eager_forward(eager, state).hidden_states[2][0]
    torch.testing.assert_close(first.hidden[0][first.is_image[0]], hidden_after_1[expected], rtol=1e-4, atol=1e-4)
    n_text = int((~state.is_image[0]).sum())
    assert first.position_ids[0].tolist() == list(range(n_text + 288))
    assert recorder.returned[2].position_ids[0].tolist() == list(range(n_text + 144))
    assert out.image_tokens_per_layer[0] == [576, 576, 288, 144]


def brute_force_raters(embeds: torch.Tensor, is_image: torch.Tensor) -> list[int]:
    image = embeds[is_image]
    start = int(is_image.nonzero().max()) + 1
    text = embeds[start:]
    relevance = torch.softmax(image @ text.T, dim=1).mean(0)
    return [start + j for j in range(len(relevance)) if relevance[j] > relevance.mean()]


@torch.no_grad()
def test_sparsevlm_first_stage_keeps_eager_rater_topk_and_recycles(tiny, eager, random_images):
    question, image = QUESTIONS[3], random_images[3]
    state, _ = prompt_state(tiny, Vanilla(), [question], [image])
    out_eager = eager_forward(eager, state)
    raters = brute_force_raters(state.hidden[0], state.is_image[0])
    assert 0 < len(raters) < int((~state.is_image[0]).sum())
    image_pos = image_positions(state.is_image)[0]
    relation = out_eager.attentions[1][0].mean(0)[raters][:, image_pos].mean(0)  # pruning layer 1
    expected = sorted(relation.topk(66).indices.tolist())
    layer_output = out_eager.hidden_states[2][0]

    recorder = Recorder(SparseVLM(64, layers=[1, 2], keep=[66, 30]))
    out = run(tiny, recorder, [question], [image], steps=2)
    first = recorder.returned[1]
    image_hidden = first.hidden[0][first.is_image[0]]
    n_clusters = int(int((576 - 66) * 0.3 + 1) / 10) + 1
    assert image_hidden.shape[0] == 66 + n_clusters == 82
    torch.testing.assert_close(image_hidden[:66], layer_output[image_pos[expected]], rtol=1e-4, atol=1e-4)
    # the clusters are means of deleted tokens' layer-1 outputs: each lies in their convex hull, so it is
    # not any kept token and its norm is at most the largest deleted norm
    deleted = [i for i in range(576) if i not in set(expected)]
    assert image_hidden[66:].norm(dim=-1).max() <= layer_output[image_pos[deleted]].norm(dim=-1).max() + 1e-4
    # the image span stays contiguous (clusters right after the kept tokens, before the text)
    image_slots = first.is_image[0].nonzero()[:, 0]
    assert (image_slots.diff() == 1).all()
    assert first.position_ids[0].tolist() == list(range(first.hidden.shape[1]))
    assert out.image_tokens_per_layer[0] == [576, 576, 82, 32]
    assert out.stats["image_tokens_mean_official"] == [(576 + 82 + 32 + 32) / 4]


def test_dpc_knn_merge_groups_separated_blobs():
    """Three far-apart blobs and three clusters: each cluster is exactly the mean of one blob."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [50.0] * 8, [-50.0] * 8])
    members = [c + 0.1 * torch.randn(n, 8, generator=generator) for c, n in zip(centres, (7, 5, 9))]
    x = torch.cat(members)[None]
    merged = dpc_knn_merge(x, 3, torch.rand(21, generator=generator))[0]
    means = torch.stack([m.mean(0) for m in members])
    matched = sorted(range(3), key=lambda i: int(torch.cdist(merged[i:i + 1], means).argmin()))
    torch.testing.assert_close(merged[matched], means, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ generation-level properties

def test_keeping_everything_reproduces_the_unpruned_model(tiny, random_images):
    vanilla = run(tiny, Vanilla(), QUESTIONS, random_images, steps=8)
    keep_all = [FastV(576), FastV(576, agg_layer=3),
                PyramidDrop(576, layers=[1, 2, 3], ratios=[1.0, 1.0, 1.0]),
                SparseVLM(64, layers=[], keep=[])]
    for method in keep_all:
        out = run(tiny, method, QUESTIONS, random_images, steps=8)
        assert out.token_ids == vanilla.token_ids, type(method).__name__
        assert out.image_tokens_per_layer == vanilla.image_tokens_per_layer


def test_pruning_changes_the_answers(tiny, random_images):
    vanilla = run(tiny, Vanilla(), QUESTIONS, random_images, steps=8)
    for name, method in tiny_methods().items():
        assert run(tiny, method, QUESTIONS, random_images, steps=8).token_ids != vanilla.token_ids, name


@torch.no_grad()
@pytest.mark.parametrize("name", ["fastv", "pyramiddrop", "sparsevlm"])
def test_cached_decoding_equals_uncached_recomputation(tiny, random_images, name):
    """Each step of KV-cached decoding (pruned caches, per-group positions) equals re-running prefill on
    prompt + generated tokens with the same cut applied to the prompt."""
    method = tiny_methods()[name]
    questions, images = QUESTIONS[3:4], random_images[3:4]
    state, context = prompt_state(tiny, method, questions, images)
    cache = DynamicCache(config=tiny.language_model.config)
    hidden, _, groups = prefill(tiny, state, method, context, cache)
    assert len(groups) > 1
    cached, generated = [hidden], []
    for step in range(4):
        token = tiny.model.lm_head(hidden).argmax(-1)
        generated.append(token)
        hidden = decode_step(tiny, token, step, groups, cache)
        cached.append(hidden)
    for steps in range(1, 5):
        ids = torch.stack(generated[:steps], dim=1)  # (1, steps)
        full, full_context = prompt_state(tiny, method, questions, images)
        appended = TokenState(
            hidden=torch.cat([full.hidden, tiny.language_model.embed_tokens(ids)], 1),
            position_ids=torch.cat([full.position_ids, full.position_ids[:, -1:] + 1 + torch.arange(steps)[None]], 1),
            padding=torch.cat([full.padding, torch.zeros_like(ids, dtype=torch.bool)], 1),
            is_image=torch.cat([full.is_image, torch.zeros_like(ids, dtype=torch.bool)], 1))
        recomputed, _, _ = prefill(tiny, appended, WithAppended(method, steps), full_context,
                                   DynamicCache(config=tiny.language_model.config))
        torch.testing.assert_close(recomputed, cached[steps], rtol=1e-4, atol=1e-4)
        assert tiny.model.lm_head(recomputed).argmax(-1).item() == tiny.model.lm_head(cached[steps]).argmax(-1).item()


@pytest.mark.parametrize("name", ["fastv", "pyramiddrop", "sparsevlm"])
def test_batch_of_four_equals_batch_of_one(tiny, random_images, name):
    batched = run(tiny, tiny_methods()[name], QUESTIONS, random_images)
    for i in range(4):
        single = run(tiny, tiny_methods()[name], QUESTIONS[i:i + 1], random_images[i:i + 1])
        assert single.token_ids[0] == batched.token_ids[i], f"row {i}"
        assert single.image_tokens_per_layer[0] == batched.image_tokens_per_layer[i]
        assert {k: v[0] for k, v in single.stats.items()} == {k: v[i] for k, v in batched.stats.items()}


# ------------------------------------------------------------------ schedules from the configs

def config_params(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    return OmegaConf.to_container(cfg.params, resolve=True)


def official_average(layers: list[int], counts_after: list[int], n_layers: int = 32, start: int = 576) -> float:
    """SparseVLM's logged average: a pruning layer counts at its post-prune size."""
    per_layer, current = [], start
    for layer in range(n_layers):
        if layer in layers:
            current = counts_after[layers.index(layer)]
        per_layer.append(current)
    return sum(per_layer) / n_layers


@pytest.fixture(scope="module")
def deep():
    """A 32-layer tiny model: LLaVA-1.5-7B's depth, so the published schedules apply unchanged."""
    return build_tiny(seed=1, vision_layers=3, text_layers=32)


def test_config_schedules_give_documented_counts(deep, random_images):
    """Per-layer image-token counts of every method at every budget, on a 32-layer model."""
    question, image = QUESTIONS[:1], random_images[:1]
    pdrop_keeps = {192: [322, 180, 101], 128: [242, 102, 42], 64: [111, 21, 4], 32: [32, 1, 0], 16: [16, 0, 0]}
    pdrop_means = {192: 191.875, 128: 127.875, 64: 64.0625, 32: 42.25, 16: 39.0}
    sparse_after = {192: [309, 204, 113], 128: [312, 117, 39], 64: [82, 32, 18], 32: [49, 17, 9], 16: [33, 8, 5]}
    sparse_official = {192: 192.03125, 128: 128.625, 64: 64.8125, 32: 51.6875, 16: 45.03125}
    for budget in (192, 128, 64, 32, 16):
        fastv = run(deep, build_method("fastv", budget, config_params("fastv")), question, image, steps=1)
        assert fastv.image_tokens_per_layer[0] == [576] * 2 + [budget] * 30

        pdrop = build_method("pyramiddrop", budget, config_params("pyramiddrop"))
        assert pdrop.layers == [2, 8, 16] and pdrop.keep_counts() == pdrop_keeps[budget]
        counts = run(deep, pdrop, question, image, steps=1).image_tokens_per_layer[0]
        a, b, c = pdrop_keeps[budget]
        assert counts == [576] * 2 + [a] * 6 + [b] * 8 + [c] * 16
        assert sum(counts) / 32 == pdrop_means[budget]
        if budget in (32, 16):
            assert a == budget  # budget = tokens after the first stage

        sparse = run(deep, build_method("sparsevlm", budget, config_params("sparsevlm")), question, image, steps=1)
        a, b, c = sparse_after[budget]
        assert sparse.image_tokens_per_layer[0] == [576] * 3 + [a] * 4 + [b] * 9 + [c] * 16  # as each layer saw
        assert sparse.stats["image_tokens_mean_official"] == [sparse_official[budget]]
        assert official_average([2, 6, 15], sparse_after[budget]) == sparse_official[budget]


def test_stages_may_drop_every_image_token_in_a_batch(deep, random_images):
    """PyramidDrop at budget 16 keeps [16, 0, 0]: later layers see no image token, in every row."""
    method = build_method("pyramiddrop", 16, config_params("pyramiddrop"))
    batched = run(deep, method, QUESTIONS, random_images, steps=3)
    assert batched.image_tokens_per_layer == [[576] * 2 + [16] * 6 + [0] * 24] * 4
    single = run(deep, method, QUESTIONS[2:3], random_images[2:3], steps=3)
    assert single.token_ids[0] == batched.token_ids[2]


def test_schedules_that_do_not_fit_the_model_are_clear_errors(tiny, random_images):
    cases = {"pyramiddrop": build_method("pyramiddrop", 64, config_params("pyramiddrop")),
             "sparsevlm": build_method("sparsevlm", 64, config_params("sparsevlm")),
             "fastv": FastV(64, agg_layer=4)}
    for name, method in cases.items():
        with pytest.raises(UserError, match=f"{name}: .*LLM has 4 layers"):
            run(tiny, method, QUESTIONS[:1], random_images[:1], steps=1)


@pytest.mark.parametrize("name,match", [
    ("pyramiddrop", "budget=100 has no schedule; allowed budgets: 16, 32, 64, 128, 192"),
    ("sparsevlm", "budget=100 has no keep counts; allowed budgets: 16, 32, 64, 128, 192"),
])
def test_budgets_without_a_schedule_are_refused_on_llava(tiny, name, match):
    """LLaVA runs the table as it is; a budget without an entry is refused before anything runs (Qwen2.5-VL fits the
    schedule per image instead: tests/test_qwen25vl.py)."""
    from svdprune.families import check_method, family

    method = build_method(name, 100, config_params(name))
    with pytest.raises(UserError, match=match):
        check_method(tiny, method)
    with pytest.raises(UserError, match=match):  # what the runner asks before loading the model
        method.check_family(family("llava15").CAPABILITIES)
    method.check_family(family("qwen25vl").CAPABILITIES)


def test_pyramiddrop_fit_rule_gives_the_table_on_llava_geometry():
    from baselines.pyramiddrop import fit_keep_counts

    for budget in (192, 128, 64, 32, 16):
        method = build_method("pyramiddrop", budget, config_params("pyramiddrop"))
        assert fit_keep_counts(576, 32, method.layers, budget) == method.keep_counts()
    assert fit_keep_counts(900, 28, [2, 8, 16], 64) == [64, 4, 0]  # out of reach (2 x 900 / 28 > 64): first stage


def test_sparsevlm_official_mean_and_fit():
    from baselines.sparsevlm import fit_keep, official_mean

    table = {int(k): v for k, v in config_params("sparsevlm")["keep_counts"].items()}
    means = {budget: official_mean(576, 32, [2, 6, 15], table[budget]) for budget in table}
    assert means == {192: 192.03125, 128: 128.625, 64: 64.8125, 32: 51.6875, 16: 45.03125}  # the official log's rule
    fitted = {budget: fit_keep(576, 32, [2, 6, 15], budget, table) for budget in table}
    # 192, 32, 16: the table; 128 and 64: closer averages than the hand-set official counts (127.97, 63.75)
    assert fitted == {192: [300, 200, 110], 128: [300, 109, 36], 64: [64, 29, 16], 32: [32, 15, 8], 16: [16, 7, 4]}


@pytest.mark.parametrize("name,budget,params,match", [
    ("fastv", 0, None, "budget=0"),
    ("fastv", 64, {"agg_layer": 0}, "agg_layer=0"),
    ("pyramiddrop", 64, {"layers": [8, 4], "ratios": [0.5, 0.25]}, "strictly increasing"),
    ("pyramiddrop", 64, {"layers": [8, 16], "ratios": [0.25, 0.5]}, "non-increasing"),
    ("pyramiddrop", 64, {"layers": [8, 16], "ratios": [0.5]}, "one keep ratio per layer"),
    ("pyramiddrop", 64, {"layers": [8], "ratios": [1.5]}, r"ratios\[0\]=1.5"),
    ("sparsevlm", 64, {"keep": [10, 5]}, "one count per pruning layer"),
    ("sparsevlm", 64, {"recycle": "yes"}, "recycle='yes'"),
    ("sparsevlm", 64, {"layers": [6, 2]}, "strictly increasing"),
])
def test_bad_parameters_are_user_errors(name, budget, params, match):
    merged = config_params(name)
    merged.update(params or {})
    with pytest.raises(UserError, match=match):
        build_method(name, budget, merged)
