"""The method registry: each method file registers and describes itself (svdprune/pruning.py ``register``)."""
import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from svdprune.families import family, names, supported_methods
from svdprune.pruning import METHODS, EncoderPruner, register

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_file_registers_one_method():
    """Each configs/method/<name>.yaml has a registered class of that name, and each class has its config."""
    assert set(METHODS) == {p.stem for p in (ROOT / "configs" / "method").glob("*.yaml")}
    for name, cls in METHODS.items():
        assert cls.name == name and cls.label and cls.kind in ("none", "encoder", "decoder")
        assert OmegaConf.load(ROOT / "configs" / "method" / f"{name}.yaml").name == name


def test_table1_sweeps_every_method():
    """configs/experiment/table1.yaml's method axis is the registry (a new method joins Table 1's sweep)."""
    axis = OmegaConf.load(ROOT / "configs" / "experiment" / "table1.yaml").hydra.sweeper.params.method
    assert sorted(axis.split(",")) == sorted(METHODS)


def test_table_rows_are_distinct():
    rows = [cls.table_row for cls in METHODS.values()]
    assert len(rows) == len(set(rows))


def test_needs_are_capabilities_a_family_can_declare():
    known = set().union(*(front.CAPABILITIES | set(front.LACKS) for front in map(family, names())))
    for cls in METHODS.values():
        assert set(cls.needs) <= known, cls.name
    for front in map(family, names()):  # a family explains every capability it lacks
        assert known - front.CAPABILITIES == set(front.LACKS)


def test_supported_methods_follow_from_needs():
    assert supported_methods("llava15") == list(METHODS)
    assert supported_methods("qwen25vl") == [n for n, c in METHODS.items() if not c.needs]


def test_register_refuses_a_taken_name_and_undeclared_parameters():
    class Duplicate(EncoderPruner):
        name, label = "svd", "Another SVD"

        def __init__(self, budget: int):
            self.budget = budget

    with pytest.raises(TypeError, match="method name 'svd' is taken by svdprune.svd.SvdPrune"):
        register(Duplicate)

    class Undeclared(EncoderPruner):
        name, label = "undeclared-test-method", "Undeclared"

        def __init__(self, budget: int, alpha: float = 1.0):
            self.budget = budget

    with pytest.raises(TypeError, match=r"PARAMS declares \[\] but __init__ takes \['alpha'\]"):
        register(Undeclared)
    assert "undeclared-test-method" not in METHODS
    assert all("budget" in inspect.signature(cls.__init__).parameters for cls in METHODS.values())


def _readme_example() -> tuple[str, str, str, str]:
    """(python file name, its text, yaml file name, its text) of the README's "Adding a method" section."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Adding a method"):]
    section = section[:section.index("\n## ")] if "\n## " in section else section
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    python_file = re.search(r"`(baselines/\w+\.py)`", section).group(1)
    yaml_file = re.search(r"`(configs/method/\w+\.yaml)`", section).group(1)
    return python_file, python, yaml_file, yaml


def test_the_readme_method_runs_pasted_into_a_copy(tmp_path, shapes_folder):
    """The README's complete method, pasted into a copy of the project with no other file edited, runs through run.py
    on both tiny families and through prune()."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    python_file, python, yaml_file, yaml = _readme_example()
    clone = tmp_path / "clone"
    for name in ("svdprune", "baselines", "eval", "harness", "configs"):
        shutil.copytree(ROOT / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "run.py", clone / "run.py")
    (clone / python_file).write_text(python)
    (clone / yaml_file).write_text(yaml)
    name = Path(yaml_file).stem
    env = {**os.environ, "PYTHONPATH": str(clone)}
    for model in (["model=tiny", "model.vision_layers=2", "model.text_layers=2"],
                  ["model=qwen25vl_tiny", "model.text_layers=2"]):
        out = tmp_path / model[0].split("=")[1]
        result = subprocess.run([sys.executable, "run.py", *model, "dataset=local", f"dataset.path={shapes_folder}",
                                 f"method={name}", "budget=16", "limit=3", "max_new_tokens=2", "progress=false",
                                 "threads=1", f"output_dir={out}"], cwd=clone, capture_output=True, text=True,
                                env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        [predictions] = out.glob(f"local/{name}/*/predictions.jsonl")
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert len(rows) == 3 and all(r["kept_tokens"] == min(16, r.get("image_tokens_unpruned", 576)) for r in rows)
    code = ("import svdprune; from svdprune.families.llava15 import build_tiny; "
            "model = build_tiny(vision_layers=2, text_layers=2).model; "
            f"handle = svdprune.prune(model, {name!r}, 16); print(type(handle.method).__module__); handle.remove()")
    result = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == python_file[:-3].replace("/", ".")
