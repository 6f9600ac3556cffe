"""A sweep through a real Slurm controller (opt-in): submit, wait, check every run, build Table 1 from them,
cancel a job mid-run and resubmit.

    sudo SLURM_LOCAL_FAKE_GPUS=2 scripts/slurm_local.sh start      # one-node cluster on this machine
    pip install -e ".[slurm,data]"
    SVDPRUNE_SLURM=1 python -m pytest -m slurm tests/test_slurm.py

Skipped unless SVDPRUNE_SLURM=1 and `sinfo` answers. Jobs ask for 1 CPU and 2 GB each; if the cluster has
GPUs (GRES gpu, real or the script's stand-ins), each job asks for one GPU as configs/hydra/launcher/slurm.yaml
does. Takes a few minutes on two cores (the mini model answers 4 x 20 + 4 x 20 questions).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

RUNS = [("svd", 64), ("svd", 16), ("random", 64), ("random", 16)]  # the sweep's job order (array task ids)


def _sinfo_gres() -> str | None:
    """The cluster's GRES column ("(null)" without GPUs); None if there is no working Slurm."""
    if shutil.which("sinfo") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("SVDPRUNE_SLURM") != "1":
        pytest.skip("Slurm tests are opt-in: SVDPRUNE_SLURM=1 (and a cluster, e.g. scripts/slurm_local.sh start)")
    gres = _sinfo_gres()
    if gres is None:
        pytest.skip("sinfo does not answer: start a cluster (scripts/slurm_local.sh start)")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[slurm]"')
    pytest.importorskip("easy_vqa", reason='pip install -e ".[data]"')
    return {"gpus": "gpu" in gres}


def sweep_command(out: Path, limit: int, name: str, gpus: bool, axes=("method=svd,random", "budget=64,16")):
    return [sys.executable, "run.py", "-m", "hydra/launcher=slurm", "model=mini", "dataset=easyvqa",
            *axes, f"limit={limit}", f"output_dir={out}", "progress=false",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30",
            f"hydra.launcher.name={name}", f"hydra.launcher.gpus_per_node={1 if gpus else 'null'}",
            "hydra.launcher.setup=[\"echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES\"]"]


def launch(out: Path, limit: int, name: str, gpus: bool, *axes) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the jobs (sbatch exports this environment) import this checkout
    return subprocess.Popen(sweep_command(out, limit, name, gpus, *axes), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_folder(out: Path, method: str, budget: int) -> Path:
    [folder] = out.glob(f"easyvqa/{method}/k{budget}-mini-*")
    return folder


def question_ids(folder: Path) -> list[str]:
    """Question ids of the complete lines of predictions.jsonl (read only; a killed job may leave half a line)."""
    from eval.reports import read_jsonl

    return [str(row["question_id"]) for row in read_jsonl(folder / "predictions.jsonl")]


def squeue(name: str) -> dict[str, str]:
    """{job id: state} of this test's jobs still known to the controller."""
    proc = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i %T"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in proc.stdout.splitlines())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def expected_ids(limit: int) -> list[str]:
    from omegaconf import OmegaConf

    from eval.datasets import load_dataset

    return [str(r.question_id) for r in load_dataset(OmegaConf.create({"name": "easyvqa", "split": "test"})).records[:limit]]


def test_sweep_through_slurm_then_cancel_and_resubmit(cluster, tmp_path):
    out = tmp_path / "results"
    name = f"svdprune-test-{os.getpid()}"

    # 1. the sweep, four runs of 20 questions, all through sbatch
    started = time.monotonic()
    proc = launch(out, 20, name, cluster["gpus"])
    log, _ = proc.communicate(timeout=1200)
    print(f"sweep of 4 x 20 questions through Slurm: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, log[-3000:]
    ids20 = expected_ids(20)
    for method, budget in RUNS:
        folder = run_folder(out, method, budget)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert question_ids(folder) == ids20
        assert (metrics["n"], metrics["method"], metrics["budget"]) == (20, method, budget)
    logs = sorted(out.glob(".submitit/*_*/*_log.out"))
    assert len(logs) == 4
    if cluster["gpus"]:  # Slurm gave every job exactly one GPU of its own choosing
        for path in logs:
            [line] = [x for x in path.read_text().splitlines() if x.startswith("CUDA_VISIBLE_DEVICES=")]
            assert line.split("=")[1].isdigit(), line

    # 2. Table 1 from these runs (easy-VQA, budgets 64 and 16)
    from harness import sweep_status

    assert sweep_status.main([str(out)]) == 0
    table = subprocess.run([sys.executable, "scripts/make_table1.py", "--results", str(out), "--datasets", "easyvqa",
                            "--budgets", "64", "16"], cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    import csv

    with (out / "tables" / "table1.csv").open() as f:
        cells = {(r["method"], int(r["budget"])): r for r in csv.DictReader(f) if r["accuracy"]}
    assert set(cells) == set(RUNS)
    for method, budget in RUNS:
        metrics = json.loads((run_folder(out, method, budget) / "metrics.json").read_text())
        assert cells[method, budget]["accuracy"] == f"{metrics['accuracy']:.4f}"
        assert cells[method, budget]["n"] == "20"

    # 3. the same sweep with limit=40 (the runs continue); cancel SVD k=64 (array task 0) mid-run
    proc = launch(out, 40, name, cluster["gpus"])
    svd64 = run_folder(out, "svd", 64)
    wait_for(lambda: len((svd64 / "predictions.jsonl").read_bytes().splitlines()) >= 21, 600,
             "SVD k=64 to answer its 21st question")
    [task0] = [job for job in wait_for(lambda: squeue(name), 60, "squeue") if job.endswith("_0")]
    # scancel sends SIGTERM, which submitit's job wrapper ignores: the job keeps answering for KillWait
    # seconds (scripts/slurm_local.sh: 2; Slurm's default 30, which would let this small run finish).
    subprocess.run(["scancel", task0], check=True)
    wait_for(lambda: task0 not in squeue(name), 120, f"{task0} to leave the queue")
    wait_for(lambda: not squeue(name), 900, "the other jobs to finish")
    # Without Slurm accounting (sacct; the local cluster has none) submitit cannot learn that the task was
    # cancelled and would wait for its result: stop the launcher, as a user would, and resubmit.
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    cut = len(question_ids(svd64))
    print(f"SVD k=64 cancelled after {cut} of 40 questions")
    assert 21 <= cut < 40, "the cancelled run was not interrupted mid-run"
    assert json.loads((svd64 / "metrics.json").read_text())["n"] == 20  # still the limit=20 run's metrics
    assert sweep_status.main([str(out)]) == 1
    assert [r.state for r in sweep_status.sweep_status(out / "sweeps" / "multirun" / "multirun.yaml")] == \
        ["partial", "done", "done", "done"]

    # 4. resubmitting the sweep finishes it: finished runs are skipped, the cancelled one resumes
    proc = launch(out, 40, name, cluster["gpus"])
    log, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, log[-3000:]
    ids40 = expected_ids(40)
    for method, budget in RUNS:
        folder = run_folder(out, method, budget)
        assert question_ids(folder) == ids40  # nothing lost, nothing answered twice, in question order
        assert json.loads((folder / "metrics.json").read_text())["n"] == 40
    assert sweep_status.main([str(out)]) == 0

    # 5. one run split over two jobs (one GPU each where there are GPUs): shard=0/2,1/2 merge into the same files
    sharded = tmp_path / "sharded"
    proc = launch(sharded, 40, name, cluster["gpus"], ("method=svd", "budget=64", "shard=0/2,1/2"))
    log, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, log[-3000:]
    merged = run_folder(sharded, "svd", 64)
    assert sorted(p.name for p in merged.iterdir()) == ["metrics.json", "predictions.jsonl"]
    assert [json.loads(x)["prediction"] for x in (merged / "predictions.jsonl").read_text().splitlines()] == \
        [json.loads(x)["prediction"] for x in (svd64 / "predictions.jsonl").read_text().splitlines()]
    assert json.loads((merged / "metrics.json").read_text())["accuracy"] == \
        json.loads((svd64 / "metrics.json").read_text())["accuracy"]

    # 6. a job that fails (a bad value) ends the launcher with an error instead of leaving it waiting, and
    # sweep_status shows its one-line error
    failing = tmp_path / "failing"
    proc = launch(failing, 2, name, cluster["gpus"], ("method=svd", "budget=0"))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "budget=0 is outside" in log
    [status] = sweep_status.sweep_status(failing / "sweeps" / "multirun" / "multirun.yaml")
    assert status.state == "failed" and status.detail.startswith("error: budget=0 is outside")
