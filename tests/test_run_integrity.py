"""Run integrity (issue 18): a run folder means one question set and one set of weights; it is locked while a
run writes it; its metrics are over a stated question set; every bad input is a one-line error."""
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import harness.results as results
import harness.runner as runner
from eval.fixtures import write_local_fixture
from eval.reports import ReportError, Run, check_one_version, load_runs
from harness.identity import Sha256Memo, model_identity
from harness.lock import RunFolderBusy, RunLock
from harness.settings import check_config
from harness.sweeps import finished_run
from svdprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def base(data, out, *extra):
    return ["model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={data}", f"output_dir={out}", "max_new_tokens=1",
            "progress=false", "method=svd", "budget=16", *extra]


def run_dirs(out):
    return sorted(p.parent for p in Path(out).glob("*/*/*/predictions.jsonl"))


def answers(folder):
    return {r["question_id"]: r["prediction"] for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}


def relabel(src, dst, answer=None, image_from=None):
    """A copy of fixture ``src`` with the same question ids; other answers and/or other image files."""
    shutil.copytree(src, dst)
    lines = [json.loads(x) for x in (dst / "questions.jsonl").read_text().splitlines()]
    if answer is not None:
        for line in lines:
            line["answers"] = [answer]
            line.pop("answer", None)
    (dst / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if image_from is not None:
        for image in (dst / "images").iterdir():
            image.write_bytes((image_from / "images" / image.name).read_bytes())
    return dst


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two local datasets with one id set: 'a' (the fixture), 'b' (other images, every answer 'red')."""
    root = tmp_path_factory.mktemp("sets")
    a = write_local_fixture(root / "a", questions=12, images=4, seed=0)
    other = write_local_fixture(root / "other", questions=12, images=4, seed=5)
    b = relabel(a, root / "b", answer="red", image_from=other)
    return a, b


# ------------------------------------------------------------------------------------------ identity


def test_two_datasets_with_one_id_set_never_share_a_run(two_sets, tmp_path):
    a, b = two_sets
    first = runner.run(make_cfg(base(a, tmp_path, "limit=4")))
    second = runner.run(make_cfg(base(b, tmp_path, "limit=4")))
    assert len(run_dirs(tmp_path)) == 2 and first["run_name"] != second["run_name"]
    assert second["newly_answered"] == 4 and first["dataset_fingerprint"] != second["dataset_fingerprint"]
    [folder_b] = [d for d in run_dirs(tmp_path) if d.name == second["run_name"]]
    rows_b = [json.loads(x) for x in (folder_b / "predictions.jsonl").read_text().splitlines()]
    assert all(r["answers"] == ["red"] for r in rows_b)  # b's own answers, not a's
    red = sum(r["prediction"].strip().rstrip(".").lower() == "red" for r in rows_b)
    assert second["accuracy"] == pytest.approx(100 * red / 4)


def test_only_the_answers_changed_is_another_run(two_sets, tmp_path):
    a, _ = two_sets
    a2 = relabel(a, tmp_path / "a2", answer="blue")
    one = runner.run(make_cfg(base(a, tmp_path / "out", "limit=2")))
    two = runner.run(make_cfg(base(a2, tmp_path / "out", "limit=2")))
    assert one["config_hash"] != two["config_hash"]


def test_same_run_name_on_other_data_is_a_one_line_error(two_sets, tmp_path):
    a, b = two_sets
    runner.run(make_cfg(base(a, tmp_path, "limit=2", "run_name=mine")))
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(b, tmp_path, "limit=2", "run_name=mine")))
    assert "holds predictions of another configuration" in str(error.value)
    assert "other questions/images" in str(error.value) and "\n" not in str(error.value)


def test_copied_dataset_is_the_same_run(two_sets, tmp_path):
    a, _ = two_sets
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    one = runner.run(make_cfg(base(a, tmp_path / "out", "limit=2")))
    two = runner.run(make_cfg(base(copy, tmp_path / "out", "limit=3")))
    assert one["run_name"] == two["run_name"] and two["newly_answered"] == 1


@pytest.fixture()
def mini_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(ROOT / "checkpoints" / "mini", folder)
    return folder


def mini_base(data, out, model, *extra):
    return ["model=mini", f"model.path={model}", "model.device=cpu", "dataset=local", f"dataset.path={data}",
            f"output_dir={out}", "max_new_tokens=2", "progress=false", "method=svd", "budget=16", "limit=2", *extra]


def test_two_weights_in_one_model_folder(two_sets, mini_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    a, _ = two_sets
    first = runner.run(make_cfg(mini_base(a, tmp_path / "out", mini_copy)))
    weights = mini_copy / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5  # "retrained"
    save_file(tensors, weights, metadata={"format": "pt"})
    second = runner.run(make_cfg(mini_base(a, tmp_path / "out", mini_copy)))
    assert second["model_fingerprint"] != first["model_fingerprint"]
    assert second["run_name"] != first["run_name"] and second["newly_answered"] == 2
    assert first["model"] == second["model"] == str(mini_copy.resolve())
    runner.run(make_cfg(mini_base(a, tmp_path / "fixed", mini_copy, "run_name=mine")))
    shutil.copy(ROOT / "checkpoints" / "mini" / "model.safetensors", weights)  # back to the first weights
    with pytest.raises(UserError, match="other model weights"):
        runner.run(make_cfg(mini_base(a, tmp_path / "fixed", mini_copy, "run_name=mine")))


def test_model_name_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    memo = Sha256Memo(tmp_path / "memo.json")
    cfg = make_cfg(["model=mini"]).model
    at_root = model_identity(cfg, memo)
    monkeypatch.chdir(tmp_path)
    elsewhere = model_identity(cfg, memo)
    absolute = make_cfg(["model=mini", f"model.path={ROOT / 'checkpoints' / 'mini'}"]).model
    assert at_root == elsewhere == model_identity(absolute, memo)
    assert at_root["name"] == "checkpoints/mini" and len(at_root["fingerprint"]) == 64
    shutil.copytree(ROOT / "checkpoints" / "mini", tmp_path / "copy")
    copied = model_identity(make_cfg(["model=mini", f"model.path={tmp_path / 'copy'}"]).model, memo)
    assert copied["fingerprint"] == at_root["fingerprint"] and copied["name"] == str((tmp_path / "copy").resolve())


# ----------------------------------------------------------------------------- one stated question set


def test_metrics_are_over_every_answered_question(tmp_path):
    data = write_local_fixture(tmp_path / "d", questions=6, images=2, seed=3)
    big = runner.run(make_cfg(base(data, tmp_path / "out", "limit=4")))
    small = runner.run(make_cfg(base(data, tmp_path / "out", "limit=2")))
    assert (small["n"], small["this_run"]["n"], small["newly_answered"]) == (4, 2, 0)
    assert small["accuracy"] == pytest.approx(big["accuracy"])
    assert small["selection"] == "the first 4 questions (limit=4)"
    [run] = load_runs(tmp_path / "out")
    assert run.n == 4 and len(run.scores()) == 4  # the table and the rescoring reports read one question set
    assert finished_run(make_cfg(base(data, tmp_path / "out", "limit=2")))
    assert not finished_run(make_cfg(base(data, tmp_path / "out", "limit=5")))
    full = runner.run(make_cfg(base(data, tmp_path / "out")))
    assert full["selection"] == "all 6 questions" and full["this_run"]["accuracy"] == full["accuracy"]


def test_reports_refuse_two_versions_of_one_model(tmp_path):
    def run(fingerprint, name):
        return Run(tmp_path / name, {"model": "m", "dataset": "gqa", "model_fingerprint": fingerprint})

    check_one_version([run("a", "x"), run("a", "y"), run(None, "z")])
    with pytest.raises(ReportError, match="runs of model m on 2 different weights"):
        check_one_version([run("a", "x"), run("b", "y")])


# ------------------------------------------------------------------------------------------- the lock


def test_lock_is_exclusive_and_leaves_nothing(tmp_path):
    folder = tmp_path / "out" / "local" / "svd" / "run"
    with RunLock(folder):
        with pytest.raises(RunFolderBusy, match=f"is in use by another run \\(pid {os.getpid()} on "):
            RunLock(folder).acquire()
    assert not (tmp_path / "out").exists()  # nothing was written: the folders the lock made are gone


def _default_sigint() -> None:
    # a shell starts background jobs (``cmd &``, nohup) with SIGINT ignored, and children inherit that: Python
    # then installs no KeyboardInterrupt handler. Ctrl-C handling is what is tested, so start from the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kwargs)


def wait_for_lines(path: Path, process, n: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    raise AssertionError(f"no prediction line in {path} after {timeout} s")


@pytest.fixture(scope="module")
def slow_set(tmp_path_factory):
    return write_local_fixture(tmp_path_factory.mktemp("slow"), questions=40, images=4, seed=1)


def test_second_process_and_kill_9(slow_set, tmp_path):
    """A real run is stopped after its first answer (SIGSTOP: it holds the lock, frozen); a second process on
    the same run folder is refused in one line; the first is killed with SIGKILL; the same command then
    recovers the stale lock and finishes with the answers of an uninterrupted run."""
    args = base(slow_set, tmp_path / "out", "max_new_tokens=2", "run_name=r")
    folder = tmp_path / "out" / "local" / "svd" / "r"
    first = cli(*args)
    try:
        wait_for_lines(folder / "predictions.jsonl", first)
        first.send_signal(signal.SIGSTOP)
        answered = (folder / "predictions.jsonl").read_bytes().count(b"\n")
        assert answered < 40
        second = cli(*args)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2 and out == ""
        assert err == (f"error: {folder} is in use by another run (pid {first.pid} on {os.uname().nodename}, "
                       f"started {json.loads((folder / '.lock').read_text())['started']}); wait for it to finish "
                       "or stop it, then rerun the same command\n")
        assert (folder / "predictions.jsonl").read_bytes().count(b"\n") == answered
    finally:
        first.kill()  # SIGKILL, also for a stopped process
        first.wait()
    assert first.returncode == -signal.SIGKILL and (folder / ".lock").exists()  # a stale lock stays behind
    third = cli(*args)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    clean = runner.run(make_cfg(base(slow_set, tmp_path / "clean", "max_new_tokens=2")))
    [clean_dir] = run_dirs(tmp_path / "clean")
    assert answers(folder) == answers(clean_dir) and len(answers(folder)) == 40
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == 40
    assert json.loads((folder / "metrics.json").read_text())["accuracy"] == clean["accuracy"]
    assert not (folder / ".lock").exists()


def test_ctrl_c_is_one_line(slow_set, tmp_path):
    args = base(slow_set, tmp_path, "max_new_tokens=2", "run_name=r")
    predictions = tmp_path / "local" / "svd" / "r" / "predictions.jsonl"
    process = cli(*args)
    wait_for_lines(predictions, process)
    # frozen mid-run before the interrupt, so that a fast machine cannot finish the run first (the interrupt
    # is delivered when it resumes)
    process.send_signal(signal.SIGSTOP)
    assert predictions.read_bytes().count(b"\n") < 40
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err == "interrupted, rerun the same command to continue\n"
    assert not (tmp_path / "local" / "svd" / "r" / ".lock").exists()


def test_repeated_lines_are_repaired(shapes_folder, tmp_path, capsys):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=3")))
    [folder] = run_dirs(tmp_path)
    path = folder / "predictions.jsonl"
    expected = path.read_text()
    path.write_text(expected + expected)  # what two unlocked processes used to leave
    capsys.readouterr()
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=3")))
    assert path.read_text() == expected and metrics["n"] == 3 and metrics["newly_answered"] == 0
    assert capsys.readouterr().err == (f"note: {path} held 3 repeated line(s) (two processes wrote it at once?); "
                                       "kept the first line of each question (0 repeat(s) had another answer)\n")


def test_corrupt_line_in_the_middle(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=4")))
    [folder] = run_dirs(tmp_path)
    path = folder / "predictions.jsonl"
    good = answers(folder)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"question_id": "q00002", "predic\x00\x00tion"\n'
    path.write_text("".join(lines))
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=4")))
    assert str(error.value) == (f"{path}:3: corrupt line (not a JSON prediction); rerun the same command with "
                                "repair_predictions=true to move it to predictions.jsonl.bad and answer that "
                                "question again")
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=4", "repair_predictions=true")))
    assert metrics["newly_answered"] == 1 and answers(folder) == good
    assert (folder / "predictions.jsonl.bad").read_text() == lines[2]


def test_disk_full_keeps_every_answer(shapes_folder, tmp_path, monkeypatch):
    real_write, calls = results.PredictionWriter.write, []

    def write_then_fill_the_disk(self, rows):
        calls.append(1)
        if len(calls) == 3:
            self._path.open("ab").write(b'{"question_id": "q000')  # what the disk took before it was full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, rows)

    monkeypatch.setattr(results.PredictionWriter, "write", write_then_fill_the_disk)
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=5", "batch_size=2")))
    [folder] = run_dirs(tmp_path)
    assert str(error.value) == (f"disk full while writing {folder}: every answer written so far is kept; free some "
                                "space and rerun the same command to continue")
    assert not (folder / ".lock").exists() and not (folder / "metrics.json").exists()
    monkeypatch.setattr(results.PredictionWriter, "write", real_write)
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=5", "batch_size=2")))
    assert metrics["newly_answered"] == 1 and metrics["n"] == 5


# ------------------------------------------------------------------------------------------ bad input


def write_set(folder: Path, images: dict[str, bytes], questions_bytes: bytes | None = None) -> Path:
    (folder / "images").mkdir(parents=True)
    for name, data in images.items():
        (folder / "images" / name).write_bytes(data)
    if questions_bytes is None:
        questions_bytes = "".join(json.dumps({"question_id": f"q{i}", "image": name, "question": "What color?",
                                              "answer": "red"}) + "\n" for i, name in enumerate(images)).encode()
    (folder / "questions.jsonl").write_bytes(questions_bytes)
    return folder


def jpeg(size=(64, 48)) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (IHDR only): what a decompression bomb looks like to PIL."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def expect_error(overrides, message, out):
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(overrides))
    assert str(error.value) == message
    assert not out.exists() or not any(out.iterdir())


def test_non_utf8_questions_file(tmp_path):
    good = json.dumps({"question_id": "1", "image": "a.jpg", "question": "Q?", "answer": "a"}).encode() + b"\n"
    bad = b'{"question_id": "2", "image": "a.jpg", "question": "caf\xe9?", "answer": "a"}\n'
    data = write_set(tmp_path / "d", {"a.jpg": jpeg()}, good + bad)
    expect_error(base(data, tmp_path / "out"), f"{data / 'questions.jsonl'}:2: not UTF-8 text (byte 0xe9 at column "
                 "56); save the file as UTF-8", tmp_path / "out")


def test_decompression_bomb(tmp_path):
    data = write_set(tmp_path / "d", {"a.jpg": jpeg(), "b.png": png_header(30000, 30000)})
    expect_error(base(data, tmp_path / "out"), f"cannot read image '{data / 'images' / 'b.png'}' of question 'q1': "
                 "too large to decode safely (over 178,956,970 pixels, PIL's decompression-bomb limit)",
                 tmp_path / "out")


def test_only_raster_formats_are_decoded(tmp_path):
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    data = write_set(tmp_path / "d", {"a.jpg": postscript})
    expect_error(base(data, tmp_path / "out"), f"cannot read image '{data / 'images' / 'a.jpg'}' of question 'q0': "
                 "not an image in an allowed format (JPEG, PNG, WEBP, BMP, GIF, TIFF)", tmp_path / "out")


def test_truncated_jpeg_mid_run(tmp_path, capsys):
    whole = jpeg((200, 160))
    data = write_set(tmp_path / "d", {"a.jpg": jpeg(), "b.jpg": whole[: len(whole) // 2], "c.jpg": jpeg()})
    out = tmp_path / "out"
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(data, out)))
    message = str(error.value)
    assert message.startswith(f"cannot read image '{data / 'images' / 'b.jpg'}' of question 'q1': OSError: ")
    assert message.endswith("; the answers so far are kept: fix or remove the image and rerun the same command, "
                            "or add on_bad_image=skip to leave such questions out") and "\n" not in message
    [folder] = run_dirs(out)
    assert list(answers(folder)) == ["q0"]
    metrics = runner.run(make_cfg(base(data, out, "on_bad_image=skip")))
    assert metrics["skipped_unreadable_images"] == ["q1"] and metrics["n"] == 2
    assert metrics["selection"] == "all 3 questions, less 1 skipped (unreadable image): 2 answered"
    assert "note: skipped: cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["+tau=0.5"], "unknown setting 'tau'; did you mean method.params.tau=0.5?"),
    (["+budgett=3"], "unknown setting 'budgett'; did you mean budget?"),
    (["max_new_tokens=0"], "max_new_tokens=0; allowed: an integer >= 1"),
    (["threads=0"], "threads=0; allowed: an integer >= 1 (or null)"),
    (["on_bad_image=ignore"], "on_bad_image='ignore'; allowed: error, skip"),
    (["repair_predictions=maybe"], "repair_predictions='maybe'; allowed: true, false"),
])
def test_bad_settings(shapes_folder, tmp_path, overrides, message):
    expect_error(base(shapes_folder, tmp_path, *overrides), message, tmp_path)


def test_values_are_checked_before_data(tmp_path):
    """budget=0 with the default dataset (GQA, not on disk) reports the budget, not the missing folder."""
    with pytest.raises(UserError, match=r"^budget=0 is outside 1\.\.576 \(vision tokens of llava-1.5-7b\)$"):
        runner.run(make_cfg([f"output_dir={tmp_path}", "budget=0"]))
    with pytest.raises(UserError, match=r"^dataset=local needs dataset.path=<folder with questions.jsonl and images/>$"):
        check_config(make_cfg(["dataset=local", "model=tiny"]))


def test_cli_checks_settings_before_skipping(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=1")))
    result = subprocess.run([sys.executable, "run.py", *base(shapes_folder, tmp_path, "limit=1", "+tau=0.5")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: unknown setting 'tau'; did you mean method.params.tau=0.5?\n"


def test_prompt_beyond_max_positions_warns(tmp_path, capsys):
    data = write_set(tmp_path / "d", {"a.jpg": jpeg()}, json.dumps(
        {"question_id": "long", "image": "a.jpg", "question": "red " * 2100, "answer": "red"}).encode() + b"\n")
    metrics = runner.run(make_cfg(base(data, tmp_path / "out", "max_new_tokens=1")))
    assert metrics["over_max_positions"] == 1 and metrics["max_position_embeddings"] == 4096
    err = capsys.readouterr().err
    assert err.startswith("warning: question 'long' needs ") and "more than tiny's max_position_embeddings=4096" in err


def test_threads_setting(shapes_folder, tmp_path):
    before = torch.get_num_threads()
    try:
        runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=1", "threads=1")))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_eval_mini_small_runs_do_not_overwrite_committed_results():
    from harness import mini_eval as eval_mini
    committed, all_budgets = ROOT / "results" / "mini", eval_mini.BUDGETS
    assert eval_mini.output_folder(1000, all_budgets, None, False) == committed
    assert eval_mini.output_folder(240, (64, 16), None, True) == committed  # --regression: asked for
    scratch = committed / "_scratch"
    assert eval_mini.output_folder(200, all_budgets, None, False) == scratch / "limit200-k192_128_64_32_16"
    assert eval_mini.output_folder(1000, (64,), None, False) == scratch / "limit1000-k64"
    assert eval_mini.output_folder(1000, all_budgets, ["svd"], False) == scratch / "limit1000-k192_128_64_32_16-svd"


@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet"])
def test_image_tables_are_fingerprinted_by_content(tmp_path, fmt):
    """GQA's images read from arrow / parquet files: a copy elsewhere is the same question set, other image
    bytes are another one."""
    from tests import fixtures_eval as fx
    from eval.datasets import load_dataset
    from harness.identity import dataset_fingerprint

    def fingerprint(root):
        cfg = fx.config("gqa", source="hf_disk", path=str(root), expect_full=False)
        return dataset_fingerprint(load_dataset(cfg), Sha256Memo(tmp_path / "memo.json"))

    fx.write_gqa_hf(tmp_path / "a", fmt)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    fx.write_gqa_hf(tmp_path / "other", fmt, corrupt=fx.GQA_IMAGES[0])
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "copy") != fingerprint(tmp_path / "other")


def test_trims_clip_weights_are_part_of_the_run(two_sets, tmp_path):
    """TRIM reads weights of its own (clip_path): retrained CLIP weights in the same folder are another run."""
    from svdprune.families.llava15 import build_tiny
    from svdprune.models import build_tiny_clip

    vision_config = build_tiny(vision_layers=3, text_layers=4).model.config.vision_config
    folder = tmp_path / "clip"
    clip, tokenizer = build_tiny_clip(vision_config, seed=0)
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    a, _ = two_sets
    overrides = ["model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={a}",
                 f"output_dir={tmp_path / 'out'}", "max_new_tokens=1", "progress=false", "method=trim",
                 f"method.params.clip_path={folder}", "budget=16", "limit=2"]
    first = runner.run(make_cfg(overrides))
    build_tiny_clip(vision_config, seed=1)[0].save_pretrained(folder)  # "retrained"
    second = runner.run(make_cfg(overrides))
    assert first["method_weights_fingerprint"] != second["method_weights_fingerprint"]
    assert first["run_name"] != second["run_name"] and second["newly_answered"] == 2
    with pytest.raises(UserError, match=r"other method weights \(clip_path\)"):
        runner.run(make_cfg(overrides + ["run_name=" + first["run_name"]]))
    plain = runner.run(make_cfg(overrides[:8] + ["method=svd", "budget=16", "limit=2"]))
    assert "method_weights_fingerprint" not in plain  # methods without weights of their own: hash as before
