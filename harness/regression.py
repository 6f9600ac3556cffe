"""Recorded-answer regression, shared by the CI tests of the project's trained models (tests/test_mini_regression.py,
tests/test_scenes_regression.py).

A reference file (results/<benchmark>/regression.json, written by the benchmark's eval script with
``--regression``) holds ``limit`` (the first N test questions), ``checkpoint_sha256`` (the weights it belongs
to), and per method and budget the ``accuracy`` and the ``answers`` in question order. A fresh run passes when
its accuracy is within ``tolerance`` points of the recorded one and at least ``agreement`` of its answers are
the recorded answers. The answer check is the sharper one: a broken selection that keeps accuracy (several token
sets can answer a question) still changes which answers come out.
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


def recorded(reference: dict, method: str, budget: int) -> tuple[float, list[str]]:
    """(accuracy %, answers) recorded for ``method`` at ``budget``."""
    key = next(iter(reference["accuracy"][method])) if method == "vanilla" else str(budget)
    return reference["accuracy"][method][key], reference["answers"][method][key]


def mismatch(reference: dict, method: str, budget: int, accuracy: float, answers: list[str], tolerance: float,
             agreement: float) -> str | None:
    """Why a fresh run of ``method`` at ``budget`` does not match the reference, or None when it does."""
    expected_accuracy, expected_answers = recorded(reference, method, budget)
    if len(answers) != len(expected_answers):
        return f"{method} k={budget}: {len(answers)} answers, {len(expected_answers)} recorded"
    if abs(accuracy - expected_accuracy) > tolerance:
        return f"{method} k={budget}: accuracy {accuracy:.2f} vs recorded {expected_accuracy:.2f} (tolerance {tolerance})"
    same = sum(a == b for a, b in zip(answers, expected_answers)) / max(len(answers), 1)
    if same < agreement:
        return f"{method} k={budget}: {same:.1%} of answers as recorded (at least {agreement:.0%} required)"
    return None
