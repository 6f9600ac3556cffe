"""run.py end to end on the tiny model: results layout, resume, batching, and every bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness.runner as runner
import harness.schedule as schedule
from svdprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def base(shapes_folder, out, *extra):
    shallow = [] if any(e.startswith("model=") for e in extra) else ["model.vision_layers=3", "model.text_layers=4"]
    return ["model=tiny", *shallow, "dataset=local",  # a shallow tiny model: these tests check the plumbing
            f"dataset.path={shapes_folder}", f"output_dir={out}",
            "max_new_tokens=6", "progress=false", *extra]


def predictions(out):
    [path] = list(Path(out).glob("*/*/*/predictions.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_predictions_and_metrics(shapes_folder, tmp_path, capsys):
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "method=svd", "budget=16", "limit=10")))
    rows = predictions(tmp_path)
    # written as answered: grouped by image (q0-q9 are on images q % 8), images in order of first question
    assert [r["question_id"] for r in rows] == [f"q{i:05d}" for i in (0, 8, 1, 9, 2, 3, 4, 5, 6, 7)]
    for row in rows:
        assert {"question_id", "prompt", "prediction", "answers", "kept_tokens", "config_hash", "rank",
                "kept_indices"} <= set(row)
        assert row["kept_tokens"] == 16 and len(row["kept_indices"]) == 16
        assert row["prompt"].startswith("A chat between") and "<image>" in row["prompt"]
    [metrics_file] = list(tmp_path.glob("local/svd/*/metrics.json"))
    on_disk = json.loads(metrics_file.read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["n"] == 10 and on_disk["budget"] == 16 and on_disk["method_params"]["tau"] == 0.9
    assert on_disk["model"] == "tiny" and 0 <= on_disk["accuracy"] <= 100
    assert on_disk["tokens_per_s"] > 0 and on_disk["wall_time_s"] > 0
    assert set(on_disk["by_type"]) == {"color", "shape"}  # q0-7 colour, q8-15 shape
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("local svd k=16: accuracy")


def test_accuracy_is_recomputed_from_predictions(shapes_folder, tmp_path):
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "method=vanilla", "limit=6")))
    rows = predictions(tmp_path)
    correct = sum(r["prediction"].strip().rstrip(".").lower() == r["answers"][0].lower() for r in rows)
    assert metrics["accuracy"] == pytest.approx(100 * correct / 6)
    assert metrics["budget"] == 576 and all(r["kept_tokens"] == 576 for r in rows)


def test_interrupted_run_resumes_without_loss_or_duplicates(shapes_folder, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    runner.run(make_cfg(base(shapes_folder, clean, "budget=32", "batch_size=3")))
    expected = {r["question_id"]: r["prediction"] for r in predictions(clean)}

    interrupted = tmp_path / "interrupted"
    real_generate, calls = schedule.generate_by_image, []

    def generate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C / a kill between batches does
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(schedule, "generate_by_image", generate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.run(make_cfg(base(shapes_folder, interrupted, "budget=32", "batch_size=3")))
    monkeypatch.setattr(schedule, "generate_by_image", real_generate)
    [path] = list(interrupted.glob("*/*/*/predictions.jsonl"))
    assert len(path.read_text().splitlines()) == 6
    assert not (path.parent / "metrics.json").exists()
    with path.open("a") as f:  # a kill in the middle of a write leaves a partial line
        f.write('{"question_id": "q00006", "predic')

    metrics = runner.run(make_cfg(base(shapes_folder, interrupted, "budget=32", "batch_size=3")))
    rows = predictions(interrupted)
    assert sorted(r["question_id"] for r in rows) == sorted(expected)  # each question once
    assert {r["question_id"]: r["prediction"] for r in rows} == expected
    assert metrics["newly_answered"] == 24 - 6 and metrics["n"] == 24


def test_batch_size_does_not_change_predictions(shapes_folder, tmp_path):
    one, four = tmp_path / "b1", tmp_path / "b4"
    runner.run(make_cfg(base(shapes_folder, one, "budget=16", "batch_size=1", "limit=8")))
    runner.run(make_cfg(base(shapes_folder, four, "budget=16", "batch_size=4", "limit=8")))
    drop = lambda r: {k: v for k, v in r.items()}  # noqa: E731
    assert [drop(r) for r in predictions(one)] == [drop(r) for r in predictions(four)]


def test_larger_limit_continues_the_same_run(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=4")))
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=9")))
    assert metrics["newly_answered"] == 5 and len(predictions(tmp_path)) == 9


def test_other_config_in_same_run_folder_is_refused(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=2", "run_name=mine")))
    with pytest.raises(UserError, match="another configuration"):
        runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=2", "run_name=mine", "method.params.tau=0.5")))


def write_questions(folder, lines, image_bytes=None):
    (folder / "images").mkdir(parents=True)
    if image_bytes is not None:
        (folder / "images" / "a.jpg").write_bytes(image_bytes)
    (folder / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.mark.parametrize("overrides, message", [
    (["budget=0"], "budget=0 is outside 1..576"),
    (["budget=577"], "budget=577 is outside 1..576"),
    (["method.params.tau=0"], "svd: method.params.tau=0; allowed: a number in (0, 1]"),
    (["method.params.tau=1.5"], "svd: method.params.tau=1.5; allowed: a number in (0, 1]"),
    (["method.params.weighting=foo"], "weighting='foo'; allowed: uniform, sigma"),
    (["method.name=nope"], "unknown method 'nope'; allowed:"),
    (["+method.params.tua=0.5"], "method 'svd' has no parameter 'tua'; allowed: tau, center, weighting, energy, solver"),
    (["model.kind=huge"], "unknown model.kind 'huge'"),
    (["model.dtype=int3"], "unknown model.dtype 'int3'"),
    (["limit=0"], "limit=0 must be a positive integer"),
])
def test_bad_config_values(shapes_folder, tmp_path, overrides, message):
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(shapes_folder, tmp_path, *overrides)))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_missing_model_folder(shapes_folder, tmp_path):
    cfg = make_cfg(base(shapes_folder, tmp_path, "model=llava15_7b", f"model.path={tmp_path / 'nowhere'}"))
    with pytest.raises(UserError, match="no config.json there"):
        runner.run(cfg)
    assert not any(tmp_path.iterdir())


def test_bad_data(tmp_path):
    out = tmp_path / "out"
    good = {"question_id": "1", "image": "a.jpg", "question": "Q?", "answer": "a"}
    cases = {
        "missing folder": (tmp_path / "absent", "does not exist"),
        "empty questions": (write_questions(tmp_path / "empty", []), "is empty"),
        "unreadable image": (write_questions(tmp_path / "bad", [good], b"not a jpeg"), "cannot read image"),
        "missing image": (write_questions(tmp_path / "noimg", [good]), "cannot read image"),
        "bad line": (write_questions(tmp_path / "badline", [{"image": "a.jpg"}], b""), "bad question line"),
    }
    for name, (folder, message) in cases.items():
        with pytest.raises(UserError) as error:
            runner.run(make_cfg(base(folder, out)))
        assert message in str(error.value), name
        assert not out.exists(), name


def run_cli(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_reports_bad_input_in_one_line(shapes_folder, tmp_path):
    result = run_cli(*base(shapes_folder, tmp_path, "budget=600"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: budget=600 is outside 1..576 (vision tokens of tiny)"
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())
    unknown = run_cli(*base(shapes_folder, tmp_path, "method=nope"))
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown method 'nope'; allowed: ")
    assert unknown.stderr.count("\n") == 1 and "svd" in unknown.stderr and "vanilla" in unknown.stderr


def test_cli_main_path_runs(shapes_folder, tmp_path):
    result = run_cli(*base(shapes_folder, tmp_path, "method=svd", "budget=32", "limit=3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("local svd k=32: accuracy")
    assert len(predictions(tmp_path)) == 3
