"""Recorded-answer regression, shared by the CI tests of the project's trained models (tests/test_mini_regression.py,
tests/test_scenes_regression.py).

A reference file (results/<benchmark>/regression.json, written by the benchmark's eval script with
``--regression``) holds ``limit`` (the first N test questions), ``checkpoint_sha256`` (the weights it belongs
to), and per method and budget the ``accuracy`` and the ``answers`` in question order. A fresh run passes when
its accuracy is within ``tolerance`` points of the recorded one and at least ``agreement`` of its answers are
the recorded answers. The answer check is the sharper one: a broken selection that keeps accuracy (several token
sets can answer a question) still changes which answers come out.

CPU kernels: torch's AVX2 and AVX-512 kernels (``torch.backends.cpu.get_cpu_capability()``) round a few float32
results differently (e.g. ``exp`` in the softmax); a method that meets near-ties on these images (VisPruner's
and CDPruner's similarity steps on uniform backgrounds) can then keep other tokens and give other answers. The
main record is from one kernel set; ``kernel_variants[<capability>]`` holds, for the cases whose answers differ
under another, that kernel set's accuracy and answers (``eval_scenes.py --regression-variant``). A run matches
when it matches the main record or the variant of the kernel set it ran on.
"""
from __future__ import annotations

import json
from pathlib import Path


def load_reference(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def cases(reference: dict) -> list[tuple[str, int]]:
    """(method, budget) pairs to check; vanilla ignores the budget (the reference repeats it under every budget),
    so it is checked once, at 576."""
    out = [(method, int(budget)) for method, by_budget in sorted(reference["accuracy"].items())
           if method != "vanilla" for budget in sorted(by_budget, key=int)]
    if "vanilla" in reference["accuracy"]:
        out.append(("vanilla", 576))
    return out


def case_key(reference: dict, method: str, budget: int) -> str:
    """The reference's key of ``method`` at ``budget`` (vanilla's one recorded budget, whatever ``budget`` is)."""
    return next(iter(reference["accuracy"][method])) if method == "vanilla" else str(budget)


def recorded(reference: dict, method: str, budget: int) -> tuple[float, list[str]]:
    """(accuracy %, answers) recorded for ``method`` at ``budget``."""
    key = case_key(reference, method, budget)
    return reference["accuracy"][method][key], reference["answers"][method][key]


def variant(reference: dict, capability: str, method: str, budget: int) -> tuple[float, list[str]] | None:
    """(accuracy %, answers) recorded for ``method`` at ``budget`` under the CPU kernels ``capability`` where they
    differ from the main record, else None."""
    by_method = reference.get("kernel_variants", {}).get(capability, {}).get(method, {})
    case = by_method.get(case_key(reference, method, budget))
    return None if case is None else (case["accuracy"], case["answers"])


def mismatch(reference: dict, method: str, budget: int, accuracy: float, answers: list[str], tolerance: float,
             agreement: float, capability: str | None = None) -> str | None:
    """Why a fresh run of ``method`` at ``budget`` does not match the reference (or the record of the CPU kernels
    ``capability``, default: this process's, where one differs), or None when it does."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    failure = _mismatch(recorded(reference, method, budget), method, budget, accuracy, answers, tolerance, agreement)
    other = variant(reference, capability, method, budget)
    if failure is None or other is None:
        return failure
    if _mismatch(other, method, budget, accuracy, answers, tolerance, agreement) is None:
        return None
    return f"{failure}; nor as recorded for the {capability} kernels"


def _mismatch(expected: tuple[float, list[str]], method: str, budget: int, accuracy: float, answers: list[str],
              tolerance: float, agreement: float) -> str | None:
    expected_accuracy, expected_answers = expected
    if len(answers) != len(expected_answers):
        return f"{method} k={budget}: {len(answers)} answers, {len(expected_answers)} recorded"
    if abs(accuracy - expected_accuracy) > tolerance:
        return f"{method} k={budget}: accuracy {accuracy:.2f} vs recorded {expected_accuracy:.2f} (tolerance {tolerance})"
    same = sum(a == b for a, b in zip(answers, expected_answers)) / max(len(answers), 1)
    if same < agreement:
        return f"{method} k={budget}: {same:.1%} of answers as recorded (at least {agreement:.0%} required)"
    return None
