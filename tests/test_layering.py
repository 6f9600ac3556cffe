"""Imports go one way: svdprune/ + baselines/ (model, methods) <- eval/ (data, scorers, reports) <- harness/."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"svdprune": {"eval", "harness"}, "baselines": {"eval", "harness"}, "eval": {"harness"}}


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    offending = {f"{path.relative_to(ROOT)} imports {name}"
                 for path in (ROOT / package).rglob("*.py")
                 for name in _imported_packages(path) & FORBIDDEN[package]}
    assert not offending, sorted(offending)
