"""Run integrity, round 3 (issue 25): the last tracebacks of a new user's first hour, each a one-line error (or
the behaviour the README promises), checked before any model work where it can be."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness.identity as identity
import harness.runner as runner
from eval.fixtures import write_local_fixture
from harness import sweep_status
from harness.identity import Sha256Memo
from harness.settings import check_overrides
from harness.shard import Shard
from harness.sweeps import skip_reason
from svdprune.errors import UserError
from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
make_table1 = load_script("make_table1")
report_extras = load_script("report_extras")


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def base(data, out, *extra):
    return ["model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={data}",
            f"output_dir={out}", "max_new_tokens=1", "progress=false", "method=svd", "budget=16", *extra]


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


def rewrite_questions(folder: Path, edit) -> Path:
    path = folder / "questions.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for i, line in enumerate(lines):
        edit(i, line)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ------------------------------------------------------------------------ 1. questions without answers


def test_a_question_without_answer_is_refused_before_any_model_work(tmp_path, monkeypatch):
    data = write_local_fixture(tmp_path / "d", questions=6, images=2, seed=0)
    questions = rewrite_questions(data, lambda i, q: (q.pop("answer", None), q.pop("answers", None)) if i == 3 else None)
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(data, tmp_path / "out")))
    assert str(error.value) == (f"{questions}:4: no reference answer (answers or answer) while other questions have "
                                "one; give every question its answers, or none for an unscored run")
    assert not (tmp_path / "out").exists()


def test_questions_without_any_answer_are_an_unscored_run(tmp_path, capsys):
    data = write_local_fixture(tmp_path / "d", questions=6, images=2, seed=0)
    rewrite_questions(data, lambda i, q: (q.pop("answer", None), q.pop("answers", None)))
    metrics = runner.run(make_cfg(base(data, tmp_path / "out")))
    assert metrics["scored"] is False and metrics["accuracy"] is None and metrics["n"] == 6
    assert metrics["this_run"]["accuracy"] is None and "by_type" not in metrics
    assert "accuracy n/a (unscored: no reference answers) on 6 questions" in capsys.readouterr().out
    # the reports leave unscored runs out, with a warning, instead of failing on them
    from eval.reports import load_runs

    with pytest.warns(UserWarning, match="an unscored run"):
        assert load_runs(tmp_path / "out") == []


# ------------------------------------------------------------------------ 2. one reader for every report


@pytest.fixture()
def corrupt_run(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path / "res", "limit=4")))
    [path] = (tmp_path / "res").glob("local/svd/*/predictions.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = '{"question_id": "q00001", "predic\x00tion"\n'
    path.write_text("".join(lines))
    return tmp_path / "res", path


def test_every_report_says_the_same_about_a_corrupt_line(corrupt_run, tmp_path, capsys):
    results, path = corrupt_run
    expected = (f"error: {path}:2: corrupt line (not a JSON prediction); rerun its run (the same run.py command) "
                "with repair_predictions=true to move it to predictions.jsonl.bad and answer that question again\n")
    assert report_extras.main(["ci", "--results", str(results), "--tables", str(tmp_path / "t"), "--boot", "10"]) == 2
    assert capsys.readouterr().err == expected
    assert make_table1.main(["--results", str(results), "--out", str(tmp_path / "t"), "--datasets", "local",
                             "--budgets", "16"]) == 2
    assert capsys.readouterr().err == expected
    assert not (tmp_path / "t").exists()


def test_reports_refuse_predictions_that_disagree_with_metrics(corrupt_run, tmp_path, capsys):
    results, path = corrupt_run
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))  # a line lost: 3 answers, metrics.json says 4
    assert make_table1.main(["--results", str(results), "--out", str(tmp_path / "t"), "--datasets", "local",
                             "--budgets", "16"]) == 2
    assert capsys.readouterr().err == (f"error: {path} answers 3 questions of this run, its metrics.json says n=4; "
                                       "rerun its run (the same run.py command) to bring them in line\n")


# ------------------------------------------------------------------------ 3. damaged multirun.yaml


@pytest.mark.parametrize("content, why", [
    (b"hydra: [1, 2\n", "not valid YAML: while parsing a flow sequence"),
    (b"- 1\n- 2\n", "a YAML list, expected a mapping with a 'hydra' section"),
    (b"", "the file is empty"),
    (b"hydra: 5\n", "no 'hydra.overrides.task' list and 'hydra.sweeper' section"),
    (b"hydra:\n  x: \xff\n", "not UTF-8 text: byte 0xff at offset 12"),
])
def test_a_damaged_multirun_yaml_is_one_line(tmp_path, capsys, content, why):
    path = tmp_path / "sweeps" / "s" / "multirun.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    for argument in (path, tmp_path):  # the file itself, and found under an output_dir
        assert sweep_status.main([str(argument)]) == 2
        assert capsys.readouterr().err == (f"error: {path}: not a sweep's multirun.yaml ({why}); rerun the sweep's "
                                           "command to save it again\n")


def test_sweep_status_on_a_missing_path(tmp_path, capsys):
    assert sweep_status.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nope'} does not exist (give an output_dir, a sweep "
                                       "folder or a multirun.yaml)\n")


# ------------------------------------------------------------------------ 4, 6. output_dir and run_name


def test_output_dir_that_is_a_file(shapes_folder, tmp_path):
    file = tmp_path / "results"
    file.write_text("not a folder")
    for out, where in ((file, "is a file"), (file / "sub", f"is under {str(file)!r}, which is a file")):
        with pytest.raises(UserError) as error:
            runner.run(make_cfg(base(shapes_folder, out)))
        assert str(error.value) == f"output_dir={str(out)!r} {where}, not a folder; choose a folder path"
    result = cli(*base(shapes_folder, file))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: output_dir={str(file)!r} is a file, not a folder; choose a folder path\n"


def test_run_folder_below_output_dir_that_is_a_file(shapes_folder, tmp_path):
    (tmp_path / "local").write_text("a file where the dataset's folder goes")
    with pytest.raises(UserError, match=r"^output_dir='.*/local/svd/r' is under '.*/local', which is a file, not a "
                                        r"folder; choose a folder path$"):
        runner.run(make_cfg(base(shapes_folder, tmp_path, "run_name=r")))


@pytest.mark.parametrize("name", ["a/b", "../../../x", ".", "..", ".hidden", "_scratch", "a\\b", " padded"])
def test_run_name_is_one_folder_name(shapes_folder, tmp_path, name):
    with pytest.raises(UserError) as error:
        runner.run(make_cfg(base(shapes_folder, tmp_path / "out", f"run_name='{name}'")))
    assert str(error.value) == (f"run_name={name!r}; allowed: one folder name (no '/', not starting with '.' or "
                                "'_', which the report scripts skip), or null for the default name")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_a_numeric_run_name_is_a_folder_name(shapes_folder, tmp_path):
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "run_name=7", "limit=1")))
    assert metrics["run_name"] == "7" and (tmp_path / "local" / "svd" / "7" / "metrics.json").is_file()


# ------------------------------------------------------------------------ 7. the fingerprint memo


def test_memo_sees_a_rewrite_with_its_mtime_restored(tmp_path):
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"a" * 64)
    memo = Sha256Memo(tmp_path / "memo.json")
    first = memo.digest(file)
    stat = file.stat()
    with file.open("r+b") as f:  # same inode, same size, other bytes
        f.write(b"b" * 64)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what `touch -d` does
    assert file.stat().st_mtime_ns == stat.st_mtime_ns and file.stat().st_size == stat.st_size
    assert memo.digest(file) != first
    memo.save()
    assert Sha256Memo(tmp_path / "memo.json").digest(file) == memo.digest(file)


# ------------------------------------------------------------------------ 8. config groups that do not exist


@pytest.mark.parametrize("override, message", [
    ("method=nope", "unknown method 'nope'; allowed: cdpruner, dart, divprune, fastervlm, fastv, flowcut, holov, "
                    "pooling, pyramiddrop, random, sparsevlm, svd, tokencarve, tome, trim, vanilla, visionzip, "
                    "vispruner"),
    ("dataset=nope", "unknown dataset 'nope'; allowed: easyvqa, gqa, local, scenes, textvqa"),
    ("model=nope", "unknown model 'nope'; allowed: "
                   + ", ".join(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))),
    ("experiment=nope", "unknown experiment 'nope'; allowed: table1, tau_ablation"),
    ("budget=[", "cannot parse the override 'budget=[': no viable alternative at input '[' (see Hydra's override "
                 "grammar)"),
])
def test_unknown_group_values_are_one_line(override, message):
    result = cli(override)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: {message}\n")


def test_group_values_in_a_sweep_are_checked():
    with pytest.raises(UserError, match="^unknown method 'nope'; allowed: "):
        check_overrides(["-m", "method=svd,nope", "budget=16,32"])
    check_overrides(["-m", "method=svd,fastv", "model=tiny", "+method.params.x=1", "~experiment",
                     "--cfg", "job", "hydra/launcher=basic"])  # valid: no error
    check_overrides(["--config-dir", "/elsewhere", "method=mine"])  # another config tree: Hydra checks it


# ------------------------------------------------------------------------ 5. Ctrl-C while starting


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # background shells start jobs with SIGINT ignored


def _mapped(pid: int, library: str) -> bool:
    """Whether the process has loaded a shared library: a moment inside an import that loads it."""
    return library in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("moment", ["importing hydra", "importing torch"])
def test_ctrl_c_while_starting_is_one_line(shapes_folder, tmp_path, moment):
    """Ctrl-C during the imports (before the configuration is composed, or while the runner imports torch)."""
    process = subprocess.Popen([sys.executable, "run.py", *base(shapes_folder, tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    # PyYAML's C extension is loaded while run.py imports hydra/omegaconf (not by Python's own start-up);
    # libtorch while the runner's modules are imported, after the configuration is composed
    library = "yaml/_yaml" if moment == "importing hydra" else "libtorch"
    deadline = time.monotonic() + 120
    while not _mapped(process.pid, library):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, "interrupted, rerun the same command to continue\n"), err[-2000:]


# ------------------------------------------------------------------------ also seen


def test_a_smaller_limit_after_a_larger_one_prints_its_own_accuracy(shapes_folder, tmp_path):
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=6", "run_name=r")))
    metrics = json.loads((tmp_path / "local" / "svd" / "r" / "metrics.json").read_text())
    small = runner.run(make_cfg(base(shapes_folder, tmp_path / "other", "limit=3")))["accuracy"]
    reason = skip_reason(make_cfg(base(shapes_folder, tmp_path, "limit=3", "run_name=r")))
    assert reason == (f"finished: {tmp_path / 'local' / 'svd' / 'r'} already answers every selected question "
                      f"(metrics.json, same config hash); accuracy {small:.2f} on these 3 questions (the run folder "
                      f"answers 6: {metrics['accuracy']:.2f})")


def test_progress_false_hides_the_loading_bar(tmp_path):
    data = write_local_fixture(tmp_path / "d", questions=1, images=1, seed=0)
    args = ["model=mini", "dataset=local", f"dataset.path={data}", f"output_dir={tmp_path / 'out'}",
            "max_new_tokens=1", "method=svd", "budget=16"]
    quiet = cli(*args, "progress=false")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_abandoned_shard_folders_go_when_the_run_is_complete(shapes_folder, tmp_path):
    """A shard=0/3 attempt answered two questions and was abandoned; the run is then finished without shards:
    its folder is removed (every answer it holds is in predictions.jsonl), a live shard's folder is not."""
    runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=6", "run_name=r", "shard=0/3")))
    folder = tmp_path / "local" / "svd" / "r"
    stale = folder / Shard(0, 3).folder_name
    assert (stale / "predictions.jsonl").read_text().count("\n") == 2
    other = folder / "shard-1-of-5"  # of another configuration: not this run's to remove
    other.mkdir()
    (other / "predictions.jsonl").write_text(json.dumps({"question_id": "q00000", "config_hash": "x"}) + "\n")
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "limit=6", "run_name=r")))
    assert metrics["n"] == 6  # (an unsharded run answers from predictions.jsonl only: the shard's two again)
    assert not stale.exists() and other.is_dir()
    shutil.rmtree(other)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "predictions.jsonl"]


# ------------------------------------------------------------------------ issue 22, item 6: the device


def test_the_device_type_is_part_of_a_gpu_runs_identity(shapes_folder, tmp_path):
    """A run on CUDA never resumes (or is skipped by) a CPU run of the same configuration: its kernels round and
    break ties otherwise. CPU runs keep the hashes they had before the device entered the identity."""
    from eval.datasets import load_dataset

    cfg = make_cfg(base(shapes_folder, tmp_path, "model.device=cpu"))
    prints = identity.fingerprints(cfg, load_dataset(cfg.dataset))
    assert prints["device_type"] == "cpu"
    cpu = identity.config_hash(cfg, 16, prints)
    assert cpu == identity.config_hash(cfg, 16, {k: v for k, v in prints.items() if k != "device_type"})
    cuda = identity.config_hash(make_cfg(base(shapes_folder, tmp_path, "model.device=cuda:1")), 16,
                              {**prints, "device_type": "cuda"})
    assert cuda != cpu
    with pytest.raises(UserError, match=r"^model.device='gpu'; allowed: auto, cpu, cuda, cuda:N"):
        runner.run(make_cfg(base(shapes_folder, tmp_path, "model.device=gpu")))
