"""Imports go one way: svdprune/ + baselines/ (model, methods) <- eval/ (data, scorers, reports) <- harness/ <- bench/,
training/ (benchmarks, the offline models' training) <- scripts/ (command lines, which import no other script)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = {"bench", "training"}
FORBIDDEN = {"svdprune": {"eval", "harness"} | TOP, "baselines": {"eval", "harness"} | TOP, "eval": {"harness"} | TOP,
             "harness": TOP}


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


PACKAGES = ("svdprune", "baselines", "eval", "harness", "bench", "training")


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (every import statement, also inside functions)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        # the package a relative import starts from: the module's own for an __init__.py, else its parent's
        package, targets = name if path.stem == "__init__" else name.rsplit(".", 1)[0], set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = anchor + (f".{base}" if base else "")
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


def _family_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "svdprune" / "families").glob("*.py") if not p.stem.startswith("_"))


FAMILY_NAMES = _family_names()
FAMILY_MODULES = {f"svdprune.families.{name}" for name in FAMILY_NAMES} | {"svdprune.families"}
#: the shared engine, the API and the harness: they reach a family only through svdprune.families' registry
ENGINE_FILES = ("svdprune/surgery.py", "svdprune/pruning.py", "svdprune/params.py", "svdprune/models.py",
                "svdprune/api.py", "run.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "harness").glob("*.py")))


def test_the_engine_imports_no_family():
    """svdprune/surgery.py is the LLM half every family shares; svdprune/families/ is the one place that picks one."""
    graph = _import_graph()
    for module in ("svdprune.surgery", "svdprune.pruning", "svdprune.models"):
        assert not graph[module] & FAMILY_MODULES, module


def test_only_the_registry_imports_a_family_module():
    """Outside svdprune/families/, code reaches a family through the registry (svdprune.families), never a family
    module by name."""
    graph = _import_graph()
    offending = {f"{module} imports {target}" for module, targets in graph.items()
                 if not module.startswith("svdprune.families")
                 for target in targets & (FAMILY_MODULES - {"svdprune.families"})}
    assert not offending, sorted(offending)


def _code_words(path: Path) -> set[str]:
    """Names, attributes and string constants of a module's code (docstrings and comments left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(re.findall(r"[A-Za-z0-9_]+", node.value))
    return words


def _method_files() -> list[Path]:
    return [ROOT / "svdprune" / "svd.py", *sorted(p for p in (ROOT / "baselines").glob("*.py"))]


@pytest.mark.parametrize("path", [*ENGINE_FILES, *(str(p.relative_to(ROOT)) for p in _method_files())])
def test_engine_and_methods_name_no_family(path):
    """The engine and the method files read what a family declares (capabilities), never its name."""
    assert not _code_words(ROOT / path) & set(FAMILY_NAMES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_family_names_no_method(family):
    """A family declares what it provides; which methods run follows from their ``needs`` (vanilla, the no-cut
    identity the fronts use for an image at or under its budget, excepted)."""
    from svdprune.pruning import METHODS

    assert not _code_words(ROOT / "svdprune" / "families" / f"{family}.py") & (set(METHODS) - {"vanilla"})


SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_a_script_imports_no_other_script(script):
    """scripts/ are command lines over the installed packages: none imports another (their shared code is a
    package's)."""
    names = {p.stem for p in SCRIPTS}
    assert not _imported_packages(ROOT / "scripts" / script) & names


def test_no_file_edits_sys_path():
    """Imports resolve through the installed packages (and pytest's rootdir for tests.*), never a path edit."""
    offending = []
    for path in sorted(ROOT.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                offending.append(str(path.relative_to(ROOT)))
    assert not offending, sorted(set(offending))
