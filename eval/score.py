"""Re-score a run: ``python -m eval.score <predictions.jsonl> [--scorer gqa|vqa]``.

Without ``--scorer`` the scorer is read from ``metrics.json`` next to the predictions file (key
``"scorer"``). Prints the result of :func:`eval.scoring.score_predictions` as JSON; bad input prints one
``error: ...`` line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.scoring import SCORERS, score_predictions
from svdprune.errors import UserError


def scorer_from_metrics(predictions: Path) -> str:
    """The ``scorer`` recorded in the run's metrics.json (same folder as the predictions file)."""
    metrics_file = predictions.parent / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(f"no metrics.json next to {str(predictions)!r} to read the scorer from; "
                        f"pass --scorer ({'|'.join(sorted(SCORERS))})")
    try:
        metrics = json.loads(metrics_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{metrics_file} is not valid JSON ({exc}); pass --scorer") from None
    scorer = metrics.get("scorer") if isinstance(metrics, dict) else None
    if not isinstance(scorer, str):
        raise UserError(f"{metrics_file} has no \"scorer\" key; pass --scorer ({'|'.join(sorted(SCORERS))})")
    return scorer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__.splitlines()[0])
    parser.add_argument("predictions", help="a run's predictions.jsonl")
    parser.add_argument("--scorer", choices=sorted(SCORERS),
                        help="default: the \"scorer\" in metrics.json next to the predictions file")
    args = parser.parse_args(argv)
    try:
        predictions = Path(args.predictions)
        if not predictions.is_file():
            raise UserError(f"predictions file {str(predictions)!r} does not exist")
        scorer = args.scorer or scorer_from_metrics(predictions)
        result = score_predictions(predictions, scorer)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"scorer": scorer, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
