"""Compute counts: the paper's convention reproduces its Table 2, and the analytic count of the real
architecture equals torch's FLOP counter on the engine's own prefill (tiny model, CPU)."""
import dataclasses

import pytest
import torch

from svdprune import flops as F
from svdprune.prompts import preprocess_image
from svdprune.pruning import DecoderPruner, EncoderPruner, PruneContext, Vanilla
from svdprune.surgery import prefill
from svdprune.families.llava15 import build_inputs, encode_images
from tests.conftest import QUESTIONS

INSTRUCTION = "Answer the question using a single word or phrase."


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscription makes the tiny model 10x slower
    yield
    torch.set_num_threads(threads)


class KeepFirst(EncoderPruner):
    """Keeps the first k patch features (indexing only: no FLOPs of its own)."""

    def __init__(self, budget):
        self.budget = budget

    def reduce(self, features, context):
        return features[:, :self.budget]


class DropImageAfter(DecoderPruner):
    """After decoder layer ``layer``, keeps the first ``keep`` image tokens and every text token."""

    def __init__(self, layer, keep):
        self.layer, self.keep, self.budget = layer, keep, keep

    def after_layer(self, layer_idx, view):
        if layer_idx != self.layer:
            return None
        is_image = view.state.is_image[0]
        rank = torch.cumsum(is_image.long(), 0) - 1
        keep = torch.nonzero(~is_image | (rank < self.keep)).squeeze(-1)[None]
        return view.state.gather(keep)


def engine_prefill_flops(lm, method, questions, images):
    """torch's counter over the engine's prefill, up to the first token's logits (what generate() runs)."""
    from transformers import DynamicCache

    context = PruneContext(questions=questions)
    pixels = torch.stack([preprocess_image(img, lm.image_size, lm.image_mean, lm.image_std) for img in images])
    from svdprune.prompts import vicuna_prompt

    prompts = [vicuna_prompt(q, INSTRUCTION) for q in questions]
    counter = F.flop_counter()
    with torch.inference_mode(), counter:
        embeds = encode_images(lm, method, pixels, context)
        state = build_inputs(lm, prompts, embeds)
        last_hidden, counts, _ = prefill(lm, state, method, context, DynamicCache(config=lm.language_model.config))
        lm.model.lm_head(last_hidden)
    return counter.get_total_flops(), state, counts


def test_paper_convention_reproduces_table2():
    vanilla = F.paper_vision_macs() + F.paper_projector_macs(576) + F.paper_llm_macs([576 + 50] * 32)
    k16 = F.paper_vision_macs() + F.paper_projector_macs(16) + F.paper_llm_macs([16 + 50] * 32)
    assert vanilla == pytest.approx(3.456e12, rel=0.01)
    assert k16 == pytest.approx(0.524e12, rel=0.01)
    assert F.paper_vision_macs() == pytest.approx(190.6e9, rel=1e-3)
    assert F.paper_projector_macs(1) == pytest.approx(20.97e6, rel=1e-3)
    for k, (_, projector, llm, total, _) in F.PAPER_TABLE2.items():
        ours = F.paper_llm_macs([k + 50] * 32)
        assert ours == pytest.approx(llm * 1e12, rel=0.01), k
        assert F.paper_projector_macs(k) == pytest.approx(projector * 1e9, rel=0.01), k
    # SparseVLM's gated-MLP variant is 3ndm instead of 2ndm
    n = 626
    assert F.paper_layer_macs(n, 4096, 11008, "gated") - F.paper_layer_macs(n, 4096, 11008) == n * 4096 * 11008


def test_exact_count_equals_flop_counter_on_engine_unpruned(tiny, random_images):
    images, questions = random_images[:2], QUESTIONS[:2]
    measured, state, counts = engine_prefill_flops(tiny, Vanilla(), questions, images)
    g = F.Geometry.from_config(tiny.model.config)
    length = state.hidden.shape[1]  # padded length: the engine computes every slot
    expected = F.exact_prefill_flops([577] * g.vision_layers, None, 576, [length] * g.text_layers, g, batch=2)
    assert measured == expected["total"]
    assert counts.tolist() == [[576] * g.text_layers] * 2


def test_exact_count_equals_flop_counter_on_engine_encoder_pruned(tiny, random_images):
    image, question = random_images[:1], QUESTIONS[:1]
    measured, state, _ = engine_prefill_flops(tiny, KeepFirst(40), question, image)
    full, full_state, _ = engine_prefill_flops(tiny, Vanilla(), question, image)
    g = F.Geometry.from_config(tiny.model.config)
    assert state.hidden.shape[1] == full_state.hidden.shape[1] - 536
    expected = F.exact_prefill_flops([577] * g.vision_layers, None, 40, [state.hidden.shape[1]] * g.text_layers, g)
    assert measured == expected["total"] < full


def test_exact_count_equals_flop_counter_on_engine_decoder_pruned(tiny, random_images):
    image, question = random_images[:1], QUESTIONS[:1]
    measured, state, counts = engine_prefill_flops(tiny, DropImageAfter(layer=1, keep=10), question, image)
    g = F.Geometry.from_config(tiny.model.config)
    full = state.hidden.shape[1]
    per_layer = [full, full] + [full - 566] * (g.text_layers - 2)
    assert counts.tolist()[0] == [576, 576] + [10] * (g.text_layers - 2)
    expected = F.exact_prefill_flops([577] * g.vision_layers, None, 576, per_layer, g)
    assert measured == expected["total"]


def test_meta_replay_equals_analytic_with_uneven_layers_and_grouped_kv():
    """The replay used for the 7B table: vision attention and MLP see different counts (ToMe), LLM layers
    shrink (decoder-side), and K/V have fewer heads than Q."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2,
                              image_size=56, patch_size=14)
    text = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=99)
    config._attn_implementation = "sdpa"
    model = F.build_meta_llava(config)
    g = F.Geometry.from_config(config)
    assert g.num_patches == 16 and g.text_kv_heads == 2
    attn, mlp, llm = [17, 13, 9], [13, 9, 9], [40, 40, 25, 12]
    measured = F.count_prefill_flops(model, attn, mlp, 8, llm)
    assert measured == F.exact_prefill_flops(attn, mlp, 8, llm, g)
    assert measured["llm"] < F.exact_llm_flops(llm, dataclasses.replace(g, text_kv_heads=4))  # K/V: 2 heads


def test_meta_7b_vanilla_true_count():
    """The real 7B architecture: the gated MLP and the patch convolution put it above the paper's number."""
    model = F.build_meta_llava()
    assert F.Geometry.from_config(model.config) == F.LLAVA15_7B
    measured = F.count_prefill_flops(model, [577] * 24, None, 16, [66] * 32)
    assert measured == F.exact_prefill_flops([577] * 24, None, 16, [66] * 32)
    assert measured["vision"] / 2 == pytest.approx(190.96e9, rel=1e-3)
    assert measured["lm_head"] == 2 * 4096 * 32064


def test_svd_cost_and_decode_step():
    assert F.svd_macs(576, 1024, "uv") == (6 * 1024 * 576 ** 2 + 20 * 576 ** 3) / 2
    assert F.svd_macs(576, 1024, "u") < F.svd_macs(576, 1024, "uv")
    assert F.gram_eigh_macs(576, 1024) < F.svd_macs(576, 1024, "uv")
    g = F.LLAVA15_7B
    assert F.exact_decode_step_flops([100] * 32) == 32 * F.exact_llm_layer_flops(1, g, kv_len=100) + 2 * 4096 * 32064
