"""An exclusive lock per run folder, so that two processes never write one predictions.jsonl.

``flock`` on ``<run folder>/.lock``: the kernel releases it when its process ends in any way (exit, Ctrl-C,
kill -9, a node crash on a local disk), so a stale lock of a dead process never blocks a rerun. The file holds
the holder's pid, host and start time, for the message the second process prints. The lock file is removed on
release (and the run folder too when the run left nothing in it); a process that locked a file that was
removed meanwhile notices it (inode check) and retries, so two processes never both hold "the" lock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from svdprune.errors import UserError

LOCK_NAME = ".lock"


class RunFolderBusy(UserError):
    """Another live process holds the run folder."""


class RunLock:
    """``with RunLock(folder): ...`` -- exclusive, non-blocking; a held lock is a one-line :class:`RunFolderBusy`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock created, innermost first

    def acquire(self) -> None:
        missing = self.folder
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunFolderBusy(f"{self.folder} is in use by another run ({self._holder()}); wait for it to "
                                    "finish or stop it, then rerun the same command") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and flock: lock the new one
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError:  # a full disk: the lock holds all the same, only the busy message has less to say
            pass

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # only empty ones go: the run failed before its first answer
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
