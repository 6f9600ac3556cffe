"""training/mini.py (scripts/train_mini.py): labels read off the questions, patch coverage read off the pixels, token-count sampling,
and one end-to-end run of both stages on a few real easy-VQA images (a loadable LLaVA checkpoint comes out)."""
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from eval.easyvqa import SHAPES, case, yes_no_case

from training import mini as train_mini

ROOT = Path(__file__).resolve().parents[1]

COLORS = ["black", "blue", "brown", "gray", "green", "red", "teal", "yellow"]


def test_image_labels_from_every_kind_of_question():
    qa = [
        ("what shape is in the image?", "circle", 0),
        ("what color is the shape?", "red", 0),
        ("what is the blue shape?", "triangle", 1),  # shape from the answer, colour from the question
        ("is there a rectangle?", "yes", 2),
        ("is there not a green shape?", "no", 2),  # negated "no": present
        ("is there a circle?", "no", 3),
        ("does the image not contain a triangle?", "yes", 3),  # circle and triangle absent: rectangle
        ("is no red shape present?", "yes", 3),
        ("is there a gray shape in the image?", "no", 4),  # nothing decided
    ]
    questions, answers, images = zip(*qa)
    shape_of, color_of = train_mini.image_labels(questions, answers, images, COLORS)
    assert shape_of == {0: "circle", 1: "triangle", 2: "rectangle", 3: "rectangle"}
    assert color_of == {0: "red", 1: "blue", 2: "green"}


def test_labels_agree_with_every_train_answer():
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, images = easy_vqa.get_train_questions()
    shape_of, color_of = train_mini.image_labels(questions, answers, images, COLORS)
    assert len(shape_of) > 3800 and len(color_of) > 3700  # of 4,000 images
    for answer, image in zip(answers, images):
        if answer in SHAPES:
            assert shape_of[image] == answer
        elif answer in COLORS:
            assert color_of[image] == answer


def test_patch_coverage_of_a_drawn_square():
    image = Image.new("RGB", (64, 64), (240, 235, 250))
    # 64 px -> 336 px is x 5.25; patch (row 2..3, col 4..5) = input pixels [28, 56) x [56, 84) -> 64-px 5.33..16
    ImageDraw.Draw(image).rectangle([16, 8, 31, 23], fill=(255, 0, 0))  # x 16..31, y 8..23 inclusive
    coverage = train_mini.patch_coverage(image).view(24, 24)
    on = coverage > 0
    rows, cols = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
    # 336-px extent of the square: y [42, 126), x [84, 168): patch rows 3..8, cols 6..11 (nearest resize)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (3, 8, 6, 11)
    assert coverage[4:8, 7:11].eq(1).all()
    assert coverage.sum().item() == pytest.approx(16 * 16 * 5.25 ** 2 / 14 ** 2, rel=0.05)


def test_patch_targets():
    coverage = torch.tensor([[0.0, 0.1, 0.15, 1.0], [0.0, 0.5, 1.0, 0.0]])
    label = torch.tensor([2, train_mini.IGNORE])
    expected = torch.tensor([[0, -100, 3, 3], [0, -100, -100, 0]])
    assert torch.equal(train_mini.patch_targets(coverage, label), expected)


def test_token_count_sampling():
    rng = random.Random(0)
    counts = [train_mini.sample_token_count(rng, 0.3) for _ in range(4000)]
    assert min(counts) >= 8 and max(counts) == 576
    assert 0.27 < counts.count(576) / len(counts) < 0.33
    assert 0.32 < sum(c <= 68 for c in counts) / len(counts) < 0.38  # 0.7 x 1/2: median of log-uniform [8, 576] is 68


def test_two_stage_training_end_to_end(tmp_path):
    pytest.importorskip("easy_vqa")
    out = tmp_path / "mini"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_mini.py"), "--images", "6", "--vision-steps", "2",
                    "--vision-batch", "2", "--steps", "2", "--images-per-step", "2", "--questions-per-image", "2",
                    "--vision-hidden", "16", "--text-hidden", "16", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vision_config.image_size == 336 and model.config.vision_config.patch_size == 14
    assert tokenizer("is there a red circle?").input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids("triangle") != tokenizer.unk_token_id


def test_yes_no_balance():
    qa = [("is there a red shape?", "yes"), ("is there a blue shape?", "no"), ("is there a teal shape?", "no"),
          ("is no green shape present?", "yes"),  # absent
          ("is there not a circle?", "no"),  # present
          ("is there a triangle?", "no"), ("what color is the shape?", "red")]
    questions, answers = zip(*qa)
    assert [yes_no_case(q, a) for q, a in qa] == [
        ("color", True), ("color", False), ("color", False), ("color", False), ("shape", True), ("shape", False),
        None]
    # colour: 1 present vs 3 absent -> the present one weighs 3; shape: 1 vs 1
    assert train_mini.balanced_weights(questions, answers) == [3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [case(q, a) for q, a in qa] == ["color present", "color absent", "color absent", "color absent",
                                           "shape present", "shape absent", "color"]
    # present cases (of either kind) weigh ``weight``, everything else 1
    assert train_mini.present_weights(questions, answers, 4.0) == [4.0, 1.0, 1.0, 1.0, 4.0, 1.0, 1.0]


def test_continuation_from_a_checkpoint(tmp_path):
    """--init-from starts stage 2 from a whole checkpoint: with 0 steps the weights come back unchanged; a
    yes/no-only phase with tied embeddings then trains and saves a loadable model whose head is its embedding."""
    pytest.importorskip("easy_vqa")
    import torch
    from transformers import LlavaForConditionalGeneration

    def train(out, *extra):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train_mini.py"), "--images", "6", "--vision-batch",
                        "2", "--images-per-step", "2", "--questions-per-image", "2", "--vision-hidden", "16",
                        "--text-hidden", "16", "--out", str(out), *extra], check=True, cwd=ROOT, capture_output=True)
        return LlavaForConditionalGeneration.from_pretrained(out)

    first = train(tmp_path / "a", "--vision-steps", "2", "--steps", "2")
    same = train(tmp_path / "b", "--init-from", str(tmp_path / "a"), "--steps", "0")
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), same.state_dict().values()))
    import json

    history = json.loads((tmp_path / "b" / "training_log.json").read_text())
    assert [run["args"]["out"] for run in history["earlier_runs"]] == [str(tmp_path / "a")]
    tied = train(tmp_path / "c", "--vision-steps", "2", "--steps", "2", "--questions", "yes-no", "--present-weight",
                 "3", "--tie-embeddings")
    assert torch.equal(tied.lm_head.weight, tied.model.language_model.embed_tokens.weight)
