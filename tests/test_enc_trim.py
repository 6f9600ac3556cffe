"""TRIM (baselines/trim.py): a tiny CLIP checkpoint saved to disk and loaded the way users load theirs."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from baselines.trim import Trim
from svdprune.errors import UserError
from svdprune.models import build_tiny_clip
from svdprune.pruning import PruneContext, build_method
from svdprune.prompts import ANSWER_INSTRUCTION
from svdprune.families.llava15 import encode_images

QUESTIONS = ["What color is the shape?", "How many circles are there in the image?\nReference OCR token: A, b"]


@pytest.fixture(scope="module")
def clip_folder(tiny, tmp_path_factory):
    """A random CLIP whose vision side matches the tiny LLaVA tower (hidden 32, 336 px, patch 14), with a
    tokenizer that ends every text with an end-of-text token (as CLIP's does), saved with save_pretrained."""
    model, tokenizer = build_tiny_clip(tiny.vision_tower.config, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial post-LayerNorm so that the test sees whether it is applied
        model.vision_model.post_layernorm.weight.uniform_(0.5, 1.5, generator=generator)
        model.vision_model.post_layernorm.bias.uniform_(-0.5, 0.5, generator=generator)
    folder = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def features(tiny):
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return tiny.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]


def reference_trim(folder, features, questions, budget, sign=-1.0):
    """TRIM by its definition, loading the checkpoint independently: raw dot product of CLIP's projected
    patch embeddings with the projected text embedding, softmax(-s), keep the top budget - 1 in raster
    order, append the mean of the others."""
    clip = CLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    outputs, kept_all = [], []
    with torch.no_grad():
        for feats, question in zip(features, questions):
            ids = tokenizer([question + "\n" + ANSWER_INSTRUCTION], return_tensors="pt", truncation=True)
            text = clip.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output[0]
            image = clip.visual_projection(clip.vision_model.post_layernorm(feats))
            sims = [sign * float(image[j] @ text) for j in range(len(feats))]
            probs = torch.softmax(torch.tensor(sims, dtype=torch.float64), dim=0).tolist()
            order = sorted(range(len(feats)), key=lambda j: (-probs[j], j))
            kept = sorted(order[:budget - 1])
            others = [j for j in range(len(feats)) if j not in set(kept)]
            mean = sum(feats[j].double() for j in others) / len(others)
            outputs.append(torch.cat([feats[kept], mean[None].float()]))
            kept_all.append(kept)
    return torch.stack(outputs), kept_all


@pytest.mark.parametrize("budget", [64, 16])
def test_selection_matches_reference(clip_folder, features, budget):
    method = build_method("trim", budget, {"clip_path": str(clip_folder)})
    context = PruneContext(QUESTIONS, instruction=ANSWER_INSTRUCTION)
    got = method.reduce(features, context)
    want, kept = reference_trim(clip_folder, features, QUESTIONS, budget)
    assert context.stats["kept_indices"] == kept
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sign_option_and_question_dependence(clip_folder, features):
    official = Trim(budget=32, clip_path=str(clip_folder))
    similar = Trim(budget=32, clip_path=str(clip_folder), sign="similar")
    a, b = PruneContext(QUESTIONS, instruction=ANSWER_INSTRUCTION), PruneContext(QUESTIONS, instruction=ANSWER_INSTRUCTION)
    official.reduce(features, a)
    similar.reduce(features, b)
    _, kept = reference_trim(clip_folder, features, QUESTIONS, 32, sign=+1.0)
    assert b.stats["kept_indices"] == kept
    assert a.stats["kept_indices"] != b.stats["kept_indices"]
    swapped = PruneContext(QUESTIONS[::-1], instruction=ANSWER_INSTRUCTION)
    official.reduce(features, swapped)
    assert swapped.stats["kept_indices"] != a.stats["kept_indices"]  # the text matters


def test_every_budget_is_exact(clip_folder, features):
    for budget in (192, 128, 64, 32, 16, 1, 576):
        method = build_method("trim", budget, {"clip_path": str(clip_folder), "revision": None,
                                               "sign": "official", "text_suffix": "\n" + ANSWER_INSTRUCTION})
        assert method.reduce(features, PruneContext(QUESTIONS, instruction=ANSWER_INSTRUCTION)).shape[:2] == (2, budget)


def test_through_the_engine_deterministic(tiny, clip_folder):
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(8))
    method = build_method("trim", 16, {"clip_path": str(clip_folder)})

    def context():
        return PruneContext(QUESTIONS, model=tiny.model, lm=tiny, instruction=ANSWER_INSTRUCTION)

    out = encode_images(tiny, method, pixels, context())
    assert out.shape[:2] == (2, 16)
    again = encode_images(tiny, method, pixels, context())
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_unloadable_clip_path(tmp_path):
    with pytest.raises(UserError, match="clip_path"):
        Trim(budget=64, clip_path=str(tmp_path / "missing"))


@pytest.mark.parametrize("params", [{"sign": "negative"}, {"clip_path": ""}, {"text_suffix": 3}])
def test_bad_parameters(params, clip_folder):
    params = {"clip_path": str(clip_folder), **params}
    with pytest.raises(UserError):
        Trim(budget=64, **params)


@pytest.mark.parametrize("budget", [0, 577])
def test_impossible_budget(budget, clip_folder):
    with pytest.raises(UserError, match="budget"):
        Trim(budget=budget, clip_path=str(clip_folder))


def test_check_refuses_a_clip_of_another_width(tiny, clip_folder):
    from svdprune.families.llava15 import build_tiny

    method = Trim(budget=16, clip_path=str(clip_folder))
    method.check(tiny)  # vision width 32 = the tiny LLaVA tower's
    wider = build_tiny(seed=0, vision_hidden=48, vision_layers=2, text_layers=1)
    with pytest.raises(UserError, match="vision width 32"):
        method.check(wider)


def test_text_is_question_plus_the_datasets_instruction():
    method = Trim.__new__(Trim)  # texts() needs no CLIP weights
    method.text_suffix = None
    assert method.texts(["Q?"], ANSWER_INSTRUCTION) == ["Q?\n" + ANSWER_INSTRUCTION]
    assert method.texts(["Q?"], None) == ["Q?"]
    method.text_suffix = " custom"
    assert method.texts(["Q?"], ANSWER_INSTRUCTION) == ["Q? custom"]


def test_by_image_engine_cuts_per_question(tiny, clip_folder):
    """TRIM declares question_dependent: scheduled by image, the vision tower runs once per distinct image but
    the cut is made per question (two questions on one image keep different tokens), as the per-question path."""
    from PIL import Image

    from svdprune.prompts import preprocess_image
    from svdprune.families import generate, generate_by_image

    method = build_method("trim", 16, {"clip_path": str(clip_folder)})
    assert method.question_dependent
    rng = torch.Generator().manual_seed(9)
    images = [Image.fromarray(torch.randint(0, 256, (60, 90, 3), generator=rng, dtype=torch.uint8).numpy())
              for _ in range(2)]
    questions, keys = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]], [0, 0, 1]
    pixels = {k: preprocess_image(img) for k, img in enumerate(images)}
    passes = []
    hook = tiny.vision_tower.register_forward_hook(lambda m, args, out: passes.append(args[0].shape[0]))
    try:
        ours = generate_by_image(tiny, method, questions, keys, pixels, instruction=ANSWER_INSTRUCTION,
                                 max_new_tokens=4)
    finally:
        hook.remove()
    reference = generate(tiny, method, questions, [images[k] for k in keys], instruction=ANSWER_INSTRUCTION,
                         max_new_tokens=4)
    assert passes == [2]
    assert ours.stats["kept_indices"] == reference.stats["kept_indices"]
    assert ours.stats["kept_indices"][0] != ours.stats["kept_indices"][1]
    assert ours.token_ids == reference.token_ids
