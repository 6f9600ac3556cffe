"""One run split across processes (e.g. one per GPU): ``shard=i/n``.

Shard i of n answers the i-th of n contiguous blocks of the run's selected questions (after ``limit`` /
``subset``), so questions of one image mostly stay together. Each shard appends to its own file,
``<run folder>/shard-<i>-of-<n>/predictions.jsonl``, never to the run's predictions.jsonl, so shards never
write one file at once. The shard that finds every question answered (normally the last one to finish)
merges: the run's predictions.jsonl gets the missing rows in question order (written to a temporary file
and renamed), the shard folders are removed, and the runner writes metrics.json as for an unsharded run.
The shard setting is not part of the run's identity: shards fill the same run folder as the unsharded run,
and the merged files equal the unsharded run's question for question.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from svdprune.errors import UserError

from .lock import RunFolderBusy, RunLock
from .results import read_predictions

_SHARD = re.compile(r"^(\d+)/(\d+)$")
_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder_name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(value) -> Shard | None:
    """``None`` -> no sharding; ``"i/n"`` with 0 <= i < n -> Shard(i, n); anything else is a UserError."""
    if value is None:
        return None
    match = _SHARD.match(str(value).strip())
    if match is None or not int(match[1]) < int(match[2]):
        raise UserError(f"shard={value!r} must be i/n with 0 <= i < n (e.g. shard=0/2 and shard=1/2), or null")
    return Shard(int(match[1]), int(match[2]))


def shard_records(records: Sequence, shard: Shard | None) -> list:
    """The contiguous block of ``records`` that ``shard`` answers (all of them for None). Blocks differ in
    size by at most one; their concatenation over i = 0..n-1 is ``records``."""
    if shard is None:
        return list(records)
    n = len(records)
    return list(records[shard.index * n // shard.count:(shard.index + 1) * n // shard.count])


def shard_predictions_path(out_dir: Path, shard: Shard) -> Path:
    return out_dir / shard.folder_name / "predictions.jsonl"


def shard_folders(out_dir: Path) -> list[Path]:
    """The shard folders of a run folder (any n), sorted."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and _SHARD_DIR.match(p.name))


def read_shard(out_dir: Path, shard: Shard, repair: bool = False, notes: list[str] | None = None) -> list[dict]:
    """The complete prediction lines shard ``shard`` has written so far (``repair``/``notes``: as
    :func:`harness.results.read_predictions`)."""
    return read_predictions(shard_predictions_path(out_dir, shard), repair, notes)


def merge_shards(out_dir: Path, question_ids: Sequence[str], digest: str, count: int) -> list[dict] | None:
    """If the run's predictions.jsonl and the ``count`` shard files of ``out_dir`` together answer every
    question of ``question_ids`` (rows of config hash ``digest``), write the rows predictions.jsonl lacks
    to it (in ``question_ids`` order, via a temporary file and a rename), remove the shard folders and
    return every row of ``question_ids``, in that order. Otherwise change nothing and return None."""
    main_path = out_dir / "predictions.jsonl"
    existing = read_predictions(main_path)
    rows = {r["question_id"]: r for r in existing if r.get("config_hash") == digest}
    for index in range(count):
        for row in read_shard(out_dir, Shard(index, count)):
            if row.get("config_hash") == digest:
                rows.setdefault(row["question_id"], row)
    if any(qid not in rows for qid in question_ids):
        return None
    present = {r["question_id"] for r in existing}
    missing = [rows[qid] for qid in question_ids if qid not in present]
    if missing:
        _write_lines_atomic(main_path, existing + missing)
    for index in range(count):
        shutil.rmtree(out_dir / Shard(index, count).folder_name, ignore_errors=True)
    return [rows[qid] for qid in question_ids]


def _write_lines_atomic(path: Path, rows: list[dict]) -> None:
    """predictions.jsonl in the format PredictionWriter writes, replaced in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_finished_shard_folders(out_dir: Path, answered: set[str], digest: str) -> list[Path]:
    """After the run is complete: remove the shard folders (any n, e.g. of an abandoned ``shard=i/3`` attempt)
    whose every row is of this configuration and answered in the run's predictions.jsonl. A folder locked by a
    live shard process, or holding anything else, stays. Returns the removed folders."""
    removed = []
    for folder in shard_folders(out_dir):
        try:
            with RunLock(folder):
                rows = read_predictions(folder / "predictions.jsonl")
                if not all(r.get("config_hash") == digest and str(r["question_id"]) in answered for r in rows):
                    continue
                for entry in folder.iterdir():  # under the lock: a shard that starts now finds nothing to redo
                    if entry.name != ".lock":
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except (RunFolderBusy, OSError):
            continue
        try:
            folder.rmdir()  # fails (and the folder stays) if another shard locked it meanwhile
            removed.append(folder)
        except OSError:
            pass
    return removed
