"""Tiny GQA / TextVQA copies in every on-disk format the loaders read, written by the tests themselves.

Each image is a small solid-colour PNG whose colour encodes its id, so a test can check that every
question got its own image back through the loader (``COLOURS[image_id]``).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

INSTRUCTION = "Answer the question using a single word or phrase."

GQA_IMAGES = ["n100", "n200", "n300"]
GQA_QUESTIONS = [  # (id, imageId, question, answer, structural, semantic, detailed)
    ("201", "n100", "Is the sky dark?", "yes", "verify", "attr", "verifyAttr"),
    ("202", "n100", "What is on the table?", "cup", "query", "rel", "relS"),
    ("203", "n200", "Which color is the car?", "red", "query", "attr", "chooseAttr"),
    ("204", "n300", "Are there both cups and plates?", "no", "logical", "obj", "logicAnd"),
    ("205", "n200", "Who is wearing the shirt?", "man", "query", "rel", "relS"),
    ("206", "n300", "Is the plate to the left of the cup?", "yes", "verify", "rel", "verifyRel"),
    ("207", "n100", "What kind of furniture is it?", "table", "query", "cat", "categoryThis"),
]

TEXTVQA_IMAGES = ["003a8ae2ef43b901", "b9dc400eb20bad64", "2b538a43dd933fc1"]
TEXTVQA_QUESTIONS = [  # (question_id, image_id, question, answers, ocr_tokens)
    (34602, "003a8ae2ef43b901", "what is the brand of this camera?",
     ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota", "dakota digital",
      "dakota digital", "dakota", "dakota"], ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"]),
    (34603, "003a8ae2ef43b901", "what does the small white text spell?",
     ["copenhagen"] * 5 + ["thursday"] + ["copenhagen"] * 4, ["DAKOTA", "DIGITAL"]),
    (34604, "b9dc400eb20bad64", "what kind of beer is this?",
     ["ale"] * 6 + ["stone"] * 4, []),
    (34605, "2b538a43dd933fc1", "what number is on the jersey?",
     ["two"] * 3 + ["2"] * 7, ["23", "NIKE"]),
]


def colour(image_id: str) -> tuple[int, int, int]:
    value = sum(ord(c) * (i + 1) for i, c in enumerate(image_id))
    return (value % 251, (value // 7) % 241, (value // 13) % 239)


def png_bytes(image_id: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), colour(image_id)).save(buffer, format="PNG")
    return buffer.getvalue()


def config(name: str, **fields):
    """A dataset config as Hydra would pass it: the repo's yaml, overridden, in struct mode."""
    base = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "dataset" / f"{name}.yaml")
    cfg = OmegaConf.merge(base, fields)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _datasets():
    import datasets

    datasets.disable_progress_bars()
    return datasets


# ----------------------------------------------------------------------------------------------- GQA


def gqa_rows(questions=GQA_QUESTIONS) -> dict:
    rows = {k: [] for k in ("id", "imageId", "question", "answer", "fullAnswer", "isBalanced", "groups",
                            "semantic", "types")}
    for qid, image_id, question, answer, structural, semantic, detailed in questions:
        rows["id"].append(qid)
        rows["imageId"].append(image_id)
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["fullAnswer"].append(f"The answer is {answer}.")
        rows["isBalanced"].append(True)
        rows["groups"].append({"global": None, "local": f"10q-{qid}"})
        rows["semantic"].append([{"operation": "select", "argument": "thing (1)", "dependencies": []}])
        rows["types"].append({"structural": structural, "semantic": semantic, "detailed": detailed})
    return rows


def gqa_image_rows(image_ids=GQA_IMAGES, corrupt: str | None = None) -> dict:
    return {"id": list(image_ids),
            "image": [{"bytes": b"not an image" if i == corrupt else png_bytes(i), "path": None} for i in image_ids]}


def _image_features(datasets):
    return datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})


def write_gqa_hf(root: Path, fmt: str = "save_to_disk", split: str = "testdev", questions=GQA_QUESTIONS,
                 image_ids=GQA_IMAGES, corrupt: str | None = None, drop_column: str | None = None) -> Path:
    """lmms-lab/GQA's two testdev-balanced subsets under ``root`` in format ``fmt``:
    ``save_to_disk`` (Dataset), ``dict`` (DatasetDict with ``split``), or ``parquet`` (hub file names,
    several row groups per file)."""
    datasets = _datasets()
    rows = gqa_rows(questions)
    if drop_column:
        rows.pop(drop_column)
    tables = {
        "testdev_balanced_instructions": datasets.Dataset.from_dict(rows, split=split),
        "testdev_balanced_images": datasets.Dataset.from_dict(gqa_image_rows(image_ids, corrupt),
                                                              features=_image_features(datasets), split=split),
    }
    for subset, table in tables.items():
        folder = root / subset
        if fmt == "save_to_disk":
            table.save_to_disk(str(folder))
        elif fmt == "dict":
            datasets.DatasetDict({split: table}).save_to_disk(str(folder))
        elif fmt == "parquet":
            folder.mkdir(parents=True)
            table.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"), batch_size=2)
        else:
            raise ValueError(fmt)
    return root


def write_gqa_llava(root: Path, questions=GQA_QUESTIONS, image_ids=GQA_IMAGES) -> Path:
    """LLaVA's playground/data/eval/gqa: question JSONL (instruction inside ``text``), GQA's
    testdev_balanced_questions.json, data/images/<imageId>.jpg (PNG bytes; PIL reads by content)."""
    (root / "data" / "images").mkdir(parents=True)
    with (root / "llava_gqa_testdev_balanced.jsonl").open("w") as f:
        for qid, image_id, question, *_ in questions:
            f.write(json.dumps({"question_id": qid, "image": f"{image_id}.jpg",
                                "text": f"{question}\n{INSTRUCTION}", "category": "default"}) + "\n")
    rows = gqa_rows(questions)
    annotations = {}
    for i, qid in enumerate(rows["id"]):
        annotations[qid] = {k: rows[k][i] for k in rows if k != "id"}
    # GQA's file is a dict in its own order (not the JSONL's): reverse it to show the JSONL order wins
    annotations = dict(reversed(list(annotations.items())))
    (root / "data" / "testdev_balanced_questions.json").write_text(json.dumps(annotations))
    for image_id in image_ids:
        (root / "data" / "images" / f"{image_id}.jpg").write_bytes(png_bytes(image_id))
    return root


# ------------------------------------------------------------------------------------------- TextVQA


def textvqa_rows(questions=TEXTVQA_QUESTIONS, answers_override=None) -> dict:
    rows = {k: [] for k in ("image_id", "question_id", "question", "question_tokens", "image", "image_width",
                            "image_height", "flickr_original_url", "flickr_300k_url", "answers",
                            "image_classes", "set_name", "ocr_tokens")}
    for question_id, image_id, question, answers, tokens in questions:
        rows["image_id"].append(image_id)
        rows["question_id"].append(question_id)
        rows["question"].append(question)
        rows["question_tokens"].append(question.rstrip("?").split())
        rows["image"].append({"bytes": png_bytes(image_id), "path": None})
        rows["image_width"].append(6)
        rows["image_height"].append(4)
        rows["flickr_original_url"].append(f"https://example.invalid/{image_id}.jpg")
        rows["flickr_300k_url"].append(f"https://example.invalid/{image_id}_300k.jpg")
        rows["answers"].append(list(answers if answers_override is None else answers_override))
        rows["image_classes"].append(["Camera"])
        rows["set_name"].append("val")
        rows["ocr_tokens"].append(list(tokens))
    return rows


def _textvqa_features(datasets, with_ocr=True):
    features = {
        "image_id": datasets.Value("string"), "question_id": datasets.Value("int32"),
        "question": datasets.Value("string"), "question_tokens": datasets.List(datasets.Value("string")),
        "image": datasets.Image(), "image_width": datasets.Value("int32"), "image_height": datasets.Value("int32"),
        "flickr_original_url": datasets.Value("string"), "flickr_300k_url": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")), "image_classes": datasets.List(datasets.Value("string")),
        "set_name": datasets.Value("string"), "ocr_tokens": datasets.List(datasets.Value("string")),
    }
    if not with_ocr:
        features.pop("ocr_tokens")
    return datasets.Features(features)


def write_textvqa_hf(root: Path, fmt: str = "save_to_disk", split: str = "validation", questions=TEXTVQA_QUESTIONS,
                     answers_override=None, drop_column: str | None = None) -> Path:
    """lmms-lab/textvqa's split under ``root``: ``save_to_disk``, ``dict`` (DatasetDict) or ``parquet``
    (two shards as the hub names them, data/<split>-0000k-of-00002.parquet)."""
    datasets = _datasets()
    rows = textvqa_rows(questions, answers_override)
    if drop_column:
        rows.pop(drop_column)
    table = datasets.Dataset.from_dict(rows, features=_textvqa_features(datasets, drop_column != "ocr_tokens"),
                                       split=split)
    if fmt == "save_to_disk":
        table.save_to_disk(str(root))
    elif fmt == "dict":
        datasets.DatasetDict({split: table}).save_to_disk(str(root))
    elif fmt == "parquet":
        (root / "data").mkdir(parents=True)
        half = (len(table) + 1) // 2
        table.select(range(half)).to_parquet(str(root / "data" / f"{split}-00000-of-00002.parquet"), batch_size=1)
        table.select(range(half, len(table))).to_parquet(str(root / "data" / f"{split}-00001-of-00002.parquet"))
    else:
        raise ValueError(fmt)
    return root


def llava_textvqa_text(question: str, tokens: list[str]) -> str:
    """A line of LLaVA's llava_textvqa_val_v051_ocr.jsonl, spelled out by hand (not by the code under test)."""
    line = question[0].upper() + question[1:]
    if tokens:
        line += "\nReference OCR token: " + ", ".join(tokens)
    return line + "\n" + INSTRUCTION


def write_textvqa_llava(root: Path, questions=TEXTVQA_QUESTIONS, with_ocr: bool = True) -> Path:
    """LLaVA's playground/data/eval/textvqa: llava_textvqa_val_v051_ocr.jsonl (question_id = image id),
    TextVQA_0.5.1_val.json ({"data": [...]}) and train_images/<image_id>.jpg."""
    (root / "train_images").mkdir(parents=True)
    with (root / "llava_textvqa_val_v051_ocr.jsonl").open("w") as f:
        for _, image_id, question, _, tokens in questions:
            f.write(json.dumps({"question_id": image_id, "image": f"{image_id}.jpg",
                                "text": llava_textvqa_text(question, tokens if with_ocr else []),
                                "category": "default"}) + "\n")
    data = [{"question": q, "image_id": image_id, "image_classes": ["Camera"], "answers": answers,
             "question_tokens": q.split(), "question_id": qid, "set_name": "val"}
            for qid, image_id, q, answers, _ in questions]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa",
                                                             "dataset_version": "0.5.1", "data": data}))
    for image_id in {q[1] for q in questions}:
        (root / "train_images" / f"{image_id}.jpg").write_bytes(png_bytes(image_id))
    return root
