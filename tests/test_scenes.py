"""eval/scenes.py: determinism, answers that follow from the scene, evidence that matches the pixels, the loader."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from eval.datasets import load_dataset
from eval.scenes import (ANSWERS, COLORS, COVER, GRID, PATCH, SIZE, evidence, object_mask, patches_of, records,
                         render, scene, scenes)
from svdprune.errors import UserError


def test_scenes_are_deterministic_and_splits_differ():
    a, b = scene("test", 7), scene("test", 7)
    assert a.objects == b.objects and a.questions == b.questions
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert scene("train", 7).objects != a.objects


def test_answers_follow_from_the_objects():
    for s in scenes("test", 60):
        objs = s.objects
        for kind, question, answer, idx in s.questions:
            assert answer in ANSWERS
            if kind == "color":
                assert answer == objs[idx[0]].color and question.endswith(f"the {objs[idx[0]].shape}?")
            elif kind == "shape":
                assert answer == objs[idx[0]].shape
            elif kind == "present":
                named = question[len("is there a "):-1]
                assert (answer == "yes") == any(o.name == named for o in objs)
            elif kind == "count":
                color = question.split()[2]
                assert int(answer) == sum(o.color == color for o in objs) == len(idx)
            else:
                first, second = objs[idx[0]], objs[idx[1]]
                axis = 0 if " left of " in question else 1
                assert (answer == "yes") == (first.center[axis] < second.center[axis])


def test_objects_do_not_overlap_and_evidence_is_where_the_colour_is():
    s = scene("test", 3)
    masks = np.stack([object_mask(o) for o in s.objects])
    assert masks.sum(0).max() == 1  # no two objects share a pixel
    pixels = np.asarray(render(s)).astype(int)
    for i, obj in enumerate(s.objects):
        patches = evidence(s, [i])
        assert patches
        colour = np.asarray(COLORS[obj.color])
        for p in patches:  # every evidence patch shows the object's colour (jitter <= 12 per channel)
            r, c = divmod(p, GRID)
            block = pixels[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
            assert (np.abs(block - colour).max(-1) <= 12).any()


def test_loader_records_evidence_and_types():
    ds = load_dataset(OmegaConf.create({"name": "scenes", "split": "test", "scenes": 5}))
    assert ds.name == "scenes" and ds.scorer == "gqa"
    assert {r.image_id for r in ds.records} == {f"test-{i}" for i in range(5)}
    first = ds.records[0]
    s = scene("test", 0)
    kind, question, answer, objs = s.questions[0]
    assert (first.question, first.answers, first.question_type) == (question, [answer], kind)
    assert first.extra["recorded"]["evidence"] == evidence(s, objs)
    assert first.image().size == (SIZE, SIZE)
    assert [r.question_id for r in ds.records] == [r.question_id for r in records("test", 5)]


@pytest.mark.parametrize("bad", [{"split": "val"}, {"scenes": 0}, {"scenes": "ten"}])
def test_bad_values_are_user_errors(bad):
    with pytest.raises(UserError):
        load_dataset(OmegaConf.create({"name": "scenes", "split": "test", "scenes": None, **bad}))


def test_patches_of_equals_the_full_canvas_mask():
    for s in scenes("train", 30):
        for obj in s.objects:
            share = object_mask(obj).reshape(GRID, PATCH, GRID, PATCH).mean((1, 3)).reshape(-1)
            assert patches_of(obj) == np.flatnonzero(share >= COVER).tolist()


def test_questions_do_not_depend_on_the_process_hash_seed():
    """The question set is the same in every process (a set's iteration order follows PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, json; from eval.scenes import scenes; "
            "print(hashlib.sha256(json.dumps([s.questions for s in scenes('test', 80)]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1
