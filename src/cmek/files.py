"""Folders the platform makes are its own: 0700, the missing parents included (``mkdir``
with ``parents=True`` would give those the umask's default instead)."""

from __future__ import annotations

from pathlib import Path


def private_dir(path: Path) -> Path:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode passes through the umask
    return path
