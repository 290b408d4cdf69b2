"""The object store in a local folder: one file per object, staged beside its target and
published by a rename, so a reader sees a whole object or none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from cmek import crashpoints
from cmek.errors import CmekError, InvalidInput
from cmek.stores.objects import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreUnavailable,
    is_key,
    show_key,
    validate_key,
    validate_prefix,
)
from cmek.stores.objects_staging import remove_abandoned, sweep_lock


class FileObjectStore:
    """Objects as files below ``root``: folder 0700, files 0600, published by rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise InvalidInput("the object store folder must be an absolute path")
        self.root = path
        self.url = path.as_uri()
        try:
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as e:
            raise self._unavailable("cannot create the folder", e) from None

    def _unavailable(self, what: str, e: OSError) -> ObjectStoreUnavailable:
        return ObjectStoreUnavailable(
            f"object store {self.url}: {what}: {e.strerror or type(e).__name__}")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _os_error(self, key: str, what: str, e: OSError) -> CmekError:
        if isinstance(e, NotADirectoryError | IsADirectoryError | FileExistsError):
            return InvalidInput(
                f"object key {show_key(key)} collides with an existing object or prefix in "
                f"the file object store (an object cannot also be a folder)")
        if e.errno == errno.ENAMETOOLONG:
            return InvalidInput(f"object key {show_key(key)} is too long for the file system")
        return self._unavailable(f"cannot {what} {show_key(key)}", e)

    def _make_parents(self, key: str) -> Path:
        folder = self.root
        for part in key.split("/")[:-1]:
            folder = folder / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
        return folder

    def _staging_file(self, key: str) -> tuple[int, str, Path]:
        """A 0600 temporary file next to the target; retried if a concurrent delete pruned
        the freshly made folder."""
        for attempt in range(3):
            try:
                folder = self._make_parents(key)
                fd, tmp = tempfile.mkstemp(prefix="~", suffix=".part", dir=folder)
                return fd, tmp, folder
            except FileNotFoundError as e:
                if attempt == 2:
                    raise self._os_error(key, "write", e) from None
            except OSError as e:
                raise self._os_error(key, "write", e) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, key: str, data: bytes) -> None:
        def write(f: BinaryIO) -> None:
            f.write(data)

        self.put_stream(key, write)

    def put_stream(self, key: str, writer: Callable[[BinaryIO], None]) -> int:
        target = self._path(key)
        try:
            with sweep_lock(self.root, fcntl.LOCK_SH):  # no sweep between making and locking
                fd, tmp, folder = self._staging_file(key)
                fcntl.flock(fd, fcntl.LOCK_EX)  # held until published: ``sweep`` leaves it
        except OSError as e:
            raise self._os_error(key, "write", e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                size = f.seek(0, os.SEEK_END)
                try:
                    os.fsync(f.fileno())
                except OSError as e:
                    raise self._os_error(key, "write", e) from None
                crashpoints.reached("objects.staged")
                try:
                    os.replace(tmp, target)
                except OSError as e:
                    raise self._os_error(key, "write", e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._prune(folder)
            raise
        _fsync_folder(folder)
        return size

    def get(self, key: str) -> bytes:
        with self.open(key) as f:
            try:
                return f.read()
            except OSError as e:
                raise self._os_error(key, "read", e) from None

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {show_key(key)} in {self.url}") from None
        except OSError as e:
            raise self._os_error(key, "read", e) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as e:
            raise self._os_error(key, "delete", e) from None
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix, allow_empty=False)
        count = 0
        for info in self.list(prefix):
            try:
                os.unlink(self.root.joinpath(*info.key.split("/")))
                count += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._os_error(info.key, "delete", e) from None
        base = self._base(prefix)
        for folder, _, _ in os.walk(base, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._prune(base.parent if base != self.root else base)
        return count

    def sweep(self, prefix: str = "") -> int:
        """Delete the staging files of writers that died mid-write (a crash, a kill): a
        live writer holds a lock on its staging file until it is published, so only
        abandoned ones go. Returns how many."""
        validate_prefix(prefix, allow_empty=True)
        base = self._base(prefix)
        swept: list[Path] = []
        try:
            with sweep_lock(self.root, fcntl.LOCK_EX):
                for folder, dirs, files in os.walk(base):
                    dirs[:] = [d for d in dirs if is_key(d)]
                    rel = Path(folder).relative_to(self.root).as_posix()
                    if not ("" if rel == "." else rel + "/").startswith(prefix):
                        continue  # a folder beside the prefix, not below it
                    swept += [Path(folder) / name for name in files if _is_staging(name)
                              and remove_abandoned(Path(folder) / name)]
        except OSError as e:
            raise self._unavailable("cannot sweep staging files", e) from None
        for path in swept:
            self._prune(path.parent)
        return len(swept)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty, up to (not including) the root."""
        while folder != self.root and self.root in folder.parents:
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = folder.parent

    def _base(self, prefix: str) -> Path:
        """The deepest folder that holds every object whose key starts with ``prefix``."""
        folder, _, _ = prefix.rpartition("/")
        return self.root.joinpath(*folder.split("/")) if folder else self.root

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix, allow_empty=True)
        out: list[ObjectInfo] = []
        for key, st in self._walk(self._base(prefix)):
            if key.startswith(prefix):
                out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(out, key=lambda info: info.key)

    def _walk(self, base: Path) -> Iterator[tuple[str, os.stat_result]]:
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if is_key(d)]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                if not is_key(name):
                    continue  # temporary files and foreign names
                try:
                    st = os.stat(os.path.join(folder, name), follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield (name if rel == "." else f"{rel}/{name}"), st

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


_STAGING_PREFIXES: Final = ("~", "cmek-spool-")


def _is_staging(name: str) -> bool:
    return name.startswith(_STAGING_PREFIXES) and name.endswith(".part")


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; best effort, the object is already visible."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
