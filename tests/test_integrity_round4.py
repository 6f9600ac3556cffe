"""Run integrity, round 4: the main command's data, typed method parameters, the last tracebacks, skipped images,
sweep status as the reports read it, sweeps checked before they start, mistyped keys (issue 34)."""
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import harness.runner as runner
import tests.fixtures_eval as fx
from eval.datasets import load_dataset
from eval.predictions import read_prediction_rows
from harness import sweep_status
from harness.identity import config_hash
from harness.runner import write_error_message
from harness.settings import check_overrides
from harness.sweeps import check_sweep
from svdprune.errors import UserError
from svdprune.params import check_params
from svdprune.pruning import METHODS, build_method, default_params, method_class
from tests.test_run_integrity import ROOT, answers, base, jpeg, make_cfg, run_dirs, write_set

CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens on the discard port: the connection is refused at once


def cli(*args, env=None, timeout=300):
    """run.py in a subprocess; ``env`` entries of None are removed from its environment."""
    environment = {key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=environment)


ONLINE = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None, "HTTPS_PROXY": None, "https_proxy": None,
          "ALL_PROXY": None, "all_proxy": None}  # the tests' offline switches off (conftest.py): the hub is tried


# ------------------------------------------------------------------------- 1. the main command's data


@pytest.mark.parametrize("name", ["gqa", "textvqa"])
def test_default_source_reads_a_local_copy(tmp_path, name):
    writer = fx.write_gqa_hf if name == "gqa" else fx.write_textvqa_hf
    writer(tmp_path, "parquet")
    auto = load_dataset(fx.config(name, path=str(tmp_path), expect_full=False))
    explicit = load_dataset(fx.config(name, path=str(tmp_path), expect_full=False, source="hf_disk"))
    assert auto.info == explicit.info and auto.info["source"] == "hf_disk"
    assert [(r.question_id, r.question, r.answers) for r in auto] == \
        [(r.question_id, r.question, r.answers) for r in explicit]


def test_default_source_finds_the_llava_layout(tmp_path):
    fx.write_gqa_llava(tmp_path)
    assert load_dataset(fx.config("gqa", path=str(tmp_path), expect_full=False)).info["source"] == "llava"


def test_auto_is_the_same_run_as_the_source_it_chose(tmp_path):
    """Folders written with source=hf_disk before auto became the default keep their hash (they resume)."""
    fx.write_gqa_hf(tmp_path, "parquet")
    prints = {"dataset": "d", "dataset_source": "hf_disk", "model": None, "model_name": "tiny"}
    hashes = {}
    for source in ("auto", "hf_disk", "hub"):
        cfg = make_cfg(["model=tiny", "dataset=gqa", f"dataset.source={source}"])
        hashes[source] = config_hash(cfg, 16, prints)
    assert hashes["auto"] == hashes["hf_disk"] != hashes["hub"]


@pytest.mark.parametrize("name", ["gqa", "textvqa"])
def test_no_copy_and_no_hub_is_one_line(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    for key in ONLINE:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError) as error:
        load_dataset(fx.config(name, path=str(tmp_path / "nowhere")))
    assert str(error.value).startswith(f"dataset={name}: no local copy at dataset.path='{tmp_path / 'nowhere'}' and "
                                       "the hub is unreachable (127.0.0.1:9: ")
    assert str(error.value).endswith(f"get it ahead of time where there is network with `python -m eval.download "
                                     f"{name}` (writes data/{name}), or point dataset.path at a copy (one in the datasets cache: "
                                     "set HF_HUB_OFFLINE=1)")


def test_offline_mode_with_no_copy_is_one_line(tmp_path):
    """HF_HUB_OFFLINE=1 (as in these tests): datasets' cache is tried, and its failure is one line too."""
    with pytest.raises(UserError, match=r"^cannot load lmms-lab/GQA .* fetch it ahead of time with `python -m "
                                        r"eval.download gqa`, or point the config at a local copy: "):
        load_dataset(fx.config("gqa", path=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache")))


def test_main_command_offline_is_one_line(tmp_path):
    result = cli("method=svd", "budget=32", "dataset=gqa", "model=tiny", f"output_dir={tmp_path}",
                 f"dataset.path={tmp_path / 'data' / 'gqa'}", env={**ONLINE, "HF_ENDPOINT": CLOSED_PORT})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: dataset=gqa: no local copy at ") and result.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_download_offline_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "eval.download", "gqa", "--to", str(tmp_path / "g")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**{k: v for k, v in os.environ.items() if k not in ONLINE}, "HF_ENDPOINT": CLOSED_PORT})
    assert result.returncode == 2 and result.stderr.startswith("error: cannot fetch lmms-lab/GQA: the hub is unreachable")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "g").exists()


# ------------------------------------------------------------------------- 2. typed method parameters


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_its_parameters(name):
    """PARAMS names exactly the constructor's parameters, the config's values are allowed, and the declared defaults
    (what prune() uses, with no configs/ folder) are the config's."""
    import inspect

    cls = method_class(name)
    assert set(cls.PARAMS) == {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "budget")}
    shipped = OmegaConf.to_container(OmegaConf.merge({"model": {}}, {"method": OmegaConf.load(
        ROOT / "configs" / "method" / f"{name}.yaml")}).method, resolve=True).get("params") or {}
    check_params(name, cls.PARAMS, shipped)
    # prune()'s defaults are the declared ones: the same values, keys and order as run.py's config
    assert list(default_params(name).items()) == list(shipped.items())


@pytest.mark.parametrize("params, message", [
    ({"center": "false"}, "svd: method.params.center='false'; allowed: true, false"),
    ({"center": "maybe"}, "svd: method.params.center='maybe'; allowed: true, false"),
    ({"tau": True}, "svd: method.params.tau=True; allowed: a number in (0, 1]"),
    ({"tau": "0.5"}, "svd: method.params.tau='0.5'; allowed: a number in (0, 1]"),
    ({"solver": None}, "svd: method.params.solver=None; allowed: svd, gram"),
])
def test_svd_parameters_are_typed(params, message):
    with pytest.raises(UserError) as error:
        build_method("svd", 16, params)
    assert str(error.value) == message


@pytest.mark.parametrize("name, params, message", [
    ("fastv", {"agg_layer": 2.0}, "fastv: method.params.agg_layer=2.0; allowed: an integer >= 1"),
    ("random", {"per_image": 1}, "random: method.params.per_image=1; allowed: true, false"),
    ("pyramiddrop", {"layers": [2, True], "ratios": [0.5, 0.2]},
     "pyramiddrop: method.params.layers[1]=True; allowed: an integer >= 1"),
    ("sparsevlm", {"keep": "16"}, "sparsevlm: method.params.keep='16'; allowed: a list of integers >= 1, or null"),
    ("trim", {"text_suffix": 3}, "trim: method.params.text_suffix=3; allowed: a string, or null"),
    ("visionzip", {"splits": [1, 2]}, "visionzip: method.params.splits=[1, 2]; allowed: a mapping, or null"),
])
def test_baseline_parameters_are_typed(name, params, message):
    with pytest.raises(UserError) as error:
        build_method(name, 64, params)
    assert str(error.value) == message


def test_quoted_false_is_refused_by_run_py(shapes_folder, tmp_path):
    """Hydra reads 'method.params.center="false"' as the string "false": refused, not the centred SVD-Prune."""
    result = cli(*base(shapes_folder, tmp_path), 'method.params.center="false"')
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: svd: method.params.center='false'; allowed: true, false\n"
    assert not any(tmp_path.iterdir())


def test_prune_arguments_are_typed():
    """svdprune.prune() (and the lmms-eval models, which hand their --model_args to it, YAML-parsed: center=false is
    the boolean) check the declared types."""
    import yaml

    import svdprune
    from svdprune.families.llava15 import build_tiny

    model = build_tiny(vision_layers=2, text_layers=2).model
    for value in ("false", "maybe", yaml.safe_load("maybe")):
        with pytest.raises(UserError, match=rf"^svd: method.params.center='{value}'; allowed: true, false$"):
            svdprune.prune(model, "svd", 16, center=value)
    svdprune.prune(model, "svd", 16, center=yaml.safe_load("false")).remove()


# ------------------------------------------------------------------------- 3. tracebacks where one line is due


@pytest.mark.parametrize("code, what", [
    (errno.EACCES, "permission denied"), (errno.EPERM, "operation not permitted"),
    (errno.EROFS, "read-only file system"), (errno.EFBIG, "file too large"),
])
def test_write_errors_are_one_line(tmp_path, code, what):
    message = write_error_message(OSError(code, os.strerror(code), str(tmp_path / "x" / ".lock")), tmp_path / "x")
    assert message.startswith(f"cannot write {tmp_path / 'x' / '.lock'}: {what}") and "\n" not in message
    assert message.endswith("rerun the same command to continue")
    assert write_error_message(OSError(errno.EINVAL, "invalid"), tmp_path) is None  # not about writing: raised


def test_file_size_limit_is_one_line(shapes_folder, tmp_path):
    """``ulimit -f``: the first answers fit, metrics.json does not; the answers written stay."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500)); "
            "sys.argv = ['run.py'] + sys.argv[1:]; import runpy; runpy.run_path('run.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, *base(shapes_folder, tmp_path, "limit=4")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: cannot write ") and result.stderr.count("\n") == 1
    assert "file too large (a file-size limit, ulimit -f?)" in result.stderr
    folder, = run_dirs(tmp_path)
    assert 0 < len(read_prediction_rows(folder / "predictions.jsonl")) < 4 and not (folder / "metrics.json").exists()


def _chattr(flag: str, *paths: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def test_immutable_output_is_one_line(shapes_folder, tmp_path):
    """``chattr +i`` (what even root cannot write): a finished run folder rerun with a larger limit, and an output_dir
    where a new run folder cannot be made. The answers written stay."""
    out = tmp_path / "out"
    run = base(shapes_folder, out, "threads=1")
    assert cli(*run, "limit=2").returncode == 0
    folder, = run_dirs(out)
    if not _chattr("+i", folder, folder.parent):
        pytest.skip("chattr +i is not permitted here")
    try:
        for args, where in ((["limit=4"], folder), (["limit=4", "method.params.tau=0.5"], folder.parent)):
            result = cli(*run, *args)
            assert (result.returncode, result.stdout) == (2, ""), result.stderr
            assert result.stderr.startswith(f"error: cannot write {where}") and result.stderr.count("\n") == 1
            assert "operation not permitted (an immutable or append-only file?)" in result.stderr
    finally:
        _chattr("-i", folder, folder.parent)
    assert len(answers(folder)) == 2


def _as_nobody():
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to an unprivileged user (root ignores file permissions)")
def test_read_only_output_is_one_line(shapes_folder, tmp_path):
    """A finished run folder made read-only, then rerun with a larger limit; and an output_dir nobody may write."""
    try:
        subprocess.run([sys.executable, "-c", "import svdprune"], cwd=ROOT, check=True, capture_output=True,
                       preexec_fn=_as_nobody, timeout=120)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("an unprivileged user cannot run this Python or read the project here")
    tmp_path.chmod(0o777)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    env = {**os.environ, "SVDPRUNE_CACHE_DIR": str(cache), "HOME": str(cache)}
    run = [sys.executable, "run.py", *base(shapes_folder, out, "threads=1")]
    assert subprocess.run(run + ["limit=2"], cwd=ROOT, capture_output=True, env=env, timeout=300).returncode == 0
    folder, = run_dirs(out)
    for path in (out, *out.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)
    for args in (["limit=4"], ["limit=4", "method.params.tau=0.5"]):  # its folder; a new folder under out/
        result = subprocess.run(run + args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                                preexec_fn=_as_nobody)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: cannot write ") and result.stderr.count("\n") == 1
        assert "permission denied; every answer written so far is kept" in result.stderr
    assert len(answers(folder)) == 2


def test_null_question_is_one_line(tmp_path):
    lines = [{"question_id": "q0", "image": "a.jpg", "question": None, "answer": "red"},
             {"question_id": "q0", "image": 5, "question": "What?", "answer": "red"},
             {"question_id": None, "image": "a.jpg", "question": "What?", "answer": "red"},
             {"question_id": "q0", "image": "a.jpg", "question": "What?", "answers": "red"},
             {"question_id": "q0", "image": "a.jpg", "question": "What?", "answer": "red", "ocr_tokens": "A B"}]
    expected = ["question=None; allowed: a string", "image=5; allowed: a file name relative to the image folder",
                "question_id=None; allowed: a string or an integer", "answers='red'; allowed: a list of strings",
                "ocr_tokens='A B'; allowed: a list of strings, or no key"]
    for i, (line, message) in enumerate(zip(lines, expected)):
        data = write_set(tmp_path / str(i), {"a.jpg": jpeg()}, (json.dumps(line) + "\n").encode())
        with pytest.raises(UserError) as error:
            load_dataset(OmegaConf.create({"name": "local", "path": str(data)}))
        assert str(error.value) == f"{data / 'questions.jsonl'}:1: {message}"


# ------------------------------------------------------------------------- 4. on_bad_image=skip


def test_skip_covers_missing_empty_and_non_image_files(tmp_path, capsys):
    data = write_set(tmp_path / "d", {"a.jpg": jpeg(), "b.jpg": b"", "c.jpg": b"not an image", "e.jpg": jpeg()})
    lines = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    lines.insert(2, {"question_id": "gone", "image": "missing.jpg", "question": "What color?", "answer": "red"})
    (data / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    metrics = runner.run(make_cfg(base(data, out, "on_bad_image=skip")))
    assert sorted(metrics["skipped_unreadable_images"]) == ["gone", "q1", "q2"]
    assert metrics["n"] == 2 and metrics["selection"] == "all 5 questions, less 3 skipped (unreadable image): 2 answered"
    assert capsys.readouterr().err.count("note: skipped: cannot read image") == 3
    limited = runner.run(make_cfg(base(data, out, "on_bad_image=skip", "limit=2")))  # a, b: one skipped
    assert limited["selection"] == "all 5 questions, less 3 skipped (unreadable image): 2 answered"
    assert limited["this_run"]["n"] == 1


def test_skip_with_a_limit_names_the_limit(tmp_path):
    data = write_set(tmp_path / "d", {"a.jpg": b"", "b.jpg": jpeg(), "c.jpg": jpeg()})
    metrics = runner.run(make_cfg(base(data, tmp_path / "out", "on_bad_image=skip", "limit=2")))
    assert metrics["selection"] == "the first 2 questions (limit=2), less 1 skipped (unreadable image): 1 answered"


# ------------------------------------------------------------------------- 5. sweep status reads runs as the reports


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    data = fx_shapes = tmp_path_factory.mktemp("sweepdata")
    from eval.fixtures import write_local_fixture

    write_local_fixture(fx_shapes, questions=4, images=2, seed=0)
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = cli("-m", *base(data, out, "limit=3", "threads=1"), "method.params.tau=0.5,0.9")
    assert result.returncode == 0, result.stderr
    return out, result


def test_sweep_lines_name_what_was_swept(small_sweep):
    out, result = small_sweep
    lines = [line for line in result.stdout.splitlines() if line.startswith("local svd")]
    assert [line.split(":")[0] for line in lines] == ["local svd k=16 tau=0.5", "local svd k=16"]


def _status_of(out, folder):
    assert sweep_status.main([str(out)]) == (0 if folder is None else 1)


def test_status_reads_runs_as_the_reports(small_sweep, capsys, tmp_path):
    import shutil

    out, _ = small_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    multirun = copy / "sweeps" / "multirun" / "multirun.yaml"
    multirun.write_text(multirun.read_text().replace(str(out), str(copy)))
    assert sweep_status.main([str(copy)]) == 0
    capsys.readouterr()
    folders = sorted(p.parent for p in copy.glob("local/svd/*/metrics.json"))
    text = (folders[0] / "metrics.json").read_text()
    (folders[0] / "metrics.json").write_text(text[: len(text) // 2])  # truncated
    lines = (folders[1] / "predictions.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"question_id": "q00001", "predic\x00\x00tion"\n'  # a corrupt middle line
    (folders[1] / "predictions.jsonl").write_text("".join(lines))
    assert sweep_status.main([str(copy)]) == 1
    lines = capsys.readouterr().out.splitlines()[1:]
    truncated = next(line for line in lines if f"local/svd/{folders[0].name}" in line).split(None, 3)
    assert truncated[:2] == ["damaged", "3/3"] and "metrics.json: not valid JSON" in truncated[3]
    corrupt = next(line for line in lines if f"local/svd/{folders[1].name}" in line)
    assert corrupt.split()[0] == "failed" and "predictions.jsonl:2: corrupt line" in corrupt
    from eval.reports import load_runs

    with pytest.warns(UserWarning, match="not valid JSON"):
        assert [r.path for r in load_runs(copy)] == [folders[1]]  # the reports skip the truncated one too


# ------------------------------------------------------------------------- 6. sweeps checked before they start


def test_bad_swept_value_stops_before_any_job(shapes_folder, tmp_path):
    result = cli("-m", *base(shapes_folder, tmp_path), "budget=16,0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("error: sweep value budget=0: budget=0 is outside 1..576 (vision tokens of tiny); "
                             "no job has run\n")
    assert not list(tmp_path.glob("local"))


def test_bad_swept_parameter_stops_before_any_job():
    with pytest.raises(UserError, match=r"^sweep value method.params.center=maybe: svd: method.params.center='maybe'; "
                                        r"allowed: true, false; no job has run$"):
        check_sweep(["-m", "model=tiny", "method.params.center=false,maybe"])


def test_table1_without_192_still_runs_vanilla(capsys):
    assert check_sweep(["-m", "experiment=table1"]) == []
    assert check_sweep(["-m", "experiment=table1", "budget=64,16"]) == ["++sweep.budget_free_at=64"]
    assert "vanilla): they run in its budget=64 job instead" in capsys.readouterr().err
    assert check_sweep(["-m", "experiment=table1", "budget=64,16", "method=svd,fastv"]) == []  # no vanilla


# ------------------------------------------------------------------------- 7. mistyped keys


@pytest.mark.parametrize("args, message", [
    (["tau=0.5"], "unknown setting 'tau'; did you mean method.params.tau=0.5?"),
    (["budgte=16"], "unknown setting 'budgte'; did you mean budget=16?"),
    (["method.params.taux=0.5"], "unknown setting 'method.params.taux' for method=svd; did you mean "
                                 "method.params.tau=0.5?"),
    (["method=fastv", "method.params.tau=0.5"], "unknown setting 'method.params.tau' for method=fastv; "
                                                "method=fastv has: agg_layer"),
    (["model.dtyp=float32"], "unknown setting 'model.dtyp' for model=llava15_7b; did you mean model.dtype=float32?"),
])
def test_mistyped_keys(args, message):
    with pytest.raises(UserError) as error:
        check_overrides(args)
    assert str(error.value) == message


@pytest.mark.parametrize("args", [["budget=16"], ["method.params.tau=0.5"], ["+method.params.fit_layers=[1,2]"],
                                  ["model=qwen25vl_tiny", "model.max_pixels=10000"], ["experiment=table1"],
                                  ["-m", "method=svd,fastv", "budget=16,32"]])
def test_known_keys_pass(args):
    check_overrides(args)


def test_mistyped_key_on_the_command_line(tmp_path):
    result = cli("tau=0.5", f"output_dir={tmp_path}")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: unknown setting 'tau'; did you mean method.params.tau=0.5?\n"


def test_prune_from_a_non_editable_install(tmp_path):
    """prune() reads no file outside the package: installed as a wheel would install it (no configs/ folder), the
    defaults it uses are run.py's (issue 33)."""
    import re
    import shutil

    source, target = tmp_path / "src", tmp_path / "site"  # a copy: the build writes build/ beside its source
    packages = re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(),
                                                     re.M).group(1))
    for name in sorted({package.split(".")[0] for package in packages}):  # every package the wheel installs
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)  # offline: the build uses the installed setuptools
    assert not (target / "configs").exists()
    code = ("import json, svdprune; from svdprune.families.llava15 import build_tiny; from svdprune.pruning import default_params; "
            "model = build_tiny(vision_layers=2, text_layers=17).model; "
            "[svdprune.prune(model, name, 64).remove() for name in ('svd', 'pyramiddrop', 'sparsevlm')]; "
            "print(json.dumps({'file': svdprune.__file__, 'pyramiddrop': default_params('pyramiddrop')}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["file"].startswith(str(target))
    assert out["pyramiddrop"] == json.loads(json.dumps(default_params("pyramiddrop")))
