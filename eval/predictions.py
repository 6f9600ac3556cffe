"""Reading a run's predictions.jsonl: one line parser and one read-only reader, shared by the runner (which
also repairs files, harness/results.py) and every report (eval/reports/, eval/score.py's callers,
harness/sweep_status.py), so that a damaged file is described the same way wherever it is read."""
from __future__ import annotations

import json
from pathlib import Path

from svdprune.errors import UserError


class CorruptPredictions(UserError):
    """A line in the middle of predictions.jsonl is not a prediction (a disk error, a hand edit)."""


def parse_prediction(line: bytes) -> dict | None:
    """One line as a prediction: a JSON object with a question_id; None for anything else."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return row if isinstance(row, dict) and "question_id" in row else None


def corrupt_line(path: Path, line_no: int, rerun: str = "rerun its run (the same run.py command)") -> CorruptPredictions:
    return CorruptPredictions(
        f"{path}:{line_no}: corrupt line (not a JSON prediction); {rerun} with repair_predictions=true to move it "
        f"to {Path(path).name}.bad and answer that question again")


def complete_lines(raw: bytes) -> list[tuple[int, bytes]]:
    """(line number, line) of every non-empty line up to the last newline: a partial last line (a write in
    progress, or one a kill cut short) is left out."""
    complete = raw[: raw.rfind(b"\n") + 1]
    return [(no, line) for no, line in enumerate(complete.split(b"\n")[:-1], 1) if line.strip()]


def read_prediction_rows(path: Path) -> list[dict]:
    """Every complete line of ``path`` as a prediction, in file order, read-only ([] for no file). A line that
    is not a prediction is a :class:`CorruptPredictions` error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line_no, line in complete_lines(path.read_bytes()):
        row = parse_prediction(line)
        if row is None:
            raise corrupt_line(path, line_no)
        rows.append(row)
    return rows
