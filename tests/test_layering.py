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


PACKAGES = ("svdprune", "baselines", "eval", "harness")


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (every import statement, also inside functions)."""
    modules = {f"{package}.{path.stem}" if path.stem != "__init__" else package: path
               for package in PACKAGES for path in (ROOT / package).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        package, targets = name.split(".")[0], set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = package + (f".{base}" if base else "")
                targets.update(([base] if node.module else []) + [f"{base}.{alias.name}" for alias in node.names])
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles():
    """No module reaches itself through imports (function-level imports count: they only hide a cycle)."""
    graph = _import_graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + (start,)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + (nxt,)))
    assert not cycles, sorted(cycles)[:5]


def test_the_engine_imports_no_family():
    """svdprune/surgery.py is the LLM half every family shares; svdprune/families.py is the one place that picks one."""
    assert not _import_graph()["svdprune.surgery"] & {"svdprune.llava15", "svdprune.qwen25vl", "svdprune.families"}
