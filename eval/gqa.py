"""GQA testdev-balanced (12,578 questions over 398 images), as LLaVA-1.5 evaluates it.

``load(cfg)`` reads one of three sources (``dataset.source``), or with ``auto`` (the default) decides: ``llava``
when ``dataset.path`` holds LLaVA's question file, ``hf_disk`` when it is another folder, else ``hub`` (one line saying
how to get the data when the hub cannot be reached; ``python -m eval.download gqa`` fetches it ahead of time):

``hf_disk`` (preferred): a local copy of the HF dataset ``lmms-lab/GQA``. ``dataset.path`` is a folder
    with one subfolder per subset, ``testdev_balanced_instructions/`` and ``testdev_balanced_images/``
    (names: ``instructions_subset`` / ``images_subset``). Each subfolder is either what
    ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``) writes, or the hub's parquet files
    (``testdev-00000-of-00001.parquet``), so a ``huggingface-cli download --repo-type dataset lmms-lab/GQA``
    folder works as it is. Questions and images are joined on ``imageId`` == image ``id``.
``hub``: ``datasets.load_dataset("lmms-lab/GQA", <subset>, split="testdev", revision=<pinned>)``; needs
    network access and ``dataset.revision``.
``llava``: LLaVA's eval folder (``playground/data/eval/gqa``): ``llava_gqa_testdev_balanced.jsonl``
    (question_id, image, text), answers and types from GQA's ``data/testdev_balanced_questions.json``, images
    in ``data/images/`` (keys ``questions_file``, ``annotations_file``, ``image_folder``, relative to
    ``dataset.path`` unless absolute).

Order (what ``limit=N`` takes the first N of): for ``hf_disk``/``hub`` the row order of
``testdev_balanced_instructions`` (parquet shards in file-name order); for ``llava`` the line order of the
question JSONL. The two orders need not agree, so ``limit=N`` may pick different questions from different
sources; ``eval.subsets.stratified_subset`` does not depend on the order.

Record fields: ``question_id`` = GQA question id; ``question`` = the question as stored; ``answers`` =
``[answer]``; ``image_id`` = GQA image id (``n161313``); ``question_type`` = ``"<structural>/<semantic>"``
from ``types`` (e.g. ``"query/rel"``; ``None`` when the source has no types), so
``eval.scoring.score_predictions`` reports both of GQA eval.py's breakdowns ("query/*", "*/rel");
``extra["types"]`` keeps the full types dict (structural, semantic, detailed).

With ``expect_full: true`` (the default) the loaded split must have exactly 12,578 questions over 398
images; anything else is a UserError saying what was found. Set it false only for a deliberately partial
copy (the runner's ``limit``/``subset`` are applied after loading and need no change here).

This module also holds the table readers shared with :mod:`eval.textvqa`.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, OrderedDict
from pathlib import Path

from PIL import Image

from eval.datasets import Dataset, Record, _strip_instruction, load_image, open_image, read_jsonl
from svdprune.errors import UserError

HUB_REPO = "lmms-lab/GQA"
FULL_QUESTIONS = 12_578
FULL_IMAGES = 398
INSTRUCTION_COLUMNS = ("id", "imageId", "question", "answer")
IMAGE_COLUMNS = ("id", "image")
POINT_AT_LOCAL = ("fetch it ahead of time with `python -m eval.download gqa`, or "
                  "point the config at a local copy: dataset.source=hf_disk dataset.path=<folder with "
                  "testdev_balanced_instructions/ and testdev_balanced_images/>, or dataset.source=llava "
                  "dataset.path=<LLaVA playground/data/eval/gqa>")


def load(cfg) -> Dataset:
    """Load GQA testdev-balanced from ``cfg.source`` (see the module docstring)."""
    source = resolve_source(cfg, "gqa", HUB_REPO, "llava_gqa_testdev_balanced.jsonl")
    if source == "hf_disk":
        root = local_root(cfg, "GQA")
        instructions = open_local_split(root / _subset(cfg, "instructions_subset", "testdev_balanced_instructions"),
                                        _split(cfg), "GQA questions")
        images = open_local_split(root / _subset(cfg, "images_subset", "testdev_balanced_images"),
                                  _split(cfg), "GQA images")
        records = _records_from_tables(instructions, images)
        revision, where = None, str(root)
    elif source == "hub":
        revision = _hub_revision(cfg)
        instructions = open_hub_split(HUB_REPO, _subset(cfg, "instructions_subset", "testdev_balanced_instructions"),
                                      _split(cfg), revision, cfg, POINT_AT_LOCAL)
        images = open_hub_split(HUB_REPO, _subset(cfg, "images_subset", "testdev_balanced_images"),
                                _split(cfg), revision, cfg, POINT_AT_LOCAL)
        records = _records_from_tables(instructions, images)
        where = f"{HUB_REPO}@{revision}"
    elif source == "llava":
        root = local_root(cfg, "GQA")
        records = _records_from_llava(root, cfg)
        revision, where = None, str(root)
    else:
        raise UserError(f"dataset.source={source!r} is not allowed for GQA; allowed: auto, hf_disk, hub, llava")

    n_images = len({r.image_id for r in records})
    if cfg.get("expect_full", True) and (len(records) != FULL_QUESTIONS or n_images != FULL_IMAGES):
        raise UserError(f"GQA testdev-balanced has {FULL_QUESTIONS:,} questions over {FULL_IMAGES} images, but "
                        f"{where} (source={source}) gave {len(records):,} questions over {n_images} images; "
                        "point dataset.path at a complete copy (or set dataset.expect_full=false for a "
                        "deliberately partial one)")
    if cfg.get("verify_images", False):
        verify_images(records)
    info = {"source": source, "path": where, "split": _split(cfg), "n_questions": len(records),
            "n_images": n_images, "expect_full": bool(cfg.get("expect_full", True)),
            "order": "question JSONL line order" if source == "llava" else "testdev_balanced_instructions row order",
            "fingerprint": fingerprint(records)}
    return Dataset(name=cfg.name, records=records, scorer=cfg.get("scorer") or "gqa", revision=revision, info=info)


def _split(cfg) -> str:
    return cfg.get("split") or "testdev"


def _subset(cfg, key: str, default: str) -> str:
    return cfg.get(key) or default


def _records_from_tables(instructions: "Table", images: "Table") -> list[Record]:
    require_columns(instructions, INSTRUCTION_COLUMNS, "GQA questions")
    require_columns(images, IMAGE_COLUMNS, "GQA images")
    columns = list(INSTRUCTION_COLUMNS) + (["types"] if "types" in instructions.columns else [])
    rows = instructions.read(columns)
    image_rows: dict[str, int] = {}
    for row, image_id in enumerate(images.read(["id"])["id"]):
        image_rows.setdefault(str(image_id), row)
    missing = sorted({str(i) for i in rows["imageId"]} - set(image_rows))
    if missing:
        raise UserError(f"{len(missing)} image(s) used by the questions in {instructions.where} are not in "
                        f"{images.where} (e.g. {', '.join(missing[:3])}); the two subsets must come from the "
                        "same copy of lmms-lab/GQA")
    records = []
    for i in range(len(rows["id"])):
        image_id = str(rows["imageId"][i])
        types = rows["types"][i] if "types" in rows else None
        records.append(Record(question_id=str(rows["id"][i]), question=str(rows["question"][i]),
                              answers=[str(rows["answer"][i])], image=RowImage(images, image_rows[image_id]),
                              image_id=image_id, question_type=_question_type(types),
                              extra={"types": dict(types)} if types else {}))
    check_unique_ids(records, instructions.where)
    return records


def _question_type(types) -> str | None:
    if not types or not types.get("structural"):
        return None
    return f"{types['structural']}/{types.get('semantic') or '?'}"


def _records_from_llava(root: Path, cfg) -> list[Record]:
    questions_file = resolve(root, cfg.get("questions_file") or "llava_gqa_testdev_balanced.jsonl")
    annotations_file = resolve(root, cfg.get("annotations_file") or "data/testdev_balanced_questions.json")
    image_folder = resolve(root, cfg.get("image_folder") or "data/images")
    if not questions_file.is_file():
        raise UserError(f"no GQA question file {str(questions_file)!r}; expected LLaVA's "
                        "llava_gqa_testdev_balanced.jsonl (set dataset.questions_file)")
    if not annotations_file.is_file():
        raise UserError(f"no GQA answer file {str(annotations_file)!r}; expected GQA's "
                        "testdev_balanced_questions.json (set dataset.annotations_file)")
    if not image_folder.is_dir():
        raise UserError(f"GQA image folder {str(image_folder)!r} does not exist (set dataset.image_folder)")
    annotations = read_json(annotations_file)
    if not isinstance(annotations, dict):
        raise UserError(f"{annotations_file} should map question ids to questions (GQA's "
                        "testdev_balanced_questions.json format)")
    records = []
    for line_no, item in read_jsonl(questions_file):
        try:
            question_id = str(item["question_id"])
            text = item["text"] if "text" in item else item["question"]
            image_name = str(item["image"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{questions_file}:{line_no}: bad question line ({type(exc).__name__}: {exc}); "
                            "need question_id, image and text") from None
        annotation = annotations.get(question_id)
        if not isinstance(annotation, dict) or "answer" not in annotation:
            raise UserError(f"{questions_file}:{line_no}: question {question_id} has no answer in "
                            f"{annotations_file}; the two files must be the same GQA split")
        types = annotation.get("types") if isinstance(annotation.get("types"), dict) else None
        records.append(Record(question_id=question_id, question=_strip_instruction(str(text)),
                              answers=[str(annotation["answer"])], image=image_folder / image_name,
                              image_id=str(annotation.get("imageId") or Path(image_name).stem),
                              question_type=_question_type(types), extra={"types": types} if types else {}))
    if not records:
        raise UserError(f"question file {str(questions_file)!r} is empty")
    check_unique_ids(records, str(questions_file))
    check_image_files(records, image_folder)
    return records


def _hub_revision(cfg) -> str:
    revision = cfg.get("revision")
    if not revision:
        raise UserError("dataset.source=hub needs a pinned dataset.revision (a commit sha of the hub dataset)")
    return str(revision)


# ===================================================================================================
# Shared with eval.textvqa: local roots, HF table readers (save_to_disk / parquet / hub), checks.


def resolve_source(cfg, name: str, repo: str, llava_questions: str) -> str:
    """``dataset.source`` with ``auto`` (the default) decided: ``llava`` when ``dataset.path`` holds LLaVA's eval
    question file, ``hf_disk`` when it is a folder, else ``hub`` (the pinned revision, fetched with a progress bar
    and cached where ``datasets`` caches) once the hub is known to be reachable; offline with no copy, one line
    saying how to get the data."""
    source = cfg.get("source") or "hf_disk"
    if source != "auto":
        return source
    path = Path(str(cfg.get("path") or "")).expanduser()
    if cfg.get("path") and path.is_dir():
        return "llava" if (path / (cfg.get("questions_file") or llava_questions)).is_file() else "hf_disk"
    unreachable = hub_unreachable()
    if unreachable is not None:
        where = f"no local copy at dataset.path={str(cfg.get('path'))!r}" if cfg.get("path") else "no dataset.path"
        raise UserError(f"dataset={name}: {where} and the hub is unreachable ({unreachable}); get it ahead of time "
                        f"where there is network with `python -m eval.download {name}` (writes {DOWNLOAD_FOLDERS[name]}"
                        f"), or point dataset.path at a copy (one in the datasets cache: set HF_HUB_OFFLINE=1)")
    return "hub"


# where ``python -m eval.download <name>`` puts a dataset: the configs' default dataset.path
DOWNLOAD_FOLDERS = {"gqa": "data/gqa", "textvqa": "data/textvqa"}


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be reached from here (a one-line reason), or None when it can be (or when this
    cannot tell: behind a proxy, or ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, where ``datasets`` reads its
    cache). A TCP connection to ``HF_ENDPOINT``: seconds, where ``datasets``' own retries take half a minute."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    if any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def local_root(cfg, what: str) -> Path:
    if not cfg.get("path"):
        raise UserError(f"dataset.path is not set; point it at a local copy of {what} (dataset.path=...)")
    root = Path(str(cfg.path)).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset.path={str(root)!r} does not exist; point it at a local copy of {what} "
                        "(dataset.path=...)")
    return root


def resolve(root: Path, name) -> Path:
    path = Path(str(name)).expanduser()
    return path if path.is_absolute() else root / path


def read_json(path: Path):
    try:
        with path.open() as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def require_columns(table: "Table", required, what: str) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{what} in {table.where} lack column(s) {', '.join(missing)} (found: "
                        f"{', '.join(table.columns)}); is dataset.path the right dataset?")


def check_unique_ids(records: list[Record], where: str) -> None:
    counts = Counter(r.question_id for r in records)
    duplicates = [q for q, c in counts.items() if c > 1]
    if duplicates:
        raise UserError(f"{where} has duplicate question ids (e.g. {', '.join(duplicates[:3])})")


def check_image_files(records: list[Record], image_folder: Path) -> None:
    missing = sorted({str(r.image) for r in records if not Path(r.image).is_file()})
    if missing:
        raise UserError(f"{len(missing)} image file(s) missing from {str(image_folder)!r} (e.g. "
                        f"{Path(missing[0]).name}); set dataset.image_folder to the folder with the images")


def verify_images(records: list[Record]) -> None:
    """Decode every distinct image once (``verify_images: true``); the first unreadable one is a UserError."""
    seen = set()
    for record in records:
        if record.image_id not in seen:
            seen.add(record.image_id)
            load_image(record)


def fingerprint(records: list[Record]) -> str:
    """A short hash of the loaded questions (ids, text, answers, image ids), recorded in metrics.json."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.question_id, r.question, r.answers, r.image_id]).encode())
    return digest.hexdigest()[:16]


def _datasets_module():
    try:
        import datasets
    except ImportError:
        raise UserError("the 'datasets' package is needed for this dataset.source (pip install -e '.[data]'), "
                        "or use dataset.source=llava") from None
    return datasets


def to_pil(value) -> Image.Image:
    """An image cell (PIL image, {'bytes', 'path'} dict, or raw bytes) as a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return open_image(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return open_image(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return open_image(io.BytesIO(value))
    raise OSError(f"image cell holds no image data ({type(value).__name__})")


class Table:
    """A split of a HF dataset: column names, whole columns as Python lists, one row's image."""

    where: str
    columns: list[str]

    def read(self, columns) -> dict[str, list]:
        raise NotImplementedError

    def image(self, row: int, column: str = "image") -> Image.Image:
        raise NotImplementedError


class RowImage:
    """``Record.image`` for images stored in a table: a zero-argument callable returning a PIL image."""

    def __init__(self, table: Table, row: int, column: str = "image"):
        self.table, self.row, self.column = table, row, column

    def __call__(self) -> Image.Image:
        return self.table.image(self.row, self.column)

    def __repr__(self) -> str:
        return f"{self.table.where}[{self.row}].{self.column}"


class HFTable(Table):
    """A ``datasets.Dataset`` (from ``load_from_disk`` or ``load_dataset``)."""

    def __init__(self, dataset, where: str):
        self.dataset, self.where = dataset, where
        self.columns = list(dataset.column_names)
        self._image_views = {}

    def read(self, columns) -> dict[str, list]:
        return self.dataset.select_columns(list(columns)).with_format("arrow")[:].to_pydict()

    def image(self, row: int, column: str = "image") -> Image.Image:
        if column not in self._image_views:
            view = self.dataset.select_columns([column])
            if getattr(view.features.get(column), "decode", False):  # datasets would decode with a plain Image.open:
                from datasets import Image as ImageFeature  # hand over the bytes, opened raster-only by to_pil

                view = view.cast_column(column, ImageFeature(decode=False))
            self._image_views[column] = view
        return to_pil(self._image_views[column][row][column])

    def __getstate__(self):
        return {**self.__dict__, "_image_views": {}}


class ParquetTable(Table):
    """Parquet shards as the hub stores them (read with pyarrow, images fetched one row group at a time).

    The last few row groups read are kept: the hub writes image datasets in groups of ~100 rows, so GQA's
    398 images stay in memory whatever order the questions visit them, and TextVQA (one image per row, read
    in row order) reads each group once.
    """

    CACHED_ROW_GROUPS = 8

    def __init__(self, files: list[Path], where: str):
        import pyarrow.parquet as pq

        self.files, self.where = files, where
        self._groups = []  # (first row, file index, row group, rows)
        start = 0
        columns = None
        for file_index, file in enumerate(files):
            try:
                metadata = pq.ParquetFile(file).metadata
                names = pq.read_schema(file).names
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise UserError(f"cannot read parquet file {str(file)!r} ({type(exc).__name__}: {exc})") from None
            if columns is None:
                columns = names
            elif names != columns:
                raise UserError(f"parquet shards in {where} have different columns ({file.name})")
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                self._groups.append((start, file_index, group, rows))
                start += rows
        self.columns = list(columns or [])
        self._cache = OrderedDict()  # (file, row group, column) -> arrow column, least recently used first

    def read(self, columns) -> dict[str, list]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(file, columns=list(columns)) for file in self.files]
        return pa.concat_tables(tables).to_pydict()

    def image(self, row: int, column: str = "image") -> Image.Image:
        import pyarrow.parquet as pq

        for start, file_index, group, rows in self._groups:
            if start <= row < start + rows:
                key = (file_index, group, column)
                if key in self._cache:
                    self._cache.move_to_end(key)
                else:
                    table = pq.ParquetFile(self.files[file_index]).read_row_group(group, columns=[column])
                    self._cache[key] = table.column(column)
                    while len(self._cache) > self.CACHED_ROW_GROUPS:
                        self._cache.popitem(last=False)
                return to_pil(self._cache[key][row - start].as_py())
        raise IndexError(f"row {row} is outside {self.where}")

    def __getstate__(self):
        return {**self.__dict__, "_cache": OrderedDict()}


def _parquet_files(folder: Path, split: str) -> list[Path]:
    patterns = (f"{split}-*.parquet", f"{split}.parquet", f"data/{split}-*.parquet", f"{split}/*.parquet",
                f"default/{split}/*.parquet")
    found = []
    for pattern in patterns:
        found.extend(p for p in folder.glob(pattern) if p.is_file())
    return sorted(set(found), key=lambda p: str(p))


def open_local_split(folder: Path, split: str, what: str) -> Table:
    """One split of a local HF copy: ``save_to_disk`` of a Dataset or DatasetDict, or hub parquet shards."""
    if not folder.is_dir():
        raise UserError(f"{what}: folder {str(folder)!r} does not exist; dataset.path must hold the HF "
                        "dataset as save_to_disk writes it or as the hub's parquet files")
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        datasets = _datasets_module()
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # datasets raises many types for a damaged copy
            raise UserError(f"{what}: cannot load {str(folder)!r} with datasets.load_from_disk "
                            f"({type(exc).__name__}: {exc})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"{what}: {str(folder)!r} has no split {split!r} (found: "
                                f"{', '.join(loaded) or 'none'}); set dataset.split or point at the right copy")
            return HFTable(loaded[split], f"{folder} [{split}]")
        saved_split = str(loaded.split) if loaded.split is not None else None
        if saved_split is not None and saved_split != split:
            raise UserError(f"{what}: {str(folder)!r} holds split {saved_split!r}, not {split!r}; "
                            "point dataset.path at the right split (or set dataset.split)")
        return HFTable(loaded, str(folder))
    files = _parquet_files(folder, split)
    if files:
        return ParquetTable(files, f"{folder} [{split}]")
    others = sorted(p.name for p in folder.rglob("*.parquet"))
    if others:
        raise UserError(f"{what}: no parquet files for split {split!r} in {str(folder)!r} (found "
                        f"{', '.join(others[:4])}); wrong split? set dataset.split or point at the right copy")
    raise UserError(f"{what}: {str(folder)!r} holds neither a save_to_disk dataset (state.json / "
                    "dataset_dict.json) nor parquet files; point dataset.path at a local copy")


def open_hub_split(repo: str, subset: str | None, split: str, revision: str, cfg, hint: str,
                   data_files: dict | None = None) -> Table:
    """``datasets.load_dataset(repo, subset, split=..., revision=...)``; any failure is one UserError line.
    ``data_files`` limits the download to one split's files (TextVQA's train split alone is ~10 GB)."""
    datasets = _datasets_module()
    try:
        loaded = datasets.load_dataset(repo, subset, split=split, revision=revision, data_files=data_files,
                                       cache_dir=cfg.get("cache_dir") or None)
    except Exception as exc:  # offline, unknown revision, auth, missing split: all mean "use a local copy"
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot load {repo} ({subset or 'default'}, split {split}, revision {revision}) from "
                        f"the hub ({type(exc).__name__}: {detail}); {hint}") from None
    return HFTable(loaded, f"{repo}/{subset or 'default'}@{revision} [{split}]")
