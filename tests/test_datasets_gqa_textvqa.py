"""GQA and TextVQA loaders on tiny copies in every on-disk format, the subsets, and every bad input.

The fixtures are written by the tests (tests/fixtures_eval.py) and loaded through eval.datasets.load_dataset,
the entry point the runner uses. Nothing here touches the network (HF_*_OFFLINE are set).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tests import fixtures_eval as fx  # noqa: E402
from eval import textvqa  # noqa: E402
from eval.datasets import LOADERS, Record, load_dataset, load_image  # noqa: E402
from eval.scoring import SCORERS  # noqa: E402
from eval.subsets import stratified_subset  # noqa: E402
from svdprune.errors import UserError  # noqa: E402
from svdprune.prompts import ANSWER_INSTRUCTION, vicuna_prompt  # noqa: E402

GQA_IDS = [q[0] for q in fx.GQA_QUESTIONS]


def gqa_cfg(path, **fields):
    return fx.config("gqa", **{"path": str(path), "expect_full": False, **fields})


def textvqa_cfg(path, **fields):
    return fx.config("textvqa", **{"path": str(path), "expect_full": False, **fields})


def assert_images_match(records):
    """Every record's image (a path or a callable) decodes to the colour of its own image id."""
    for record in records:
        assert load_image(record).getpixel((0, 0)) == fx.colour(record.image_id), record.question_id


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name,scorer", [("gqa", "gqa"), ("textvqa", "vqa")])
def test_dataset_configs(name, scorer):
    cfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "dataset" / f"{name}.yaml")
    assert cfg.name == name and LOADERS[name] == f"eval.{name}:load"
    assert cfg.scorer == scorer and scorer in SCORERS
    assert cfg.source == "auto" and cfg.expect_full is True
    assert re.fullmatch(r"[0-9a-f]{40}", cfg.revision), "revision must be a pinned commit sha"
    if name == "textvqa":
        assert cfg.use_ocr is True


# ---------------------------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("fmt", ["save_to_disk", "dict", "parquet"])
def test_gqa_hf_formats(tmp_path, fmt):
    fx.write_gqa_hf(tmp_path, fmt)
    dataset = load_dataset(gqa_cfg(tmp_path))
    assert dataset.name == "gqa" and dataset.scorer == "gqa" and dataset.revision is None
    assert [r.question_id for r in dataset] == GQA_IDS  # the instructions' row order
    first = dataset.records[0]
    assert (first.question, first.answers, first.image_id) == ("Is the sky dark?", ["yes"], "n100")
    assert first.question_type == "verify/attr"
    assert first.extra["types"] == {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}
    assert callable(first.image)
    assert_images_match(dataset.records)  # parquet: 2 rows per row group, so this crosses row groups
    assert dataset.info["source"] == "hf_disk" and dataset.info["n_questions"] == 7 and dataset.info["n_images"] == 3


def test_gqa_llava_layout(tmp_path):
    fx.write_gqa_llava(tmp_path)
    dataset = load_dataset(gqa_cfg(tmp_path, source="llava"))
    assert [r.question_id for r in dataset] == GQA_IDS  # JSONL order, not the answer file's order
    record = dataset.records[2]
    assert record.question == "Which color is the car?"  # LLaVA's instruction stripped: the prompt adds it
    assert record.answers == ["red"] and record.image_id == "n200" and record.question_type == "query/attr"
    assert str(record.image).endswith("data/images/n200.jpg")
    assert_images_match(dataset.records)
    assert vicuna_prompt(record.question).count(ANSWER_INSTRUCTION) == 1


def test_gqa_sources_agree(tmp_path):
    """The same questions from each source give the same records (fingerprint) and the same subset."""
    fx.write_gqa_hf(tmp_path / "disk", "save_to_disk")
    fx.write_gqa_hf(tmp_path / "parquet", "parquet")
    fx.write_gqa_llava(tmp_path / "llava")
    loaded = [load_dataset(gqa_cfg(tmp_path / "disk")), load_dataset(gqa_cfg(tmp_path / "parquet")),
              load_dataset(gqa_cfg(tmp_path / "llava", source="llava"))]
    assert len({d.info["fingerprint"] for d in loaded}) == 1
    subsets = [[r.question_id for r in stratified_subset(d.records, 4, seed=3)] for d in loaded]
    assert subsets[0] == subsets[1] == subsets[2]


def test_gqa_full_split_count_is_checked(tmp_path):
    fx.write_gqa_hf(tmp_path)
    with pytest.raises(UserError, match=r"12,578 questions over 398 images.*gave 7 questions over 3 images"):
        load_dataset(gqa_cfg(tmp_path, expect_full=True))
    fx.write_gqa_llava(tmp_path / "llava")
    with pytest.raises(UserError, match="gave 7 questions over 3 images"):
        load_dataset(gqa_cfg(tmp_path / "llava", source="llava", expect_full=True))


def test_gqa_missing_folder(tmp_path):
    with pytest.raises(UserError, match=r"dataset.path=.*does not exist.*dataset.path="):
        load_dataset(gqa_cfg(tmp_path / "nowhere", source="hf_disk"))  # auto: tests/test_integrity_round4.py


def test_gqa_missing_images_subset(tmp_path):
    fx.write_gqa_hf(tmp_path)
    (tmp_path / "testdev_balanced_images" / "state.json").unlink()
    for f in (tmp_path / "testdev_balanced_images").iterdir():
        f.unlink()
    (tmp_path / "testdev_balanced_images").rmdir()
    with pytest.raises(UserError, match="GQA images: folder .*testdev_balanced_images.* does not exist"):
        load_dataset(gqa_cfg(tmp_path))


@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet"])
def test_gqa_missing_column(tmp_path, fmt):
    fx.write_gqa_hf(tmp_path, fmt, drop_column="answer")
    with pytest.raises(UserError, match=r"GQA questions in .* lack column\(s\) answer"):
        load_dataset(gqa_cfg(tmp_path))


@pytest.mark.parametrize("fmt,pattern", [
    ("save_to_disk", "holds split 'val', not 'testdev'"),
    ("dict", r"has no split 'testdev' \(found: val\)"),
    ("parquet", r"no parquet files for split 'testdev'.*val-00000-of-00001.parquet.*wrong split"),
])
def test_gqa_wrong_split(tmp_path, fmt, pattern):
    fx.write_gqa_hf(tmp_path, fmt, split="val")
    with pytest.raises(UserError, match=pattern):
        load_dataset(gqa_cfg(tmp_path))


def test_gqa_questions_without_their_image(tmp_path):
    fx.write_gqa_hf(tmp_path, image_ids=["n100", "n200"])
    with pytest.raises(UserError, match=r"1 image\(s\) used by the questions .* not in .*\(e.g. n300\)"):
        load_dataset(gqa_cfg(tmp_path))


@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet"])
def test_gqa_corrupt_image(tmp_path, fmt):
    fx.write_gqa_hf(tmp_path, fmt, corrupt="n200")
    dataset = load_dataset(gqa_cfg(tmp_path))  # lazy: the bad image is found when it is read
    bad = next(r for r in dataset if r.image_id == "n200")
    with pytest.raises(UserError, match=f"cannot read image .* of question '{bad.question_id}'"):
        load_image(bad)
    with pytest.raises(UserError, match="cannot read image"):
        load_dataset(gqa_cfg(tmp_path, verify_images=True))


def test_gqa_llava_bad_inputs(tmp_path):
    fx.write_gqa_llava(tmp_path)
    answers = tmp_path / "data" / "testdev_balanced_questions.json"
    content = json.loads(answers.read_text())
    del content["205"]
    answers.write_text(json.dumps(content))
    with pytest.raises(UserError, match=r"question 205 has no answer in .*testdev_balanced_questions.json"):
        load_dataset(gqa_cfg(tmp_path, source="llava"))
    answers.unlink()
    with pytest.raises(UserError, match=r"no GQA answer file .*dataset.annotations_file"):
        load_dataset(gqa_cfg(tmp_path, source="llava"))


def test_gqa_llava_missing_image_file(tmp_path):
    fx.write_gqa_llava(tmp_path)
    (tmp_path / "data" / "images" / "n300.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image file\(s\) missing from .*n300.jpg.*dataset.image_folder"):
        load_dataset(gqa_cfg(tmp_path, source="llava"))


def test_gqa_llava_corrupt_image(tmp_path):
    fx.write_gqa_llava(tmp_path)
    (tmp_path / "data" / "images" / "n100.jpg").write_bytes(b"\xff\xd8 truncated")
    dataset = load_dataset(gqa_cfg(tmp_path, source="llava"))
    with pytest.raises(UserError, match=r"cannot read image .*n100.jpg"):
        load_image(dataset.records[0])


@pytest.mark.parametrize("name,repo", [("gqa", "lmms-lab/GQA"), ("textvqa", "lmms-lab/textvqa")])
def test_hub_unreachable(tmp_path, monkeypatch, name, repo):
    """source=hub runs the real datasets.load_dataset, offline here: one UserError pointing at dataset.path."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(UserError, match=f"cannot load {repo} .* from the hub .*dataset.path=") as error:
        load_dataset(fx.config(name, source="hub", cache_dir=str(tmp_path)))
    assert "\n" not in str(error.value)


def test_gqa_hub_needs_revision():
    with pytest.raises(UserError, match="pinned dataset.revision"):
        load_dataset(fx.config("gqa", source="hub", revision=None))


def test_unknown_source(tmp_path):
    with pytest.raises(UserError,
                       match="dataset.source='s3' is not allowed for GQA; allowed: auto, hf_disk, hub, llava"):
        load_dataset(gqa_cfg(tmp_path, source="s3"))


# ------------------------------------------------------------------------------------------ TextVQA

CAMERA_LINE = "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera, Pire, digitat"


@pytest.mark.parametrize("fmt", ["save_to_disk", "dict", "parquet"])
def test_textvqa_hf_formats(tmp_path, fmt):
    fx.write_textvqa_hf(tmp_path, fmt)
    dataset = load_dataset(textvqa_cfg(tmp_path))
    assert dataset.scorer == "vqa" and dataset.info["use_ocr"] is True
    assert [r.question_id for r in dataset] == ["34602", "34603", "34604", "34605"]
    camera, _, beer, jersey = dataset.records
    assert camera.question == CAMERA_LINE  # capitalised question + LLaVA's OCR line, tokens in their case
    assert camera.ocr_tokens == ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"]
    assert beer.question == "What kind of beer is this?"  # no OCR tokens: no OCR line
    assert jersey.question == "What number is on the jersey?\nReference OCR token: 23, NIKE"
    assert len(camera.answers) == 10 and camera.answers[1] == "dakota"
    assert camera.image_id == "003a8ae2ef43b901"
    assert_images_match(dataset.records)
    assert dataset.info["questions_with_ocr_line"] == 3


def test_textvqa_prompt_exactly_as_llava():
    """The full prompt for the camera question, spelled out by hand."""
    line = textvqa.question_line("what is the brand of this camera?", ["DAKOTA", "DIGITAL"])
    assert vicuna_prompt(line) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is the brand of this camera?"
        "\nReference OCR token: DAKOTA, DIGITAL\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert textvqa.question_line("what is this?", []) == "What is this?"
    assert textvqa.question_line("what is this?", ["A"], use_ocr=False) == "What is this?"


def test_textvqa_without_ocr(tmp_path):
    fx.write_textvqa_hf(tmp_path)
    dataset = load_dataset(textvqa_cfg(tmp_path, use_ocr=False))
    assert dataset.records[0].question == "What is the brand of this camera?"
    assert not any("Reference OCR token" in r.question for r in dataset)
    assert dataset.info["use_ocr"] is False and dataset.info["questions_with_ocr_line"] == 0


def test_textvqa_llava_layout(tmp_path):
    fx.write_textvqa_llava(tmp_path)
    dataset = load_dataset(textvqa_cfg(tmp_path, source="llava"))
    # LLaVA's question_id is the image id (shared by 34602 and 34603): the records carry the real ids
    assert [r.question_id for r in dataset] == ["34602", "34603", "34604", "34605"]
    camera = dataset.records[0]
    assert camera.question == CAMERA_LINE
    assert camera.ocr_tokens == ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"]
    assert camera.answers[0] == "nous les gosses" and dataset.records[1].answers[5] == "thursday"
    assert dataset.records[2].question == "What kind of beer is this?"
    assert_images_match(dataset.records)
    no_ocr = load_dataset(textvqa_cfg(tmp_path, source="llava", use_ocr=False))
    assert no_ocr.records[0].question == "What is the brand of this camera?" and no_ocr.info["use_ocr"] is False


def test_textvqa_sources_agree(tmp_path):
    fx.write_textvqa_hf(tmp_path / "disk")
    fx.write_textvqa_hf(tmp_path / "parquet", "parquet")
    fx.write_textvqa_llava(tmp_path / "llava")
    prints = {load_dataset(textvqa_cfg(tmp_path / "disk")).info["fingerprint"],
              load_dataset(textvqa_cfg(tmp_path / "parquet")).info["fingerprint"],
              load_dataset(textvqa_cfg(tmp_path / "llava", source="llava")).info["fingerprint"]}
    assert len(prints) == 1


def test_textvqa_llava_same_question_twice_on_one_image(tmp_path):
    """Two annotations with the same (image, question) key go to the JSONL lines in order."""
    questions = [(1, "aaaa", "what is it?", ["x"] * 10, ["X"]), (2, "aaaa", "what is it?", ["y"] * 10, ["X"])]
    fx.write_textvqa_llava(tmp_path, questions=questions)
    dataset = load_dataset(textvqa_cfg(tmp_path, source="llava"))
    assert [(r.question_id, r.answers[0]) for r in dataset] == [("1", "x"), ("2", "y")]


def test_textvqa_full_split_count_is_checked(tmp_path):
    fx.write_textvqa_hf(tmp_path)
    with pytest.raises(UserError, match="TextVQA val has 5,000 questions, but .* gave 4"):
        load_dataset(textvqa_cfg(tmp_path, expect_full=True))


def test_textvqa_ocr_requested_but_absent(tmp_path):
    fx.write_textvqa_llava(tmp_path, with_ocr=False)
    with pytest.raises(UserError, match="use_ocr=true but .* has no 'Reference OCR token' lines"):
        load_dataset(textvqa_cfg(tmp_path, source="llava"))
    assert load_dataset(textvqa_cfg(tmp_path, source="llava", use_ocr=False)).info["use_ocr"] is False


def test_textvqa_missing_column(tmp_path):
    fx.write_textvqa_hf(tmp_path, drop_column="ocr_tokens")
    with pytest.raises(UserError, match=r"TextVQA questions in .* lack column\(s\) ocr_tokens"):
        load_dataset(textvqa_cfg(tmp_path))
    assert len(load_dataset(textvqa_cfg(tmp_path, use_ocr=False))) == 4  # not needed without OCR


def test_textvqa_test_split_has_no_answers(tmp_path):
    fx.write_textvqa_hf(tmp_path, split="test", answers_override=[])
    with pytest.raises(UserError, match="has no answers; the test split has none"):
        load_dataset(textvqa_cfg(tmp_path, split="test"))


def test_textvqa_wrong_split(tmp_path):
    fx.write_textvqa_hf(tmp_path, "parquet", split="train")
    with pytest.raises(UserError, match=r"no parquet files for split 'validation'.*train-00000-of-00002.parquet"):
        load_dataset(textvqa_cfg(tmp_path))


def test_textvqa_llava_bad_inputs(tmp_path):
    fx.write_textvqa_llava(tmp_path)
    annotations = tmp_path / "TextVQA_0.5.1_val.json"
    content = json.loads(annotations.read_text())
    content["data"] = content["data"][:-1]
    annotations.write_text(json.dumps(content))
    with pytest.raises(UserError, match=r":4: no annotation in TextVQA_0.5.1_val.json for image 2b538a43dd933fc1"):
        load_dataset(textvqa_cfg(tmp_path, source="llava"))
    annotations.write_text("{not json")
    with pytest.raises(UserError, match="TextVQA_0.5.1_val.json is not valid JSON"):
        load_dataset(textvqa_cfg(tmp_path, source="llava"))
    with pytest.raises(UserError, match=r"image folder .*elsewhere.* does not exist"):
        load_dataset(textvqa_cfg(tmp_path, source="llava", image_folder=str(tmp_path / "elsewhere")))


def test_textvqa_hf_folder_without_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds neither a save_to_disk dataset .* nor parquet files"):
        load_dataset(textvqa_cfg(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------ subsets


def _records(per_image: dict[str, int]) -> list[Record]:
    records = []
    for image, count in per_image.items():
        for i in range(count):
            records.append(Record(question_id=f"{image}-{i}", question="q", answers=["a"], image=f"{image}.jpg",
                                  image_id=image))
    # interleave images so that "original order" is not simply grouped by image
    return sorted(records, key=lambda r: (int(r.question_id.split("-")[1]), r.image_id))


def test_stratified_subset_covers_every_image():
    records = _records({"a": 10, "b": 1, "c": 3, "d": 2, "e": 6})
    chosen = stratified_subset(records, 7, seed=0)
    assert len(chosen) == 7 and len({r.question_id for r in chosen}) == 7
    assert {r.image_id for r in chosen} == {"a", "b", "c", "d", "e"}  # n >= 5 images: all present
    counts = {i: sum(r.image_id == i for r in chosen) for i in "abcde"}
    assert max(counts.values()) <= 2  # round-robin: no image gives a third before all gave a second
    positions = [records.index(r) for r in chosen]
    assert positions == sorted(positions)  # original order


def test_stratified_subset_fewer_than_images():
    records = _records({c: 3 for c in "abcdefgh"})
    chosen = stratified_subset(records, 5, seed=1)
    assert len({r.image_id for r in chosen}) == 5  # one question from each of 5 images
    image_sets = {frozenset(r.image_id for r in stratified_subset(records, 5, seed=s)) for s in range(6)}
    assert len(image_sets) > 1  # which images depends on the seed


def test_stratified_subset_seeded_and_order_independent():
    records = _records({c: 4 for c in "abcdefghij"})
    first = [r.question_id for r in stratified_subset(records, 13, seed=7)]
    assert first == [r.question_id for r in stratified_subset(records, 13, seed=7)]
    assert first != [r.question_id for r in stratified_subset(records, 13, seed=8)]
    shuffled = list(reversed(records))
    assert sorted(first) == sorted(r.question_id for r in stratified_subset(shuffled, 13, seed=7))


def test_stratified_subset_edges():
    records = _records({"a": 2, "b": 2})
    assert stratified_subset(records, 10, seed=0) == records
    with pytest.raises(UserError, match="positive integer"):
        stratified_subset(records, 0, seed=0)


def test_hf_table_images_are_decoded_raster_only():
    """Images in a datasets.Dataset reach PIL through the project's raster-only open, not datasets' own
    decoding (which would hand a PostScript cell to PIL's EPS plugin, i.e. Ghostscript where installed)."""
    import io

    from datasets import Dataset, Features, Image as ImageFeature, Value
    from PIL import Image, UnidentifiedImageError

    from eval.gqa import HFTable

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    assert Image.open(io.BytesIO(postscript)).format == "EPS"  # what an unrestricted open would do
    cells = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": postscript, "path": None}]
    table = HFTable(Dataset.from_dict({"image": cells, "id": ["a", "b"]},
                                      features=Features({"image": ImageFeature(), "id": Value("string")})), "fixture")
    image = table.image(0)
    assert (image.format, image.size, image.getpixel((0, 0))) == ("PNG", (8, 8), (200, 10, 10))
    with pytest.raises(UnidentifiedImageError):
        table.image(1)
