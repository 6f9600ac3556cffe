"""The dataset interface: every benchmark yields :class:`Record` objects in a fixed order.

A dataset module exposes ``load(cfg) -> Dataset``. Loaders are looked up by ``cfg.name`` in
``LOADERS`` ("module:function"), so GQA / TextVQA / easy-VQA plug in without touching the runner.

The ``local`` format (also LLaVA's eval layout) is a folder with:
  questions.jsonl   one object per line: question_id, image (file name relative to the image folder),
                    question (or LLaVA's ``text``), answers (list) / answer (str) -- on every line, or on
                    none (an unscored run: predictions only, accuracy null) --
                    optional ocr_tokens (list), optional question_type
  images/           the image files (``image_folder`` overrides the location)
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, UnidentifiedImageError

from svdprune.errors import UserError
from svdprune.prompts import ANSWER_INSTRUCTION


@dataclass
class Record:
    """One question. ``question`` is the full question line the prompt carries (for TextVQA it already
    includes the OCR line); the answer instruction is appended by the prompt builder."""

    question_id: str
    question: str
    answers: list[str]
    image: str | Path | Callable[[], Image.Image]  # a file path, or a callable returning a PIL image
    image_id: str = ""
    ocr_tokens: list[str] | None = None
    question_type: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    records: list[Record]
    scorer: str  # name of a function in eval.scoring: "gqa" (exact match) or "vqa" (VQA accuracy)
    instruction: str | None = ANSWER_INSTRUCTION
    revision: str | None = None  # dataset version/revision, recorded in metrics.json
    info: dict = field(default_factory=dict)  # anything else metrics.json should carry (e.g. use_ocr)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def scored(self) -> bool:
        """Whether the questions carry reference answers (checked by :func:`check_references`)."""
        return any(r.answers for r in self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


# Raster formats only: Image.open would otherwise hand any file PIL recognises (PostScript/EPS to Ghostscript,
# and so on) to its decoder. Untrusted datasets are limited to these.
RASTER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class UnreadableImage(UserError):
    """An image of a question cannot be decoded (missing, truncated, not an allowed format, too large)."""

    def __init__(self, message: str, record: "Record"):
        super().__init__(message)
        self.record = record


def open_image(source) -> Image.Image:
    """``Image.open`` restricted to :data:`RASTER_FORMATS` (a path or a binary file object)."""
    return Image.open(source, formats=RASTER_FORMATS)


_IMAGE_ERRORS = (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError)


def load_image(record: Record) -> Image.Image:
    """The record's image as RGB; an unreadable or missing file is a one-line :class:`UnreadableImage`."""
    try:
        image = record.image() if callable(record.image) else open_image(record.image)
        image.load()
        return image.convert("RGB")
    except _IMAGE_ERRORS as exc:
        raise _unreadable(record, exc) from None


def check_images_readable(records: list[Record]) -> None:
    """Open the header of every distinct image file (cheap: no decoding), so that a missing, non-image or
    oversized file is reported before any result is written. Images held in memory (callables) are skipped.
    A file whose data is damaged after a valid header is only found when it is decoded (:func:`load_image`)."""
    seen = set()
    for record in records:
        if callable(record.image) or record.image in seen:
            continue
        seen.add(record.image)
        try:
            with open_image(record.image):
                pass
        except _IMAGE_ERRORS as exc:
            raise _unreadable(record, exc) from None


def _unreadable(record: Record, exc: Exception) -> UnreadableImage:
    where = record.image if not callable(record.image) else record.image_id
    if isinstance(exc, Image.DecompressionBombError):
        why = f"too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, PIL's decompression-bomb limit)"
    elif isinstance(exc, UnidentifiedImageError):
        why = f"not an image in an allowed format ({', '.join(RASTER_FORMATS)})"
    elif isinstance(exc, FileNotFoundError):
        why = "no such file"
    else:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        why = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return UnreadableImage(f"cannot read image {str(where)!r} of question {record.question_id!r}: {why}", record)


def read_jsonl(path: Path):
    """(line number, object) for each non-empty line; a bad line (not UTF-8, not JSON, not an object) is a
    UserError naming the file and line."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: not a JSON line ({exc})") from None
            if not isinstance(item, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object per line")
            yield line_no, item


def load_local(cfg) -> Dataset:
    """The local folder format described in the module docstring."""
    from omegaconf import OmegaConf

    if cfg.get("path") is None or (OmegaConf.is_config(cfg) and OmegaConf.is_missing(cfg, "path")):
        raise UserError(f"dataset={cfg.name} needs dataset.path=<folder with questions.jsonl and images/>")
    root = Path(cfg.path).expanduser()
    questions_file = root / cfg.get("questions_file", "questions.jsonl")
    if not root.is_dir():
        raise UserError(f"dataset.path={str(root)!r} does not exist; point it at a folder with questions.jsonl and images/")
    if not questions_file.is_file():
        raise UserError(f"no question file {str(questions_file)!r}; expected questions.jsonl (one JSON object per line)")
    image_folder = Path(cfg.get("image_folder") or root / "images").expanduser()
    if not image_folder.is_dir():
        raise UserError(f"image folder {str(image_folder)!r} does not exist; set dataset.image_folder")
    records = []
    for line_no, item in read_jsonl(questions_file):
        where = f"{questions_file}:{line_no}"
        missing = [k for k in ("question_id", "image") if k not in item] + \
            ([] if "question" in item or "text" in item else ["question (or text)"])
        if missing:
            raise UserError(f"{where}: bad question line (no {', '.join(missing)}); need question_id, image and "
                            "question (or text)")
        question = item["question"] if "question" in item else item["text"]
        _check_field(where, "question_id", item["question_id"], (str, int), "a string or an integer")
        _check_field(where, "image", item["image"], (str,), "a file name relative to the image folder")
        _check_field(where, "question" if "question" in item else "text", question, (str,), "a string", empty=True)
        if "answers" in item:
            answers = item["answers"]
            if not isinstance(answers, list) or not all(_is_answer(a) for a in answers):
                raise UserError(f"{where}: answers={answers!r}; allowed: a list of strings")
        else:
            answers = [item["answer"]] if "answer" in item else []
            if answers and not _is_answer(answers[0]):
                raise UserError(f"{where}: answer={answers[0]!r}; allowed: a string")
        ocr_tokens = item.get("ocr_tokens")
        if ocr_tokens is not None and not (isinstance(ocr_tokens, list) and all(isinstance(t, str) for t in ocr_tokens)):
            raise UserError(f"{where}: ocr_tokens={ocr_tokens!r}; allowed: a list of strings, or no key")
        if item.get("question_type") is not None:
            _check_field(where, "question_type", item["question_type"], (str,), "a string, or no key")
        record = Record(question_id=str(item["question_id"]), question=_strip_instruction(question),
                        answers=[str(a) for a in answers], image=image_folder / item["image"],
                        image_id=str(item["image"]), ocr_tokens=ocr_tokens, question_type=item.get("question_type"),
                        extra={"source": where})
        records.append(record)
    if not records:
        raise UserError(f"question file {str(questions_file)!r} is empty")
    ids = [r.question_id for r in records]
    if len(set(ids)) != len(ids):
        raise UserError(f"question file {str(questions_file)!r} has duplicate question_id values")
    return Dataset(name=cfg.name, records=records, scorer=cfg.get("scorer", "gqa"), revision=None,
                   info={"path": str(root)})


def _check_field(where: str, key: str, value, types: tuple, allowed: str, empty: bool = False) -> None:
    """A question line's field of the wrong type (``"question": null``) or empty where it names something is a
    one-line UserError naming it."""
    if isinstance(value, bool) or not isinstance(value, types) or (
            not empty and isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: {key}={value!r}; allowed: {allowed}")


def _is_answer(value) -> bool:
    """A reference answer: a string (a bare number in the JSON is taken as its text, as the scorers compare text)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check_references(dataset: Dataset) -> bool:
    """Every question has reference answers (a scored run), or none has (an unscored run: the predictions are
    written, accuracy is null); a mix is a one-line UserError naming the first question without, before any
    model work. Returns whether the run is scored."""
    if not dataset.scored:
        return False
    missing = next((r for r in dataset.records if not r.answers), None)
    if missing is not None:
        where = missing.extra.get("source") or f"question {missing.question_id!r}"
        raise UserError(f"{where}: no reference answer (answers or answer) while other questions have one; give "
                        "every question its answers, or none for an unscored run")
    return True


def _strip_instruction(text: str) -> str:
    """LLaVA's eval JSONLs carry the answer instruction inside ``text``; the prompt builder adds it again."""
    suffix = "\n" + ANSWER_INSTRUCTION
    return text[: -len(suffix)] if text.endswith(suffix) else text


LOADERS: dict[str, str] = {
    "local": "eval.datasets:load_local",
    "easyvqa": "eval.easyvqa:load",
    "gqa": "eval.gqa:load",
    "textvqa": "eval.textvqa:load",
    "scenes": "eval.scenes:load",
}


def load_dataset(cfg) -> Dataset:
    """Load ``cfg.name`` through its registered loader."""
    if cfg.name not in LOADERS:
        raise UserError(f"unknown dataset {cfg.name!r}; allowed: {', '.join(sorted(LOADERS))}")
    module_name, function_name = LOADERS[cfg.name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(cfg)
