"""training/scenes.py (scripts/train_scenes.py): the shared-prefix loss equals train_mini's full-row loss, scene targets match the
scene, and the normalisation equals the project's preprocessing."""
from dataclasses import replace

import numpy as np
import torch

from eval.scenes import COLORS, GRID, PATCH, SHAPES, SIZE, Scene, patches_of, render, scene
from svdprune.prompts import preprocess_image

from training import mini as train_mini
from training import scenes as train_scenes


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
    t = train_scenes.scene_targets(s)
    for i, obj in enumerate(s.objects):
        for p in patches_of(obj):  # evidence patches carry their object's classes and index
            assert t["color"][p] == 1 + list(COLORS).index(obj.color)
            assert t["shape"][p] == 1 + SHAPES.index(obj.shape)
            assert t["object"][p] == i
        assert t["object_shape"][i] == SHAPES.index(obj.shape)
        assert t["pairs"][train_scenes.PAIRS.index((obj.color, obj.shape))] == 1
        cx, cy = obj.center  # the centre patch is one of the object's patches
        assert t["centre"][int(cy) // PATCH * GRID + int(cx) // PATCH] == 1
    assert t["centre"].sum() == len(s.objects)
    assert (t["object_shape"][len(s.objects):] == train_scenes.IGNORE).all()
    assert t["pairs"].sum() == len({(o.color, o.shape) for o in s.objects})
    assert (t["color"] == 0).sum() > 400 and (t["object"] == -1).sum() == (t["color"] <= 0).sum()


def test_object_means_average_each_objects_patches():
    t = train_scenes.stack_targets([scene("train", 3), scene("train", 4)])
    features = torch.randn(2, GRID * GRID, 5)
    means = train_scenes.object_means(features, t["object"])  # (2, MAX_OBJECTS, 5)
    for b in range(2):
        for i in range(train_scenes.MAX_OBJECTS):
            rows = features[b][t["object"][b] == i]
            expected = rows.mean(0) if len(rows) else torch.zeros(5)
            torch.testing.assert_close(means[b, i], expected)


def test_flipped_targets_follow_the_flipped_image():
    s = scene("train", 5)
    t = train_scenes.stack_targets([s])
    flipped = Scene(index=s.index, split=s.split, background_seed=s.background_seed,
                    objects=[replace(o, x=SIZE - o.x - o.size) for o in s.objects])
    # PIL draws a mirrored shape one pixel apart at most: compare the colour labels where both are certain
    mirrored = train_scenes.flip_patches(t["color"])[0]
    direct = torch.from_numpy(train_scenes.scene_targets(flipped)["color"])
    certain = (mirrored != train_scenes.IGNORE) & (direct != train_scenes.IGNORE)
    assert (mirrored[certain] == direct[certain]).float().mean() > 0.99
    assert torch.equal(train_scenes.flip_patches(t["centre"])[0].nonzero().flatten().sort().values,
                       torch.from_numpy(train_scenes.scene_targets(flipped)["centre"]).nonzero().flatten().sort().values)


def test_clip_tokenizer_ends_every_text_with_end_of_text():
    tokenizer = train_scenes.build_clip_word_tokenizer(["what color is the circle?", "a red circle, a blue square"])
    ids = tokenizer(["a red circle, a blue square", "what color is the circle?"], padding=True)["input_ids"]
    eos = tokenizer.eos_token_id
    assert eos not in (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    for row in ids:
        assert row[0] == tokenizer.bos_token_id and row.count(eos) == 1
    assert tokenizer.unk_token_id not in ids[0]


def test_normalise_equals_preprocess_image():
    image = render(scene("test", 0))
    x = train_scenes.normalise(torch.from_numpy(np.array(image))[None])
    torch.testing.assert_close(x[0], preprocess_image(image), rtol=0, atol=1e-6)
