"""The object store: where tenant objects (cached results, extracts, backups, the sealed
search index) live as opaque bytes. Callers seal before they put; this layer never sees
plaintext, so it only has to be durable, atomic and unable to escape its root.

Keys are ``/``-joined segments of ``[A-Za-z0-9._=-]``; the same rules hold for prefixes,
which may also end with ``/``. Prefixes match like S3 prefixes (plain string prefixes) on
both backends. Characters outside the key alphabet are reserved for the file backend's
temporary files (``~...``), which therefore never show up as objects.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, NoReturn, Protocol
from urllib.parse import unquote, urlsplit

from cmek import crashpoints
from cmek.errors import CmekError, InvalidInput

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

MAX_KEY_LENGTH: Final = 1024
_SEGMENT = r"[A-Za-z0-9._=-]+"
_KEY: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_PREFIX: Final = re.compile(rf"(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?")
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_READ_BUFFER: Final = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float


class ObjectNotFound(CmekError):
    code = "object_not_found"


class ObjectStoreUnavailable(CmekError):
    code = "object_store_unavailable"


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def put_stream(self, key: str, writer: Callable[[BinaryIO], None]) -> int:
        """Publish what ``writer`` writes, atomically and only if it returns normally."""
        ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """A streaming read; the caller closes it."""
        ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int: ...

    def sweep(self, prefix: str = "") -> int:
        """Delete what writers that died mid-write left behind; never a live write's."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Sorted by key."""
        ...

    def exists(self, key: str) -> bool: ...


# --- keys ----------------------------------------------------------------------------------


def _show(value: str) -> str:
    return repr(value[:80]) + ("..." if len(value) > 80 else "")


def _bad_path(kind: str, value: object, rules: str) -> NoReturn:
    shown = _show(value) if isinstance(value, str) else type(value).__name__
    raise InvalidInput(f"invalid object {kind} {shown}: {rules}")


def _check(kind: str, value: object, pattern: re.Pattern[str], *, allow_empty: bool) -> str:
    rules = (f"use 1-{MAX_KEY_LENGTH} characters of A-Z a-z 0-9 . _ = - in segments joined "
             "by '/', with no empty, '.' or '..' segment")
    if not isinstance(value, str):
        _bad_path(kind, value, rules)
    if not value and not allow_empty:
        _bad_path(kind, value, f"it is empty; {rules}")
    if len(value) > MAX_KEY_LENGTH:
        _bad_path(kind, value, f"longer than {MAX_KEY_LENGTH} characters")
    if not pattern.fullmatch(value):
        _bad_path(kind, value, rules)
    if any(part in (".", "..") for part in value.split("/")):
        _bad_path(kind, value, "'.' and '..' segments are not allowed")
    return value


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise InvalidInput."""
    return _check("key", key, _KEY, allow_empty=False)


def _validate_prefix(prefix: str, *, allow_empty: bool) -> str:
    return _check("prefix", prefix, _PREFIX, allow_empty=allow_empty)


def _is_key(name: str) -> bool:
    try:
        validate_key(name)
    except InvalidInput:
        return False
    return True


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


# --- local folder --------------------------------------------------------------------------


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
                f"object key {_show(key)} collides with an existing object or prefix in "
                f"the file object store (an object cannot also be a folder)")
        if e.errno == errno.ENAMETOOLONG:
            return InvalidInput(f"object key {_show(key)} is too long for the file system")
        return self._unavailable(f"cannot {what} {_show(key)}", e)

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
            with _sweep_lock(self.root, fcntl.LOCK_SH):  # no sweep between making and locking
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
            raise ObjectNotFound(f"no object {_show(key)} in {self.url}") from None
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
        _validate_prefix(prefix, allow_empty=False)
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
        _validate_prefix(prefix, allow_empty=True)
        base = self._base(prefix)
        swept: list[Path] = []
        try:
            with _sweep_lock(self.root, fcntl.LOCK_EX):
                for folder, dirs, files in os.walk(base):
                    dirs[:] = [d for d in dirs if _is_key(d)]
                    rel = Path(folder).relative_to(self.root).as_posix()
                    if not ("" if rel == "." else rel + "/").startswith(prefix):
                        continue  # a folder beside the prefix, not below it
                    swept += [Path(folder) / name for name in files if _is_staging(name)
                              and _remove_abandoned(Path(folder) / name)]
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
        _validate_prefix(prefix, allow_empty=True)
        out: list[ObjectInfo] = []
        for key, st in self._walk(self._base(prefix)):
            if key.startswith(prefix):
                out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(out, key=lambda info: info.key)

    def _walk(self, base: Path) -> Iterator[tuple[str, os.stat_result]]:
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if _is_key(d)]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                if not _is_key(name):
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


@contextlib.contextmanager
def _sweep_lock(folder: Path | str, mode: int) -> Iterator[None]:
    """Writers hold it shared while they create and lock a staging file, a sweep holds
    it exclusively: a sweep never sees a staging file that its writer has not locked yet."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _remove_abandoned(path: Path) -> bool:
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


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; best effort, the object is already visible."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- S3 ------------------------------------------------------------------------------------


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a raw file, with transport errors mapped."""

    def __init__(self, body: StreamingBody, fail: Callable[[Exception], CmekError]) -> None:
        self._body = body
        self._fail = fail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except Exception as e:
            raise self._fail(e) from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3ObjectStore:
    """Objects under ``prefix`` in an existing bucket. Credentials come from boto3's
    standard chain. ``put_stream`` spools to ``spool_dir`` (default: the system temporary
    folder) so large objects upload as multipart without being held in memory."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
        region: str = "us-east-1", spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise InvalidInput("the S3 bucket name must be 3-63 characters of a-z 0-9 . -")
        _validate_prefix(prefix, allow_empty=True)
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.url = f"s3://{bucket}/{self.prefix.rstrip('/')}" if prefix else f"s3://{bucket}"
        self._spool_dir = os.fspath(spool_dir) if spool_dir is not None else None
        self._transfer = TransferConfig()
        config = Config(
            connect_timeout=5, read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # S3-compatible servers: path-style URLs, and checksums only where S3 needs them.
            s3={"addressing_style": "path"} if endpoint_url else None,
            request_checksum_calculation="when_required" if endpoint_url else None,
        )
        try:
            session = boto3.session.Session(region_name=region)
            self._client: S3Client = session.client(
                "s3", endpoint_url=endpoint_url, config=config)
        except ValueError:
            raise InvalidInput("invalid S3 endpoint URL: use http(s)://host[:port]") from None
        except Exception as e:
            raise self._error(e, "connect") from None
        self._check_bucket()

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if _aws_code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise ObjectStoreUnavailable(
                    f"object store {self.url}: bucket {self.bucket!r} does not exist; "
                    "create it first") from None
            raise self._error(e, "HeadBucket") from None

    def _error(self, e: Exception, op: str, key: str | None = None) -> CmekError:
        """Map a boto3 exception to a one-line cmek error (codes and messages only: no
        request details, no credentials)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, CmekError):
            return e
        inner = e.__cause__ or e.__context__
        if isinstance(e, Boto3Error) and isinstance(inner, ClientError):
            e = inner  # S3UploadFailedError: report the S3 error, not the spool path
        code = _aws_code(e)
        if key is not None and code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(f"no object {_show(key)} in {self.url}")
        if code == "NoSuchBucket":
            return ObjectStoreUnavailable(
                f"object store {self.url}: {op} failed: bucket {self.bucket!r} does not exist")
        if isinstance(e, ClientError):
            text = _one_line(str(e.response.get("Error", {}).get("Message", "")))
            return ObjectStoreUnavailable(
                f"object store {self.url}: {op} failed: {code}" + (f": {text}" if text else ""))
        if isinstance(e, BotoCoreError | Boto3Error | OSError):
            return ObjectStoreUnavailable(
                f"object store {self.url}: {op} failed: {type(e).__name__}: "
                f"{_one_line(str(e))}")
        return ObjectStoreUnavailable(
            f"object store {self.url}: {op} failed: {type(e).__name__}")

    def _key(self, key: str) -> str:
        full = self.prefix + validate_key(key)
        if len(full.encode()) > MAX_KEY_LENGTH:
            raise InvalidInput(
                f"object key {_show(key)} is too long under the prefix {self.prefix!r}")
        return full

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as e:
            raise self._error(e, "PutObject") from None

    def put_stream(self, key: str, writer: Callable[[BinaryIO], None]) -> int:
        full = self._key(key)
        try:
            with _sweep_lock(self._spool_folder(), fcntl.LOCK_SH):
                fd, tmp = tempfile.mkstemp(prefix="cmek-spool-", suffix=".part",
                                           dir=self._spool_dir)
                fcntl.flock(fd, fcntl.LOCK_EX)  # held until uploaded: ``sweep`` leaves it be
        except OSError as e:
            raise ObjectStoreUnavailable(
                f"object store {self.url}: cannot create a spool file: "
                f"{e.strerror or type(e).__name__}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                size = f.seek(0, os.SEEK_END)
                f.flush()
                crashpoints.reached("objects.staged")
                try:
                    self._client.upload_file(tmp, self.bucket, full, Config=self._transfer)
                except Exception as e:
                    raise self._error(e, "upload") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return size

    def get(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def open(self, key: str) -> BinaryIO:
        full = self._key(key)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
        except Exception as e:
            raise self._error(e, "GetObject", key) from None
        raw = _BodyReader(body, lambda e: self._error(e, "GetObject (reading)"))
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as e:
            raise self._error(e, "DeleteObject") from None

    def delete_prefix(self, prefix: str) -> int:
        """Deletes everything below the prefix, also keys this store would not list."""
        _validate_prefix(prefix, allow_empty=False)
        keys = [key for key, _, _ in self._scan(self.prefix + prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                resp = self._client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as e:
                raise self._error(e, "DeleteObjects") from None
            errors = resp.get("Errors", [])
            if errors:
                first = errors[0]
                raise ObjectStoreUnavailable(
                    f"object store {self.url}: DeleteObjects failed for {len(errors)} "
                    f"object(s): {first.get('Code', 'Unknown')}: "
                    f"{_one_line(str(first.get('Message', '')))}")
        return len(keys)

    def _spool_folder(self) -> str:
        return self._spool_dir if self._spool_dir is not None else tempfile.gettempdir()

    def sweep(self, prefix: str = "") -> int:
        """Delete the spool files of writers that died mid-upload. S3 publishes an object
        whole or not at all; a multipart upload cut short is S3's to expire (a bucket
        lifecycle rule, AbortIncompleteMultipartUpload)."""
        _validate_prefix(prefix, allow_empty=True)
        if prefix:
            return 0  # spool files belong to no key until uploaded
        folder = self._spool_folder()
        count = 0
        with _sweep_lock(folder, fcntl.LOCK_EX):
            for name in os.listdir(folder):
                if name.startswith("cmek-spool-") and name.endswith(".part") and (
                        _remove_abandoned(Path(folder) / name)):
                    count += 1
        return count

    def _scan(self, full_prefix: str) -> Iterator[tuple[str, int, float]]:
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"], obj["Size"], obj["LastModified"].timestamp()
        except Exception as e:
            raise self._error(e, "ListObjectsV2") from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        _validate_prefix(prefix, allow_empty=True)
        out = []
        for full, size, modified in self._scan(self.prefix + prefix):
            key = full[len(self.prefix):]
            if _is_key(key):  # a foreign key below the prefix is not one of ours
                out.append(ObjectInfo(key, size, modified))
        return sorted(out, key=lambda info: info.key)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as e:
            if _aws_code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(e, "HeadObject") from None
        return True


def _aws_code(e: Exception) -> str | None:
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", "Unknown"))
    return None


# --- URLs ----------------------------------------------------------------------------------


def open_object_store(
    url: str, *, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1",
) -> ObjectStore:
    """``file:///abs/path`` or ``s3://bucket/optional/prefix``. Messages never echo the URL,
    which might carry credentials someone pasted into it."""
    usage = "use file:///absolute/path or s3://bucket/optional/prefix"
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"the object store URL is empty; {usage}")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidInput(f"the object store URL contains control characters; {usage}")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidInput(f"the object store URL is malformed; {usage}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("file", "s3"):
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise InvalidInput(f"the object store URL has {shown}; {usage}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidInput(f"the object store URL must not have a query or fragment; {usage}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(
                "a file object store URL has no host: use file:///absolute/path "
                "(three slashes)")
        path = unquote(parts.path)
        if not path.startswith("/") or "\x00" in path:
            raise InvalidInput("a file object store URL needs an absolute path: "
                               "file:///absolute/path")
        return FileObjectStore(path)
    if "@" in parts.netloc or ":" in parts.netloc:
        raise InvalidInput(
            "an s3 object store URL takes no credentials or port: s3://bucket/prefix "
            "(credentials come from the AWS environment; the endpoint from its own setting)")
    if not _BUCKET.fullmatch(parts.netloc):
        raise InvalidInput(
            "an s3 object store URL needs a bucket name of 3-63 characters a-z 0-9 . - : "
            "s3://bucket/optional/prefix")
    prefix = parts.path[1:] if parts.path.startswith("/") else parts.path
    try:
        _validate_prefix(prefix, allow_empty=True)
    except InvalidInput:
        raise InvalidInput(
            "the prefix of an s3 object store URL must be segments of A-Z a-z 0-9 . _ = - "
            "joined by '/', with no empty, '.' or '..' segment") from None
    return S3ObjectStore(parts.netloc, prefix, endpoint_url=s3_endpoint_url, region=s3_region)
