"""scripts/gpu_check.py (issue 22, item 5) runs as it is: CI runs its CPU dry run (the same code paths, small
sizes); on a machine with a GPU, ``python scripts/gpu_check.py`` is the real check (README: GPU day one)."""
import csv

from tests.script_modules import load_script

gpu_check = load_script("gpu_check")


def test_cpu_dry_run_writes_every_section(tmp_path):
    assert gpu_check.main(["--cpu-dry-run", "--output-dir", str(tmp_path)]) == 0
    for section in ("gpu_methods", "gpu_memory", "gpu_oom", "gpu_svd", "latency"):
        assert (tmp_path / f"{section}_cpu-dryrun.csv").is_file() and (tmp_path / f"{section}_cpu-dryrun.md").is_file()
    methods = list(csv.DictReader((tmp_path / "gpu_methods_cpu-dryrun.csv").open()))
    ran = [r for r in methods if r["status"] == "ok"]
    assert len(ran) >= 8 and all(r["rotary_float32"] == "True" and r["paths_agree"] == "1.0" for r in ran)
    svd = list(csv.DictReader((tmp_path / "gpu_svd_cpu-dryrun.csv").open()))
    assert all(r["same_kept_set_as_cpu"] == "1.0" for r in svd)
