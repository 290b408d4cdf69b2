"""Coverage is measured, not claimed: canaries planted in every data category through the
HTTP API, a backup taken, then every byte the platform keeps at rest is scanned."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.kmslocal_harness import KmsLocal
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


@pytest.fixture
def platform(kmslocal: KmsLocal, tmp_path: Path) -> Iterator[PlatformProcess]:
    proc = PlatformProcess(tmp_path / "platform", kmslocal,
                           extra_env={"TMPDIR": str(tmp_path / "platform" / "tmp")})
    (tmp_path / "platform" / "tmp").mkdir(parents=True)
    proc.start()
    yield proc
    proc.stop()


def test_no_canary_at_rest(platform: PlatformProcess, kmslocal: KmsLocal,
                           tmp_path: Path) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    admin_email = f"{canary('email').lower()}@example.com"
    platform.provision(tenant, customer_key(kmslocal), email=admin_email,
                       password="canary admin password")
    token = platform.login(tenant, admin_email, "canary admin password")
    planted: dict[str, str] = {k: canary(k) for k in (
        "title", "body", "description", "column", "password", "sso", "result", "search",
        "sql", "user")}
    warehouse = tmp_path / "wh.duckdb"  # the customer's warehouse, outside the platform
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
            "type": "duckdb", "config": {"path": str(warehouse)},
            "credentials": {"note": planted["password"]}})
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:  # duckdb takes no credentials: plant it in a postgres one
            r = c.put(f"{base}/connections/wh", json={
                "type": "duckdb", "config": {"path": str(warehouse)}, "credentials": {}})
            assert r.status_code == 200
            pg = c.put(f"{base}/connections/pg", json={
                "type": "postgres",
                "config": {"host": "127.0.0.1", "port": 5432, "database": "x"},
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
    log = "".join(platform.output)
    leaks |= {n: ["process log"] for n in needles if n in log}
    assert leaks == {}
    assert any(platform.data_dir.rglob("*.sqlite3"))  # the scan really saw the stores
    # the scan does find a canary where one is in clear: the customer's own warehouse
    assert scan(tmp_path, [planted["result"]]) == {planted["result"]: ["wh.duckdb"]}
