"""Coverage is measured, not claimed: canaries planted in every data category through the
HTTP API, a backup taken, then every byte the platform keeps at rest is scanned."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import duckdb
import psycopg
import pytest

from tests.conftest import make_bucket
from tests.kmslocal_harness import KmsLocal
from tests.pg import create_database
from tests.platform_harness import PlatformProcess, customer_key


def canary(label: str) -> str:
    return f"CANARY-{label}-{uuid.uuid4().hex[:12]}"


def scan(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under root, raw bytes, for each needle in UTF-8."""
    found: dict[str, list[str]] = {}
    encoded = [(n, n.encode()) for n in needles]
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for needle, raw in encoded:
            if raw in data:
                found.setdefault(needle, []).append(str(path.relative_to(root)))
    return found


@dataclass
class Backends:
    database_url: str | None = None
    s3_endpoint: str | None = None
    bucket: str | None = None


@pytest.fixture(params=["embedded", "postgres+s3"])
def backends(request: pytest.FixtureRequest) -> Backends:
    if request.param == "embedded":
        return Backends()
    endpoint = request.getfixturevalue("s3_endpoint")
    return Backends(create_database(request.getfixturevalue("pg_admin_url")), endpoint,
                    make_bucket(endpoint))


@pytest.fixture
def platform(kmslocal: KmsLocal, tmp_path: Path, backends: Backends
             ) -> Iterator[PlatformProcess]:
    # The tenant's warehouse folder holds the customer's own files in clear: kept out of
    # the platform's data folder here, so that the scan of that folder means something.
    env = {"TMPDIR": str(tmp_path / "platform" / "tmp"),
           "CMEK_WAREHOUSE_DIR": str(tmp_path / "warehouses")}
    if backends.database_url:
        env |= {"CMEK_DATABASE_URL": backends.database_url,
                "CMEK_OBJECT_STORE": f"s3://{backends.bucket}/platform",
                "CMEK_S3_ENDPOINT_URL": str(backends.s3_endpoint)}
    proc = PlatformProcess(tmp_path / "platform", kmslocal, extra_env=env)
    (tmp_path / "platform" / "tmp").mkdir(parents=True)
    proc.start()
    yield proc
    proc.stop()


def scan_postgres(url: str, needles: list[str]) -> dict[str, list[str]]:
    """Every row of every table in every schema of the database: a dump, read directly."""
    found: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema not in ('pg_catalog', 'information_schema')").fetchall()
        assert tables
        for schema, table in tables:
            for row in conn.execute(f'select * from "{schema}"."{table}"'):
                for value in row:
                    data = bytes(value) if isinstance(value, bytes | memoryview) else \
                        str(value).encode()
                    for needle in needles:
                        if needle.encode() in data:
                            found.setdefault(needle, []).append(f"{schema}.{table}")
    return found


def scan_s3(endpoint: str, bucket: str, needles: list[str]) -> dict[str, list[str]]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    found: dict[str, list[str]] = {}
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert keys
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for needle in needles:
            if needle.encode() in data:
                found.setdefault(needle, []).append(key)
    return found


def test_no_canary_at_rest(platform: PlatformProcess, kmslocal: KmsLocal,
                           tmp_path: Path, backends: Backends) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    admin_email = f"{canary('email').lower()}@example.com"
    platform.provision(tenant, customer_key(kmslocal), email=admin_email,
                       password="canary admin password")
    token = platform.login(tenant, admin_email, "canary admin password")
    planted: dict[str, str] = {k: canary(k) for k in (
        "title", "body", "description", "column", "password", "sso", "result", "search",
        "sql", "user")}
    warehouse = platform.warehouse_file(tenant)  # the customer's, outside the scanned data
    with duckdb.connect(str(warehouse)) as db:
        db.execute("create table t(v varchar)")
        db.execute(f"insert into t values ('{planted['result']}')")
    base = f"/v1/tenants/{tenant}"
    with platform.client(token) as c:
        for kind in ("tables", "models", "liveboards", "answers"):
            r = c.put(f"{base}/objects/{kind}/o1", json={
                "title": f"{planted['title']} {kind}", "description": planted["description"],
                "columns": [planted["column"]], "body": planted["body"]})
            assert r.status_code == 200, r.text
        r = c.put(f"{base}/connections/wh", json={
            "type": "duckdb", "config": {"path": warehouse.name},
            "credentials": {"note": planted["password"]}})
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:  # duckdb takes no credentials: plant it in a postgres one
            r = c.put(f"{base}/connections/wh", json={
                "type": "duckdb", "config": {"path": warehouse.name}, "credentials": {}})
            assert r.status_code == 200
            pg = c.put(f"{base}/connections/pg", json={
                "type": "postgres",
                "config": {"host": "warehouse.example.com", "port": 5432, "database": "x"},
                "credentials": {"user": "u", "password": planted["password"]}})
            assert pg.status_code == 200, pg.text
        q = c.post(f"{base}/connections/wh/query",
                   json={"sql": f"select v, '{planted['sql']}' as s from t"})
        assert q.status_code == 200, q.text
        assert q.json()["rows"][0][0] == planted["result"]
        sso = c.put(f"{base}/auth/sso", json={
            "type": "oidc", "issuer": "https://idp.example.com", "client_id": planted["sso"],
            "client_secret": planted["sso"] + "-secret"})
        assert sso.status_code == 200, sso.text
        user = c.post(f"{base}/users", json={
            "email": f"{planted['user'].lower()}@example.com", "password": "user password 1",
            "role": "analyst"})
        assert user.status_code == 201, user.text
        hits = c.get(f"{base}/search", params={"q": planted["search"]})
        assert hits.status_code == 200
        backup = c.post(f"{base}/backups")
        assert backup.status_code == 201, backup.text
        assert backup.json()["bytes"] > 0
    needles = [*planted.values(), planted["sso"] + "-secret", admin_email,
               planted["user"].lower(), planted["title"].lower(), planted["column"].lower()]
    leaks = scan(platform.data_dir, needles)
    if backends.database_url:
        assert backends.s3_endpoint is not None
        assert backends.bucket is not None
        leaks |= scan_postgres(backends.database_url, needles)
        leaks |= scan_s3(backends.s3_endpoint, backends.bucket, needles)
    log = "".join(platform.output)
    leaks |= {n: ["process log"] for n in needles if n in log}
    assert leaks == {}
    if not backends.database_url:
        assert any(platform.data_dir.rglob("*.sqlite3"))  # the scan really saw the stores
    # the scan does find a canary where one is in clear: the customer's own warehouse
    assert scan(warehouse.parent, [planted["result"]]) == {planted["result"]: ["wh.duckdb"]}
