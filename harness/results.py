"""Results on disk: an append-only, resumable predictions.jsonl and an atomically written metrics.json."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def read_predictions(path: Path) -> list[dict]:
    """All complete prediction lines. A trailing partial line (a killed write) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete_end = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
    if complete_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(complete_end)
    lines = raw[:complete_end].decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class PredictionWriter:
    """Appends one JSON line per prediction; each batch is written with one call and flushed.
    The file (and its folder) is created at the first write: a run that fails before answering leaves nothing."""

    def __init__(self, path: Path):
        self._path = path
        self._file = None

    def write(self, rows: list[dict]) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
