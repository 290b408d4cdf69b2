"""Staging files on local disk that a sweep can tell apart from live writes: the file
store stages each object next to its target, the S3 store spools each upload. A writer
holds a lock on its staging file until it is published, so a sweep removes only what a
writer that died mid-write left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sweep_lock(folder: Path | str, mode: int) -> Iterator[None]:
    """Writers hold it shared while they create and lock a staging file, a sweep holds
    it exclusively: a sweep never sees a staging file that its writer has not locked yet."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def remove_abandoned(path: Path) -> bool:
    """Delete a staging file if no live writer holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # published or removed meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        try:
            os.unlink(path)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
