"""The object store in an existing S3 bucket, or on an S3-compatible server. S3 publishes
an object whole or not at all, so what a crash leaves behind is only a local spool file.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from cmek import crashpoints
from cmek.errors import CmekError, InvalidInput
from cmek.stores.objects import (
    MAX_KEY_LENGTH,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreUnavailable,
    is_key,
    show_key,
    validate_key,
    validate_prefix,
)
from cmek.stores.objects_staging import remove_abandoned, sweep_lock

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_READ_BUFFER: Final = 1 << 20


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


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

        if not isinstance(bucket, str) or not BUCKET.fullmatch(bucket):
            raise InvalidInput("the S3 bucket name must be 3-63 characters of a-z 0-9 . -")
        validate_prefix(prefix, allow_empty=True)
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
            return ObjectNotFound(f"no object {show_key(key)} in {self.url}")
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
                f"object key {show_key(key)} is too long under the prefix {self.prefix!r}")
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
            with sweep_lock(self._spool_folder(), fcntl.LOCK_SH):
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
        validate_prefix(prefix, allow_empty=False)
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
        validate_prefix(prefix, allow_empty=True)
        if prefix:
            return 0  # spool files belong to no key until uploaded
        folder = self._spool_folder()
        count = 0
        with sweep_lock(folder, fcntl.LOCK_EX):
            for name in os.listdir(folder):
                if name.startswith("cmek-spool-") and name.endswith(".part") and (
                        remove_abandoned(Path(folder) / name)):
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
        validate_prefix(prefix, allow_empty=True)
        out = []
        for full, size, modified in self._scan(self.prefix + prefix):
            key = full[len(self.prefix):]
            if is_key(key):  # a foreign key below the prefix is not one of ours
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
