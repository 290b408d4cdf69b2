"""The object store: where tenant objects (cached results, extracts, backups, the sealed
search index) live as opaque bytes. Callers seal before they put; this layer never sees
plaintext, so it only has to be durable, atomic and unable to escape its root.

Keys are ``/``-joined segments of ``[A-Za-z0-9._=-]``; the same rules hold for prefixes,
which may also end with ``/``. Prefixes match like S3 prefixes (plain string prefixes) on
both backends. Characters outside the key alphabet are reserved for the file backend's
temporary files (``~...``), which therefore never show up as objects.

This module is the port and its key rules; the backends are ``objects_file`` (a local
folder) and ``objects_s3``, and ``open_object_store`` picks one from a URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, NoReturn, Protocol
from urllib.parse import unquote, urlsplit

from cmek.errors import CmekError, InvalidInput

MAX_KEY_LENGTH: Final = 1024
_SEGMENT = r"[A-Za-z0-9._=-]+"
_KEY: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_PREFIX: Final = re.compile(rf"(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?")


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


def show_key(value: str) -> str:
    return repr(value[:80]) + ("..." if len(value) > 80 else "")


def _bad_path(kind: str, value: object, rules: str) -> NoReturn:
    shown = show_key(value) if isinstance(value, str) else type(value).__name__
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


def validate_prefix(prefix: str, *, allow_empty: bool) -> str:
    return _check("prefix", prefix, _PREFIX, allow_empty=allow_empty)


def is_key(name: str) -> bool:
    try:
        validate_key(name)
    except InvalidInput:
        return False
    return True


# --- URLs ----------------------------------------------------------------------------------


def open_object_store(
    url: str, *, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1",
) -> ObjectStore:
    """``file:///abs/path`` or ``s3://bucket/optional/prefix``. Messages never echo the URL,
    which might carry credentials someone pasted into it."""
    # The backends build on this module's port and key rules, hence imported only here.
    from cmek.stores.objects_file import FileObjectStore
    from cmek.stores.objects_s3 import BUCKET, S3ObjectStore

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
    if not BUCKET.fullmatch(parts.netloc):
        raise InvalidInput(
            "an s3 object store URL needs a bucket name of 3-63 characters a-z 0-9 . - : "
            "s3://bucket/optional/prefix")
    prefix = parts.path[1:] if parts.path.startswith("/") else parts.path
    try:
        validate_prefix(prefix, allow_empty=True)
    except InvalidInput:
        raise InvalidInput(
            "the prefix of an s3 object store URL must be segments of A-Z a-z 0-9 . _ = - "
            "joined by '/', with no empty, '.' or '..' segment") from None
    return S3ObjectStore(parts.netloc, prefix, endpoint_url=s3_endpoint_url, region=s3_region)
