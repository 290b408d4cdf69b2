"""Folders and files the platform makes are its own: folders 0700, the missing parents
included (``mkdir`` with ``parents=True`` would give those the umask's default instead),
files 0600 from the moment they exist."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def private_dir(path: Path) -> Path:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode passes through the umask
    return path


def private_file(path: Path | str, text: str) -> None:
    """A new file readable by its owner alone; never replaces one that exists."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def created_once(path: Path, make: Callable[[], str]) -> str:
    """The file's text, made by whoever comes first: written aside, then linked into
    place, so no process ever reads it half written."""
    if not path.exists():
        aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        private_file(aside, make())
        try:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink()
    return path.read_text()
