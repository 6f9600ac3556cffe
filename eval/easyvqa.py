"""easy-VQA (https://github.com/vzhou842/easy-VQA), read from the installed ``easy-vqa`` PyPI package.

4,000 train / 1,000 test images (64 x 64 PNG, one coloured shape each), 38,575 / 9,673 questions,
13 answers. No download: the package ships the data. Order: the package's question order
(``get_train_questions`` / ``get_test_questions``); question ids are ``<split>-<index in that order>``.
Question types come from the question text: "shape", "color", "yes/no".
Scoring: exact match (the ``gqa`` scorer: one single-word reference answer per question).
"""
from __future__ import annotations

from collections import Counter

import re

from svdprune.errors import UserError

from .datasets import Dataset, Record

SPLITS = {"train": (38575, 4000), "test": (9673, 1000)}
SHAPES = ("circle", "rectangle", "triangle")


def question_type(answer: str) -> str:
    """easy-VQA has three kinds of question, told apart by their answer vocabulary."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in SHAPES else "color"


def yes_no_case(question: str, answer: str) -> tuple[str, bool] | None:
    """("shape" | "color", whether the named thing is in the image) of a yes/no question; None otherwise.
    "is there not a red shape?" -> "no" means a red shape is there."""
    if answer not in ("yes", "no"):
        return None
    words = re.findall(r"\w+", question.lower())
    present = (answer == "yes") != ("not" in words or "no" in words)
    return ("shape" if any(w in SHAPES for w in words) else "color"), present


def case(question: str, answer: str) -> str:
    """The finer question kind the mini model card reports: "shape", "color", or for yes/no questions
    "<shape|color> present" / "<shape|color> absent" (whether the thing named is in the image)."""
    yes_no = yes_no_case(question, answer)
    return question_type(answer) if yes_no is None else f"{yes_no[0]} {'present' if yes_no[1] else 'absent'}"


def load(cfg) -> Dataset:
    try:
        import easy_vqa
    except ImportError:
        raise UserError("dataset=easyvqa needs the easy-vqa package: pip install easy-vqa") from None
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise UserError(f"dataset.split={split!r}; allowed: {', '.join(SPLITS)}")
    questions, answers, image_ids = (easy_vqa.get_train_questions() if split == "train"
                                     else easy_vqa.get_test_questions())
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    expected_questions, expected_images = SPLITS[split]
    if len(questions) != expected_questions or len(paths) != expected_images:
        raise UserError(f"easy-vqa {split}: found {len(questions)} questions / {len(paths)} images, expected "
                        f"{expected_questions} / {expected_images}; reinstall easy-vqa==1.0")
    records = [
        Record(question_id=f"{split}-{i}", question=q, answers=[a], image=paths[image_id],
               image_id=str(image_id), question_type=question_type(a))
        for i, (q, a, image_id) in enumerate(zip(questions, answers, image_ids))
    ]
    return Dataset(name="easyvqa", records=records, scorer="gqa", revision="easy-vqa==1.0",
                   info={"split": split})


def case_accuracy(rows: list[dict], questions: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{case: (correct, total)} over prediction rows (answers[0] is the reference; :func:`case` splits them); questions
    maps question_id -> question text. scripts/mini_cases.py prints it; the mini model card reports it."""
    correct, total = Counter(), Counter()
    for row in rows:
        kind = case(questions[row["question_id"]], row["answers"][0])
        total[kind] += 1
        correct[kind] += row["prediction"] == row["answers"][0]
    return {kind: (correct[kind], total[kind]) for kind in sorted(total)}

