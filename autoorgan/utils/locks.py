"""One writer per folder: a training fold folder or a prediction output folder is locked while a command writes
into it, so two runs can never delete each other's temporary files or interleave checkpoints.

The lock is an ``fcntl`` lock on ``FOLDER/.autoorgan.lock`` (released by the operating system when the process ends,
even after ``kill -9``, so a crash never leaves a stale lock; a file left by a killed process is simply taken over);
the file records the holder's PID and command and is removed when the holder finishes.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from autoorgan.utils.errors import UserError

LOCK_NAME = ".autoorgan.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if needed) for the block; a one-line UserError naming the other
    process when it is held. ``what``: the activity, for the message (e.g. "training"). The lock file is removed on
    release (a holder checks that the file it locked is still the one on disk, so removal cannot let two in)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(f"{folder} is in use by {holder} ({what}); wait for it to finish or choose another "
                            "folder") from None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the previous holder removed the file we locked: lock the new one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}: {' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}")
        fh.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        fh.close()
