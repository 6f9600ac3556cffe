"""Official answer scoring.

``gqa``: LLaVA-1.5's GQA evaluation (``scripts/convert_gqa_for_eval.py`` + ``eval_gqa.py``): strip every
trailing period, lowercase, exact match against the single reference answer.
"""
from __future__ import annotations


def normalize_gqa(answer: str) -> str:
    return answer.strip().rstrip(".").lower()


def gqa_accuracy(prediction: str, answer: str | list[str]) -> float:
    """1.0 if the normalised prediction equals the normalised answer, else 0.0."""
    reference = answer[0] if isinstance(answer, list) else answer
    return float(normalize_gqa(prediction) == normalize_gqa(reference))


SCORERS = {
    "gqa": gqa_accuracy,
}


def score(scorer: str, prediction: str, answers: list[str]) -> float:
    return SCORERS[scorer](prediction, answers)
