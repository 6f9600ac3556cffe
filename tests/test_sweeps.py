"""Sweep definitions (configs/experiment/), the SLURM launcher config, and run-level resume
(harness.sweeps.finished_run / skip_reason). Sweeps are expanded exactly as Hydra's basic sweeper does it
(hydra.sweeper.params + command-line overrides -> BasicSweeper.split_arguments), then composed job by job."""
from __future__ import annotations

import functools
import importlib.util
import itertools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException

from harness import sweeps as reports

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
METHODS = ["vanilla", "svd", "tome", "visionzip", "trim", "fastervlm", "divprune", "vispruner", "cdpruner", "holov",
           "random", "pooling", "fastv", "pyramiddrop", "sparsevlm", "dart", "tokencarve",
           "flowcut"]
BUDGETS = [192, 128, 64, 32, 16]
TAUS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0]


EXPERIMENT = "experiment"  # configs/config.yaml lists `- experiment: null`


def _compose(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def expand(command_line: list[str]) -> list[dict[str, str]]:
    """The jobs of `python run.py -m <command_line>`: one {key: value} per job, in Hydra's order."""
    cfg = _compose([o for o in command_line if "," not in o], hydra=True)  # sweep values are not composable
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + command_line)
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return [dict(o.split("=", 1) for o in job) for job in jobs]


@functools.lru_cache(maxsize=None)
def _expand_cached(command_line: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    return tuple(expand(list(command_line)))


def test_documented_command_composes():
    """`python run.py -m experiment=table1` (needs `- experiment: null` in config.yaml's defaults)."""
    cfg = _compose(["experiment=table1"], hydra=True)
    assert cfg.hydra.sweeper.params.budget == "192,128,64,32,16"


def test_table1_sweep_expands_to_every_run():
    jobs = _expand_cached((f"{EXPERIMENT}=table1",))
    got = [(j["dataset"], j["method"], int(j["budget"])) for j in jobs]
    assert len(got) == len(set(got)) == 2 * len(METHODS) * 5
    assert set(got) == set(itertools.product(["gqa", "textvqa"], METHODS, BUDGETS))
    # distinct runs once vanilla's budget-free duplicates are dropped (sweep.budget_free_at = 192)
    cfg = _compose([f"{EXPERIMENT}=table1"])
    runs = {(d, m, 576 if m == "vanilla" else b) for d, m, b in got if m != "vanilla" or b == cfg.sweep.budget_free_at}
    assert len(runs) == 2 * ((len(METHODS) - 1) * 5 + 1)


def test_command_line_replaces_a_sweep_axis():
    jobs = expand([f"{EXPERIMENT}=table1", "method=svd,fastv", "subset=2000", "dataset=gqa"])
    assert sorted((j["method"], int(j["budget"])) for j in jobs) == sorted(
        itertools.product(["fastv", "svd"], BUDGETS))
    assert all(j["subset"] == "2000" and j["dataset"] == "gqa" for j in jobs)


@pytest.mark.parametrize("method", METHODS)
def test_table1_jobs_compose(method):
    """Each method's jobs compose (one per dataset: the budget is a plain value); vanilla at every budget, where
    only the budget_free_at job is not a duplicate."""
    if not (CONFIGS / "method" / f"{method}.yaml").is_file():
        pytest.skip(f"configs/method/{method}.yaml does not exist yet: its table1 jobs cannot compose")
    jobs = [j for j in _expand_cached((f"{EXPERIMENT}=table1",)) if j["method"] == method]
    assert len(jobs) == 10
    sample = jobs if method == "vanilla" else [jobs[0], jobs[-1]]
    assert {j["dataset"] for j in sample} == {"gqa", "textvqa"}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for job in sample:
            cfg = compose("config", overrides=[f"{k}={v}" for k, v in job.items()])
            assert (cfg.method.name, cfg.budget, cfg.dataset.name) == (method, int(job["budget"]), job["dataset"])
            assert cfg.sweep.budget_free_at == 192
            duplicate = reports.budget_free_duplicate(cfg)
            assert (duplicate is not None) == (method == "vanilla" and cfg.budget != 192), (job, duplicate)


def test_tau_ablation_expands_and_composes():
    jobs = expand([f"{EXPERIMENT}=tau_ablation"])
    got = sorted((int(j["budget"]), float(j["method.params.tau"])) for j in jobs)
    assert got == sorted(itertools.product([16, 32, 192], TAUS))
    assert all(j["method"] == "svd" and j["dataset"] == "gqa" for j in jobs)
    taus = sorted({t for _, t in got})
    assert 1.0 in taus and 0.9 in taus
    knee = [t for t in taus if t >= 0.7]
    assert max(b - a for a, b in zip(knee, knee[1:])) <= 0.05 + 1e-9  # fine around the knee (0.7 .. 1)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for job in jobs[:: len(TAUS) + 1][:4]:  # a few (budget, tau) pairs
            cfg = compose("config", overrides=[f"{k}={v}" for k, v in job.items()])
            assert cfg.method.name == "svd" and cfg.dataset.name == "gqa"
            assert cfg.method.params.tau == float(job["method.params.tau"])
            assert (cfg.method.params.center, cfg.method.params.weighting, cfg.method.params.energy) == \
                (False, "uniform", "s2")
            assert reports.budget_free_duplicate(cfg) is None


def test_default_launcher_is_sequential():
    cfg = _compose([f"{EXPERIMENT}=table1"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


def _have_submitit() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:  # no hydra_plugins namespace at all
        return False


HAVE_SUBMITIT = _have_submitit()


@pytest.mark.skipif(not HAVE_SUBMITIT, reason="hydra-submitit-launcher not installed (pip install -e '.[slurm]')")
def test_slurm_launcher_composes_with_the_extra():
    cfg = _compose([f"{EXPERIMENT}=table1", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 1, 1, 1)
    assert launcher.timeout_min == 240 and launcher.max_num_timeout == 2 and launcher.cpus_per_task == 8
    assert launcher.submitit_folder == "results/.submitit/%j"  # ${output_dir} resolved


@pytest.mark.skipif(HAVE_SUBMITIT, reason="hydra-submitit-launcher is installed: the missing-extra error cannot occur")
def test_slurm_launcher_without_the_extra_fails_clearly():
    with pytest.raises(ConfigCompositionException) as info:
        _compose([f"{EXPERIMENT}=table1", "hydra/launcher=slurm"], hydra=True)
    assert "hydra/launcher/submitit_slurm" in str(info.value)


# ------------------------------------------------------------------------------------ run-level resume


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real vanilla run of the tiny model on a fixture dataset (2 questions)."""
    from eval.fixtures import write_local_fixture
    from harness.runner import run

    root = tmp_path_factory.mktemp("resume")
    data = write_local_fixture(root / "data", questions=6, images=3, seed=0)
    base = ["model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={data}",
            "limit=2", "max_new_tokens=1",
            f"output_dir={root / 'results'}", "progress=false"]
    metrics = run(_compose(base + ["method=vanilla"]))
    return base, metrics, root / "results"


def test_finished_run(finished):
    base, metrics, results = finished
    assert reports.finished_run(_compose(base + ["method=vanilla"]))
    assert reports.finished_run(_compose(base + ["method=vanilla", "budget=16"]))  # vanilla ignores the budget
    assert reports.finished_run(_compose(base + ["method=vanilla", "batch_size=4"]))  # not part of the run
    assert not reports.finished_run(_compose(base + ["method=vanilla", "limit=3"]))  # more questions selected
    assert not reports.finished_run(_compose(base + ["method=vanilla", "subset=2"]))  # another selection
    assert not reports.finished_run(_compose(base + ["method=vanilla", "seed=1"]))  # another config hash
    assert not reports.finished_run(_compose(base + ["method=svd", "budget=16"]))  # never ran
    assert not reports.finished_run(_compose(base + ["method=vanilla", "dataset.path=/nonexistent"]))


def test_finished_run_checks_the_files(finished, tmp_path):
    import shutil

    base, metrics, results = finished
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    cfg = _compose([o for o in base if not o.startswith("output_dir")] + ["method=vanilla", f"output_dir={copy}"])
    assert reports.finished_run(cfg)
    run_dir = next(copy.glob("local/vanilla/*"))
    predictions = run_dir / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text(lines[0])  # a question missing from predictions.jsonl
    assert not reports.finished_run(cfg)
    predictions.write_text("".join(lines))
    data = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**data, "config_hash": "0" * 64}))
    assert not reports.finished_run(cfg)
    (run_dir / "metrics.json").unlink()
    assert not reports.finished_run(cfg)


def test_skip_reason(finished):
    base, metrics, results = finished
    assert reports.skip_reason(_compose(base + ["method=vanilla", f"{EXPERIMENT}=table1", "budget=64"])).startswith(
        "vanilla ignores the budget")
    reason = reports.skip_reason(_compose(base + ["method=vanilla", f"{EXPERIMENT}=table1", "budget=192"]))
    assert reason.startswith("finished: ") and metrics["run_name"] in reason
    assert reports.skip_reason(_compose(base + ["method=svd", f"{EXPERIMENT}=table1", "budget=192"])) is None
    assert reports.skip_reason(_compose(base + ["method=vanilla", "budget=64"])).startswith("finished: ")  # no sweep
