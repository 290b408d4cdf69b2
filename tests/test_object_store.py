"""The object store, on both backends: a local folder and S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import pytest

from cmek.errors import CmekError, InvalidInput
from cmek.stores.objects import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUnavailable,
    open_object_store,
    validate_key,
)
from cmek.stores.objects_file import FileObjectStore
from cmek.stores.objects_s3 import S3ObjectStore

BUCKET = "cmek-objects"
SECRET = "dummy-secret-key-never-printed"
CREDENTIALS = {"aws_access_key_id": "AKIDTESTING", "aws_secret_access_key": SECRET}
MiB = 1 << 20

BAD_KEYS = [
    "../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "", ".", "..", "a/.", "a/..",
    "a/b/", "a\x00b", "a b", "a\nb", "é", "a~b", "x" * 1025,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto server did not answer within 30 s")
                time.sleep(0.05)  # waiting for the server to answer, not for time to pass
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     **CREDENTIALS).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials through boto3's standard chain, and nothing else from the host."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _raw_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)


def _bucket_keys(endpoint: str, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    pages = _raw_client(endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _tree(folder: Path) -> list[str]:
    """Everything below ``folder``, folders included, as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@dataclass
class Backend:
    kind: str
    store: ObjectStore
    physical: Callable[[], list[str]]  # everything stored, temporary files included
    world: Callable[[], list[str]]     # everything the store could reach if it escaped
    spool: Path                        # where put_stream stages its data
    outside: Path                      # a folder the store must never write to


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"untouched")
    if request.param == "file":
        root = outside / "root"  # the parent of the root is watched by the path-trick tests
        fstore = FileObjectStore(root)
        return Backend("file", fstore, lambda: _tree(root), lambda: _tree(outside), root,
                       outside)
    endpoint = request.getfixturevalue("moto_endpoint")
    request.getfixturevalue("aws_env")
    prefix = f"t-{uuid.uuid4().hex}"
    spool = tmp_path / "spool"
    spool.mkdir()
    s3store = S3ObjectStore(BUCKET, prefix, endpoint_url=endpoint, spool_dir=spool)
    return Backend("s3", s3store, lambda: _bucket_keys(endpoint, prefix=f"{prefix}/"),
                   lambda: _bucket_keys(endpoint), spool, outside)


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "tenants/t-1/results/r_2", "A.b=c-d/..e/f..", "x" * 1024])
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_refuses(key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_key(key)
    assert info.value.code == "invalid_input"
    assert "\n" not in info.value.message


# --- round trips -------------------------------------------------------------------------


def test_put_get_exists_list_delete(backend: Backend) -> None:
    store = backend.store
    before = time.time()
    assert store.list() == []
    assert not store.exists("tenants/a/results/r1")
    store.put("tenants/a/results/r1", b"sealed-1")
    store.put("tenants/a/index/search", b"")
    assert store.exists("tenants/a/results/r1")
    assert store.exists("tenants/a/index/search")
    assert not store.exists("tenants/a/results")  # a prefix is not an object
    assert store.get("tenants/a/results/r1") == b"sealed-1"
    assert store.get("tenants/a/index/search") == b""
    infos = store.list()
    assert [(i.key, i.size) for i in infos] == [
        ("tenants/a/index/search", 0), ("tenants/a/results/r1", 8)]
    assert all(isinstance(i, ObjectInfo) for i in infos)
    assert all(before - 5 <= i.modified <= time.time() + 5 for i in infos)
    store.delete("tenants/a/results/r1")
    assert not store.exists("tenants/a/results/r1")
    assert [i.key for i in store.list()] == ["tenants/a/index/search"]
    store.delete("tenants/a/results/r1")  # idempotent
    store.delete("never/there")
    with pytest.raises(ObjectNotFound):
        store.get("tenants/a/results/r1")


def test_list_is_sorted_and_matches_string_prefixes(backend: Backend) -> None:
    store = backend.store
    for key in ["b", "a/c/d", "ab", "a/b", "a/c/a", "a.z"]:
        store.put(key, key.encode())
    assert [i.key for i in store.list()] == ["a.z", "a/b", "a/c/a", "a/c/d", "ab", "b"]
    assert [i.key for i in store.list("a/")] == ["a/b", "a/c/a", "a/c/d"]
    assert [i.key for i in store.list("a")] == ["a.z", "a/b", "a/c/a", "a/c/d", "ab"]
    assert [i.key for i in store.list("a/c")] == ["a/c/a", "a/c/d"]
    assert [i.key for i in store.list("a/c/d")] == ["a/c/d"]
    assert store.list("nothing/") == []
    assert store.list("a/c/dd") == []


def test_delete_prefix(backend: Backend) -> None:
    store = backend.store
    for key in ["tenants/a/r/1", "tenants/a/r/2", "tenants/a/i/x", "tenants/ab/r/1", "other"]:
        store.put(key, b"v")
    assert store.delete_prefix("tenants/a/r/") == 2
    assert [i.key for i in store.list()] == ["other", "tenants/a/i/x", "tenants/ab/r/1"]
    assert store.delete_prefix("tenants/a/") == 1
    assert [i.key for i in store.list()] == ["other", "tenants/ab/r/1"]
    assert store.delete_prefix("tenants/a/") == 0
    assert store.delete_prefix("tenants/ab") == 1
    assert [i.key for i in store.list()] == ["other"]
    if backend.kind == "file":
        assert backend.physical() == ["other"]  # emptied folders are pruned


def test_overwrite(backend: Backend) -> None:
    store = backend.store
    store.put("k/v", b"first version")
    store.put("k/v", b"second")
    assert store.get("k/v") == b"second"
    assert [(i.key, i.size) for i in store.list()] == [("k/v", 6)]
    assert store.put_stream("k/v", lambda f: f.write(b"third!!") and None) == 7
    assert store.get("k/v") == b"third!!"
    assert [(i.key, i.size) for i in store.list()] == [("k/v", 7)]


def test_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound) as info:
        backend.store.get("tenants/a/results/missing")
    assert info.value.code == "object_not_found"
    assert "\n" not in info.value.message
    with pytest.raises(ObjectNotFound):
        backend.store.open("tenants/a/results/missing")
    backend.store.put("tenants/a/results/here", b"x")
    with pytest.raises(ObjectNotFound):
        backend.store.get("tenants/a/results")  # a folder / prefix is not an object
    with pytest.raises(ObjectNotFound):
        backend.store.get("tenants/a/results/here/below")


# --- streaming ---------------------------------------------------------------------------


def test_open_streams_a_5_mib_object(backend: Backend) -> None:
    data = os.urandom(5 * MiB)
    backend.store.put("big/five", data)
    digest = hashlib.sha256()
    reads = 0
    with backend.store.open("big/five") as f:
        assert f.readable()
        while chunk := f.read(64 * 1024):
            assert len(chunk) <= 64 * 1024
            digest.update(chunk)
            reads += 1
    assert reads >= 80  # read piecewise, not in one go
    assert digest.digest() == hashlib.sha256(data).digest()
    with backend.store.open("big/five") as f:
        assert f.read(10) == data[:10]  # closing early is fine


def test_put_stream_writes_20_mib_in_chunks(backend: Backend) -> None:
    expected = hashlib.sha256()
    seed = os.urandom(MiB)

    def writer(f: BinaryIO) -> None:
        for i in range(20):
            chunk = bytes([i]) + seed[1:]
            expected.update(chunk)
            f.write(chunk)

    assert backend.store.put_stream("backups/b1", writer) == 20 * MiB
    assert [(i.key, i.size) for i in backend.store.list()] == [("backups/b1", 20 * MiB)]
    got = hashlib.sha256()
    with backend.store.open("backups/b1") as f:
        while chunk := f.read(MiB):
            got.update(chunk)
    assert got.digest() == expected.digest()
    assert os.listdir(backend.spool) == ([] if backend.kind == "s3" else ["backups"])


class Boom(Exception):
    pass


def test_put_stream_failure_leaves_nothing(backend: Backend) -> None:
    store = backend.store

    def failing(f: BinaryIO) -> None:
        for _ in range(12):  # past the multipart threshold
            f.write(os.urandom(MiB))
        raise Boom("writer failed midway")

    with pytest.raises(Boom, match="midway"):
        store.put_stream("backups/partial", failing)
    assert not store.exists("backups/partial")
    assert store.list() == []
    assert backend.physical() == []  # no object, no temporary file, no folder left
    assert os.listdir(backend.spool) == []

    # A failing overwrite keeps the previous version whole.
    store.put("backups/kept", b"previous")
    with pytest.raises(Boom):
        store.put_stream("backups/kept", failing)
    assert store.get("backups/kept") == b"previous"
    assert [i.key for i in store.list()] == ["backups/kept"]
    assert len(backend.physical()) == (1 if backend.kind == "s3" else 2)


# --- path tricks -------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_path_tricks_are_refused(backend: Backend, key: str) -> None:
    store = backend.store
    store.put("inside", b"x")
    world_before = backend.world()
    physical_before = backend.physical()
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"evil"),
        lambda: store.put_stream(key, lambda f: f.write(b"evil") and None),
        lambda: store.get(key),
        lambda: store.open(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(InvalidInput) as info:
            call()
        assert "\n" not in info.value.message
    assert backend.world() == world_before
    assert (backend.outside / "x").read_bytes() == b"untouched"
    assert backend.physical() == physical_before


@pytest.mark.parametrize("prefix", ["../", "..", "/", "/etc", "a//", "a/../..", "a\\b", "./"])
def test_prefix_tricks_are_refused(backend: Backend, prefix: str) -> None:
    backend.store.put("inside/x", b"x")
    with pytest.raises(InvalidInput):
        backend.store.list(prefix)
    with pytest.raises(InvalidInput):
        backend.store.delete_prefix(prefix)
    with pytest.raises(InvalidInput):
        backend.store.delete_prefix("")  # never "everything"
    assert [i.key for i in backend.store.list("")] == ["inside/x"]
    assert (backend.outside / "x").read_bytes() == b"untouched"


def test_s3_keys_stay_under_the_prefix(moto_endpoint: str, aws_env: None) -> None:
    one = S3ObjectStore(BUCKET, "iso/one", endpoint_url=moto_endpoint)
    two = S3ObjectStore(BUCKET, "iso/one2/", endpoint_url=moto_endpoint)
    one.put("k", b"1")
    two.put("k", b"2")
    assert _bucket_keys(moto_endpoint, prefix="iso/") == ["iso/one/k", "iso/one2/k"]
    assert [i.key for i in one.list()] == ["k"]
    assert one.get("k") == b"1"
    assert two.get("k") == b"2"
    assert one.delete_prefix("k") == 1
    assert two.exists("k")
    assert one.url == f"s3://{BUCKET}/iso/one"
    assert two.url == f"s3://{BUCKET}/iso/one2"


def test_file_key_that_collides_with_a_folder(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "root")
    store.put("a/b", b"object")
    with pytest.raises(InvalidInput, match="collides"):
        store.put("a/b/c", b"x")
    store.put("d/e/f", b"x")
    with pytest.raises(InvalidInput, match="collides"):
        store.put("d/e", b"x")
    assert [i.key for i in store.list()] == ["a/b", "d/e/f"]
    assert _tree(tmp_path / "root") == ["a", "a/b", "d", "d/e", "d/e/f"]


def test_file_store_ignores_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FileObjectStore(root)
    store.put("a/ok", b"x")
    (root / "a" / "~tmp.part").write_bytes(b"in flight")
    (root / "a" / "bad name").write_bytes(b"foreign")
    (root / "a" / "link").symlink_to(tmp_path)
    assert [i.key for i in store.list()] == ["a/ok"]
    assert store.delete_prefix("a/") == 1
    assert (root / "a" / "~tmp.part").exists()


# --- permissions -------------------------------------------------------------------------


def test_file_permissions(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not widen anything
    try:
        root = tmp_path / "deep" / "root"
        store = FileObjectStore(root)
        store.put("t/a/results/r1", b"x")
        store.put_stream("t/b/backup", lambda f: f.write(b"y") and None)
    finally:
        os.umask(old)
    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(root) == 0o700
    for p in root.rglob("*"):
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p
    assert {p.name for p in root.rglob("*") if p.is_file()} == {"r1", "backup"}


# --- S3 failures -------------------------------------------------------------------------


def test_unreachable_s3_endpoint(aws_env: None) -> None:
    port = _free_port()  # bound then released: nothing listens there
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable) as info:
        S3ObjectStore(BUCKET, "p", endpoint_url=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 20
    err = info.value
    assert err.code == "object_store_unavailable"
    assert "\n" not in err.message
    assert "Traceback" not in err.message
    assert SECRET not in err.message
    assert err.__cause__ is None
    assert err.__suppress_context__
    with pytest.raises(ObjectStoreUnavailable):
        open_object_store(f"s3://{BUCKET}/p", s3_endpoint_url=f"http://127.0.0.1:{port}")


def test_missing_bucket(moto_endpoint: str, aws_env: None) -> None:
    with pytest.raises(ObjectStoreUnavailable, match="does not exist") as info:
        S3ObjectStore("no-such-bucket", endpoint_url=moto_endpoint)
    assert "\n" not in info.value.message
    with pytest.raises(ObjectStoreUnavailable, match="does not exist"):
        open_object_store("s3://no-such-bucket/x", s3_endpoint_url=moto_endpoint)


def test_bucket_removed_after_start(moto_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    client = _raw_client(moto_endpoint)
    client.create_bucket(Bucket="cmek-doomed")
    store = S3ObjectStore("cmek-doomed", "p", endpoint_url=moto_endpoint, spool_dir=tmp_path)
    client.delete_bucket(Bucket="cmek-doomed")
    attempts: list[Callable[[], object]] = [
        lambda: store.put("k", b"v"),
        lambda: store.get("k"),
        lambda: store.list(),
        lambda: store.delete_prefix("k"),
        lambda: store.put_stream("k", lambda f: f.write(b"v") and None),
    ]
    for attempt in attempts:
        with pytest.raises(ObjectStoreUnavailable, match="does not exist") as info:
            attempt()
        assert "\n" not in info.value.message
    assert os.listdir(tmp_path) == []  # the spool file went even though the upload failed


def test_s3_credentials_refused(moto_endpoint: str, aws_env: None,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3ObjectStore(BUCKET, "creds", endpoint_url=moto_endpoint)
    store.put("k", b"v")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ObjectStoreUnavailable) as info:
        S3ObjectStore(BUCKET, "creds", endpoint_url=moto_endpoint)
    assert "credentials" in info.value.message.lower()
    assert "\n" not in info.value.message


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "", "   ", "/abs/path", "relative/path", "http://example.com/x", "ftp://h/x", "S4://b/x",
    "file://relative/path", "file:relative", "file:", "file:///tmp/x?y=1", "file:///tmp/x#f",
    "file:///tmp/x\nsecond-line", "file:///tmp/a%00b",
    "s3://", "s3:///prefix", "s3://Bad_Bucket/x", "s3://ab/x", "s3://bucket:9000/x",
    f"s3://AKID:{SECRET}@bucket/x", "s3://bucket//x", "s3://bucket/a//b", "s3://bucket/../x",
    "s3://bucket/a/./b", "s3://bucket/a b", "s3://bucket/x?versionId=1", "s3://[bad/x",
])
def test_open_object_store_refuses(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        open_object_store(url)
    message = info.value.message
    assert "\n" not in message
    assert SECRET not in message
    assert message.strip()


def test_open_object_store_file(tmp_path: Path) -> None:
    root = tmp_path / "my store"
    store = open_object_store(root.as_uri())
    assert isinstance(store, FileObjectStore)
    assert store.root == root
    assert root.is_dir()
    store.put("k", b"v")
    assert (root / "k").read_bytes() == b"v"
    again = open_object_store(f"file://localhost{tmp_path}/my%20store")
    assert again.get("k") == b"v"
    assert again.url == store.url


def test_open_object_store_s3(moto_endpoint: str, aws_env: None) -> None:
    prefix = f"url-{uuid.uuid4().hex}/nested"
    store = open_object_store(f"s3://{BUCKET}/{prefix}/", s3_endpoint_url=moto_endpoint)
    assert isinstance(store, S3ObjectStore)
    assert store.url == f"s3://{BUCKET}/{prefix}"
    store.put("a/b", b"v")
    assert _bucket_keys(moto_endpoint, prefix=prefix) == [f"{prefix}/a/b"]
    whole = open_object_store(f"s3://{BUCKET}", s3_endpoint_url=moto_endpoint)
    assert whole.url == f"s3://{BUCKET}"
    assert whole.get(f"{prefix}/a/b") == b"v"


def test_errors_are_cmek_errors() -> None:
    assert issubclass(ObjectNotFound, CmekError)
    assert issubclass(ObjectStoreUnavailable, CmekError)
    assert ObjectNotFound.code == "object_not_found"
    assert ObjectStoreUnavailable.code == "object_store_unavailable"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ObjectInfo("k", 1, 0.0).key = "x"  # type: ignore[misc]
