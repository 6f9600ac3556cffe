"""Results on disk: an append-only, resumable predictions.jsonl and an atomically written metrics.json."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from eval.predictions import CorruptPredictions, complete_lines, corrupt_line, parse_prediction

__all__ = ["CorruptPredictions", "PredictionWriter", "read_predictions", "write_json_atomic"]


def read_predictions(path: Path, repair: bool = False, notes: list[str] | None = None) -> list[dict]:
    """The predictions of a run folder, one per question, in file order.

    A trailing partial line (a killed write) is cut off the file. A line in the middle that is not a JSON
    object with a question_id is a :class:`CorruptPredictions` error naming the file and line; with
    ``repair=True`` such lines are moved to ``<file>.bad`` (nothing is deleted) and their questions are
    answered again. Repeated question ids (two processes that wrote one file) keep their first line; the file
    is rewritten without the repeats. What was repaired is appended to ``notes``.
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete_end = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
    if complete_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(complete_end)
    lines = complete_lines(raw)
    rows, keep, bad, seen, repeats, other_answer = [], [], [], {}, 0, 0
    for line_no, line in lines:
        row = parse_prediction(line)
        if row is None:
            if not repair:
                raise corrupt_line(path, line_no, "rerun the same command")
            bad.append(line)
        elif row["question_id"] in seen:
            repeats += 1
            other_answer += seen[row["question_id"]].get("prediction") != row.get("prediction")
        else:
            seen[row["question_id"]] = row
            rows.append(row)
            keep.append(line)
    if bad:
        with path.with_name(path.name + ".bad").open("ab") as f:
            f.write(b"".join(line + b"\n" for line in bad))
        _note(notes, f"moved {len(bad)} corrupt line(s) of {path} to {path.name}.bad; their questions are "
                     "answered again")
    if repeats:
        _note(notes, f"{path} held {repeats} repeated line(s) (two processes wrote it at once?); kept the first "
                     f"line of each question ({other_answer} repeat(s) had another answer)")
    if bad or repeats:
        _write_atomic(path, b"".join(line + b"\n" for line in keep))
    return rows


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class PredictionWriter:
    """Appends one JSON line per prediction; each batch is written unbuffered and fsync'ed, so a failure (a
    kill, a full disk) loses at most the batch being written: a partial last line is cut off by the next
    :func:`read_predictions`. The file is created at the first write."""

    def __init__(self, path: Path):
        self._path = path
        self._file = None

    def write(self, rows: list[dict]) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("ab", buffering=0)
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file, and a failed
    write (disk full) leaves the previous file and no temporary one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
