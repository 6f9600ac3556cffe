"""scripts/train_scenes.py: the shared-prefix loss equals train_mini's full-row loss, scene targets match the
scene, and the normalisation equals the project's preprocessing."""
import sys
from pathlib import Path

import numpy as np
import torch

from eval.scenes import COLORS, SHAPES, patches_of, render, scene
from svdprune.prompts import preprocess_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_mini  # noqa: E402
import train_scenes  # noqa: E402


def _tiny(tokenizer):
    torch.manual_seed(0)
    return train_mini.build_model(tokenizer, 32, 1, 32, 2, tie_embeddings=True).eval()


def test_shared_prefix_loss_equals_full_rows():
    questions = ["what color is the circle?", "is there a red square?", "how many blue objects are there?"]
    tokenizer = train_mini.build_word_tokenizer(train_scenes.vocabulary_texts([], []) + questions)
    model = _tiny(tokenizer)
    k, per_image = 5, 3
    image_token = model.config.image_token_id
    image_embeds = torch.randn(2, k, 32)
    split = [train_scenes.split_prompt(q, tokenizer, image_token, k) for q in questions * 2]
    answers = [[tokenizer.convert_tokens_to_ids(a), tokenizer.eos_token_id] for a in ("red", "yes", "2") * 2]
    with torch.no_grad():
        shared = train_scenes.shared_prefix_loss(model, split[0][0], [s for _, s in split], answers, image_embeds,
                                                 per_image)
        full = train_mini.answer_loss(model, [p + s for p, s in split], answers,
                                      image_embeds.repeat_interleave(per_image, 0), tokenizer.pad_token_id)
    assert all(p == split[0][0] for p, _ in split)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)


def test_scene_targets_follow_the_objects():
    s = scene("train", 3)
    color_t, shape_t, pairs = train_scenes.scene_targets(s)
    for obj in s.objects:
        for p in patches_of(obj):  # evidence patches carry their object's classes
            assert color_t[p] == 1 + list(COLORS).index(obj.color)
            assert shape_t[p] == 1 + SHAPES.index(obj.shape)
        assert pairs[train_scenes.PAIRS.index((obj.color, obj.shape))] == 1
    assert pairs.sum() == len({(o.color, o.shape) for o in s.objects})
    assert (color_t == 0).sum() > 400  # mostly background


def test_normalise_equals_preprocess_image():
    image = render(scene("test", 0))
    x = train_scenes.normalise(torch.from_numpy(np.array(image))[None])
    torch.testing.assert_close(x[0], preprocess_image(image), rtol=0, atol=1e-6)
