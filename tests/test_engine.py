"""The engine against HF's own LlavaForConditionalGeneration.generate, on the tiny random model."""
import pytest
import torch

from svdprune.prompts import preprocess_image, tokenizer_image_token, vicuna_prompt
from svdprune.pruning import Vanilla
from svdprune.families import generate
from svdprune.svd import SvdPrune, select_tokens
from tests.conftest import QUESTIONS

INSTRUCTION = "Answer the question using a single word or phrase."
STEPS = 12


def hf_generate(lm, question, image, steps=STEPS):
    ids = tokenizer_image_token(vicuna_prompt(question, INSTRUCTION), lm.tokenizer, lm.image_token_id, 576)
    pixels = preprocess_image(image)[None]
    with torch.no_grad():
        out = lm.model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, do_sample=False,
                                max_new_tokens=steps, eos_token_id=lm.tokenizer.eos_token_id)
    generated = out[0, len(ids):].tolist()
    return generated[: generated.index(lm.tokenizer.eos_token_id)] if lm.tokenizer.eos_token_id in generated else generated


def run(lm, method, questions=QUESTIONS, images=None, steps=STEPS):
    return generate(lm, method, questions, images, instruction=INSTRUCTION, max_new_tokens=steps)


def test_vanilla_batch_equals_hf_generate_per_question(tiny, random_images):
    ours = run(tiny, Vanilla(), images=random_images)
    for i, (question, image) in enumerate(zip(QUESTIONS, random_images)):
        assert ours.token_ids[i] == hf_generate(tiny, question, image), f"row {i}"
    assert all(counts == [576] * 4 for counts in ours.image_tokens_per_layer)


def test_svd_at_full_budget_reproduces_unpruned_model(tiny, random_images):
    assert run(tiny, SvdPrune(576), images=random_images).token_ids == run(tiny, Vanilla(), images=random_images).token_ids


def test_batch_of_four_equals_batch_of_one(tiny, random_images):
    batched = run(tiny, SvdPrune(32), images=random_images)
    for i in range(4):
        single = run(tiny, SvdPrune(32), questions=QUESTIONS[i:i + 1], images=random_images[i:i + 1])
        assert single.token_ids[0] == batched.token_ids[i]
        assert single.stats["kept_indices"][0] == batched.stats["kept_indices"][i]


def test_pruned_prompt_holds_only_kept_image_tokens(tiny, random_images):
    full = run(tiny, Vanilla(), images=random_images, steps=1)
    pruned = run(tiny, SvdPrune(16), images=random_images, steps=1)
    assert [n - 560 for n in full.prompt_lengths] == pruned.prompt_lengths
    assert all(counts == [16] * 4 for counts in pruned.image_tokens_per_layer)


def test_pruning_changes_answers_and_uses_the_selected_tokens(tiny, random_images):
    pruned = run(tiny, SvdPrune(16), images=random_images)
    assert pruned.token_ids != run(tiny, Vanilla(), images=random_images).token_ids
    # the engine keeps exactly select_tokens' indices, computed on layer -2 features without CLS
    pixels = torch.stack([preprocess_image(img) for img in random_images])
    with torch.no_grad():
        features = tiny.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert pruned.stats["kept_indices"] == select_tokens(features, 16, 0.9).tolist()


def test_hf_reference_with_same_selection_matches(tiny, random_images):
    """Feeding HF's model the kept features (via inputs_embeds) gives the engine's tokens."""
    image, question = random_images[0], QUESTIONS[0]
    ours = run(tiny, SvdPrune(16), questions=[question], images=[image])
    pixels = preprocess_image(image)[None]
    with torch.no_grad():
        features = tiny.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        keep = select_tokens(features, 16, 0.9)
        kept = torch.gather(features, 1, keep[..., None].expand(-1, -1, features.shape[-1]))
        ids = torch.tensor([tokenizer_image_token(vicuna_prompt(question, INSTRUCTION), tiny.tokenizer,
                                                  tiny.image_token_id, 16)])
        embeds = tiny.language_model.embed_tokens(ids)
        embeds[ids == tiny.image_token_id] = tiny.projector(kept)[0]
        out = tiny.model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=STEPS, eos_token_id=tiny.tokenizer.eos_token_id)
    reference = out[0].tolist()
    if tiny.tokenizer.eos_token_id in reference:
        reference = reference[: reference.index(tiny.tokenizer.eos_token_id)]
    assert ours.token_ids[0] == reference


@pytest.mark.parametrize("budget", [1, 575])
def test_extreme_budgets_run(tiny, random_images, budget):
    out = run(tiny, SvdPrune(budget), questions=QUESTIONS[:2], images=random_images[:2], steps=2)
    assert all(counts[0] == budget for counts in out.image_tokens_per_layer)
