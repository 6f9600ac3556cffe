"""TextVQA val (5,000 questions, 10 human answers each), with OCR tokens, as LLaVA-1.5 evaluates it.

``load(cfg)`` reads one of three sources (``dataset.source``), or with ``auto`` (the default) decides: ``llava``
when ``dataset.path`` holds LLaVA's question file, ``hf_disk`` when it is another folder, else ``hub`` (one line saying
how to get the data when the hub cannot be reached; ``python -m eval.download textvqa`` fetches it ahead of time):

``hf_disk`` (preferred): a local copy of the HF dataset ``lmms-lab/textvqa``, split ``validation``:
    what ``datasets`` ``save_to_disk`` writes (a Dataset, or a DatasetDict with that split), or the hub's
    parquet files (``data/validation-0000k-of-00003.parquet``) under ``dataset.path``.
``hub``: ``datasets.load_dataset("lmms-lab/textvqa", split="validation", revision=<pinned>)``.
``llava``: LLaVA's eval folder (``playground/data/eval/textvqa``): ``llava_textvqa_val_v051_ocr.jsonl``,
    the answers from ``TextVQA_0.5.1_val.json`` and the images in ``train_images/`` (keys
    ``questions_file``, ``annotations_file``, ``image_folder``, relative to ``dataset.path``). LLaVA's JSONL
    uses the *image* id as ``question_id`` (several questions share one); its lines are matched to the
    annotations by (image id, lowercased question) as LLaVA's eval_textvqa.py does, taking annotations with
    the same key in file order, and the records carry TextVQA's real question ids.

Question line (``Record.question``), as LLaVA-1.5's ``llava_textvqa_val_v051_ocr.jsonl`` has it:
``question.capitalize() + "\\nReference OCR token: " + ", ".join(ocr_tokens)``, the OCR line left out
when the image has no OCR tokens; tokens keep their case. For ``llava`` the JSONL text is used verbatim
(and ``Record.ocr_tokens`` is parsed back from its OCR line by splitting on ", ").
``use_ocr: false`` drops the OCR line (``Dataset.info["use_ocr"]`` records which). The answer instruction
is not part of it: the prompt builder appends it.

Order (what ``limit=N`` takes the first N of): the row order of the ``validation`` split (parquet shards in
file-name order) for ``hf_disk``/``hub``, the line order of the question JSONL for ``llava``.

With ``expect_full: true`` (the default) the split must have exactly 5,000 questions, each with 10 answers.
"""
from __future__ import annotations

from pathlib import Path

from eval.datasets import Dataset, Record, _strip_instruction, read_jsonl
from eval.gqa import (RowImage, Table, _hub_revision, check_image_files, check_unique_ids, fingerprint,
                      local_root, open_hub_split, open_local_split, read_json, require_columns,
                      resolve, resolve_source, verify_images)
from svdprune.errors import UserError

HUB_REPO = "lmms-lab/textvqa"
FULL_QUESTIONS = 5_000
ANSWERS_PER_QUESTION = 10
OCR_PREFIX = "\nReference OCR token: "
COLUMNS = ("question_id", "question", "image_id", "image", "answers")
POINT_AT_LOCAL = ("fetch it ahead of time with `python -m eval.download textvqa`, or "
                  "point the config at a local copy: dataset.source=hf_disk dataset.path=<lmms-lab/textvqa "
                  "copy>, or dataset.source=llava dataset.path=<LLaVA playground/data/eval/textvqa>")


def question_line(question: str, ocr_tokens: list[str] | None, use_ocr: bool = True) -> str:
    """The question as LLaVA-1.5 puts it in the prompt, before the answer instruction."""
    line = question.capitalize()
    if use_ocr and ocr_tokens:
        line += OCR_PREFIX + ", ".join(ocr_tokens)
    return line


def load(cfg) -> Dataset:
    """Load TextVQA val from ``cfg.source`` (see the module docstring)."""
    source = resolve_source(cfg, "textvqa", HUB_REPO, "llava_textvqa_val_v051_ocr.jsonl")
    use_ocr = bool(cfg.get("use_ocr", True))
    split = cfg.get("split") or "validation"
    if source == "hf_disk":
        root = local_root(cfg, "TextVQA")
        records = _records_from_table(open_local_split(root, split, "TextVQA"), use_ocr)
        revision, where = None, str(root)
    elif source == "hub":
        revision = _hub_revision(cfg)
        table = open_hub_split(HUB_REPO, None, split, revision, cfg, POINT_AT_LOCAL,
                               data_files={split: f"data/{split}-*.parquet"})
        records = _records_from_table(table, use_ocr)
        where = f"{HUB_REPO}@{revision}"
    elif source == "llava":
        root = local_root(cfg, "TextVQA")
        records = _records_from_llava(root, cfg, use_ocr)
        revision, where = None, str(root)
    else:
        raise UserError(f"dataset.source={source!r} is not allowed for TextVQA; allowed: auto, hf_disk, hub, llava")

    if cfg.get("expect_full", True):
        if len(records) != FULL_QUESTIONS:
            raise UserError(f"TextVQA val has {FULL_QUESTIONS:,} questions, but {where} (source={source}) gave "
                            f"{len(records):,}; point dataset.path at a complete copy (or set "
                            "dataset.expect_full=false for a deliberately partial one)")
        short = [r.question_id for r in records if len(r.answers) != ANSWERS_PER_QUESTION]
        if short:
            raise UserError(f"{len(short)} TextVQA question(s) in {where} do not have {ANSWERS_PER_QUESTION} "
                            f"answers (e.g. question {short[0]}); is this the val split?")
    if cfg.get("verify_images", False):
        verify_images(records)
    with_ocr = sum(OCR_PREFIX in r.question for r in records)
    info = {"source": source, "path": where, "split": split, "use_ocr": use_ocr,
            "questions_with_ocr_line": with_ocr, "n_questions": len(records),
            "n_images": len({r.image_id for r in records}), "expect_full": bool(cfg.get("expect_full", True)),
            "order": "question JSONL line order" if source == "llava" else f"{split} split row order",
            "fingerprint": fingerprint(records)}
    return Dataset(name=cfg.name, records=records, scorer=cfg.get("scorer") or "vqa", revision=revision, info=info)


def _records_from_table(table: Table, use_ocr: bool) -> list[Record]:
    require_columns(table, COLUMNS + (("ocr_tokens",) if use_ocr else ()), "TextVQA questions")
    columns = [c for c in COLUMNS if c != "image"] + (["ocr_tokens"] if "ocr_tokens" in table.columns else [])
    rows = table.read(columns)
    records = []
    for i in range(len(rows["question_id"])):
        answers = rows["answers"][i]
        if not answers:
            raise UserError(f"TextVQA question {rows['question_id'][i]} in {table.where} has no answers; "
                            "the test split has none: use the validation split")
        tokens = list(rows["ocr_tokens"][i] or []) if "ocr_tokens" in rows else None
        records.append(Record(question_id=str(rows["question_id"][i]),
                              question=question_line(str(rows["question"][i]), tokens, use_ocr),
                              answers=[str(a) for a in answers], image=RowImage(table, i),
                              image_id=str(rows["image_id"][i]), ocr_tokens=tokens))
    check_unique_ids(records, table.where)
    return records


def _records_from_llava(root: Path, cfg, use_ocr: bool) -> list[Record]:
    questions_file = resolve(root, cfg.get("questions_file") or "llava_textvqa_val_v051_ocr.jsonl")
    annotations_file = resolve(root, cfg.get("annotations_file") or "TextVQA_0.5.1_val.json")
    image_folder = resolve(root, cfg.get("image_folder") or "train_images")
    if not questions_file.is_file():
        raise UserError(f"no TextVQA question file {str(questions_file)!r}; expected LLaVA's "
                        "llava_textvqa_val_v051_ocr.jsonl (set dataset.questions_file)")
    if not annotations_file.is_file():
        raise UserError(f"no TextVQA answer file {str(annotations_file)!r}; expected TextVQA_0.5.1_val.json "
                        "(set dataset.annotations_file)")
    if not image_folder.is_dir():
        raise UserError(f"TextVQA image folder {str(image_folder)!r} does not exist (set dataset.image_folder)")
    annotations = read_json(annotations_file)
    data = annotations.get("data") if isinstance(annotations, dict) else None
    if not isinstance(data, list):
        raise UserError(f"{annotations_file} has no \"data\" list (TextVQA_0.5.1_val.json format)")
    by_key: dict[tuple[str, str], list[dict]] = {}
    for annotation in data:
        try:
            key = (str(annotation["image_id"]), str(annotation["question"]).lower())
        except (KeyError, TypeError):
            raise UserError(f"{annotations_file}: an entry lacks image_id or question") from None
        by_key.setdefault(key, []).append(annotation)

    records = []
    for line_no, item in read_jsonl(questions_file):
        try:
            image_name = str(item["image"])
            text = _strip_instruction(str(item["text"] if "text" in item else item["question"]))
        except KeyError as exc:
            raise UserError(f"{questions_file}:{line_no}: bad question line (missing {exc}); need "
                            "question_id, image and text") from None
        question, _, ocr = text.partition(OCR_PREFIX)
        image_id = Path(image_name).stem
        candidates = by_key.get((image_id, question.lower()))
        if not candidates:
            raise UserError(f"{questions_file}:{line_no}: no annotation in {annotations_file.name} for image "
                            f"{image_id} and question {question!r}; the two files must be the same TextVQA split")
        annotation = candidates.pop(0)
        answers = annotation.get("answers") or []
        if not answers:
            raise UserError(f"{annotations_file}: question {annotation.get('question_id')} has no answers; "
                            "use the val annotations (TextVQA_0.5.1_val.json)")
        records.append(Record(question_id=str(annotation.get("question_id", f"{image_id}:{line_no}")),
                              question=text if use_ocr else question, answers=[str(a) for a in answers],
                              image=image_folder / image_name, image_id=image_id,
                              ocr_tokens=ocr.split(", ") if ocr else []))
    if not records:
        raise UserError(f"question file {str(questions_file)!r} is empty")
    if use_ocr and not any(r.ocr_tokens for r in records):
        raise UserError(f"dataset.use_ocr=true but {questions_file.name} has no 'Reference OCR token' lines; "
                        "use LLaVA's llava_textvqa_val_v051_ocr.jsonl or set dataset.use_ocr=false")
    check_unique_ids(records, str(questions_file))
    check_image_files(records, image_folder)
    return records
