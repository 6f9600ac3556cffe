"""python -m harness.sweep_status: every job of a real (tiny-model) sweep with its state."""
import json
import subprocess
import sys
from pathlib import Path

from harness import sweep_status
from harness.sweep_status import job_key

ROOT = Path(__file__).resolve().parents[1]


def test_job_key_ignores_hydra_overrides_and_order():
    assert job_key(["method=svd", "budget=16"]) == job_key(["budget=16", "hydra/launcher=slurm", "method=svd",
                                                            "hydra.launcher.partition=gpu"])
    assert job_key(["method=svd", "budget=16"]) != job_key(["method=svd", "budget=32"])


def test_sweep_status_lists_done_failed_pending_skipped_and_partial(shapes_folder, tmp_path, capsys):
    # Hydra's basic launcher stops a sweep at its first failing job: svd k=16 runs, pyramiddrop k=16 fails once the
    # model is loaded (its schedule's layers 2, 8, 16 are deeper than the 4-layer LLM: a one-line error, recorded),
    # vanilla k=16 never starts, and vanilla at budget 32 is a budget-free duplicate. (A bad swept value such as
    # budget=0 stops the sweep before any job: tests/test_integrity_round4.py.)
    out = tmp_path / "out"
    cmd = [sys.executable, "run.py", "-m", "model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={shapes_folder}",
           f"output_dir={out}", "max_new_tokens=4", "progress=false", "limit=3", "method=svd,pyramiddrop,vanilla",
           "budget=16,32", "+sweep.budget_free_at=16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "error: pyramiddrop" in proc.stderr

    assert sweep_status.main([str(out)]) == 1  # not everything is done
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sweep {out}/sweeps/multirun (6 jobs): 2 done, 1 failed, 2 pending, 1 skipped"
    svd_folder = next(out.glob("local/svd/k16-tiny-*"))
    states = [line.split() for line in lines[1:]]
    assert states[0] == ["done", "3/3", f"local/svd/{svd_folder.name}"]
    assert states[1][:3] == ["done", "3/3", f"local/svd/{next(out.glob('local/svd/k32-tiny-*')).name}"]
    assert states[2][:2] == ["failed", "0/3"] and states[2][2].startswith("local/pyramiddrop/k16-tiny-")
    assert " ".join(states[2][3:]).startswith("error: pyramiddrop")  # the one-line error run.py printed
    assert states[3][:2] == ["pending", "0/3"] and states[3][2].startswith("local/pyramiddrop/k32-tiny-")
    assert states[4][:2] == ["pending", "0/3"] and states[4][2].startswith("local/vanilla/k576-tiny-")
    assert states[5][0] == "skipped" and "vanilla ignores the budget" in lines[6]

    # a run interrupted after two answers: partial 2/3 (a half-written last line does not count)
    predictions = svd_folder / "predictions.jsonl"
    rows = predictions.read_text().splitlines()
    predictions.write_text(rows[0] + "\n" + rows[1] + "\n" + rows[2][:20])
    (svd_folder / "metrics.json").unlink()
    assert sweep_status.main([str(out / "sweeps" / "multirun")]) == 1
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["partial", "2/3"]
    assert predictions.read_text().endswith(rows[2][:20])  # read only: a running job's file is not touched

    # the error file names the job by its overrides
    [error_file] = (out / "sweeps" / "multirun" / "errors").glob("*.json")
    recorded = json.loads(error_file.read_text())
    assert "method=pyramiddrop" in recorded["overrides"] and recorded["error"].startswith("error: pyramiddrop")


def test_no_sweep_is_a_one_line_error(tmp_path, capsys):
    assert sweep_status.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: no sweep under {tmp_path} (looked for multirun.yaml and sweeps/*/multirun.yaml)\n"
