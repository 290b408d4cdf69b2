"""Schedules, scheduled backups, backup and restore, SSO settings and the activity log,
through the HTTP API of a real `cmek serve --dev` (its clock moved by /_dev/clock)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from cmek.clock import SystemClock
from cmek.platform.access import TenantKeyUnavailable
from cmek.platform.config import load_settings
from cmek.platform.service import Platform
from tests.kmslocal_harness import CUSTOMER, KmsLocal
from tests.platform_harness import OPERATOR_TOKEN, PlatformProcess, customer_key

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def platform(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[PlatformProcess]:
    proc = PlatformProcess(tmp_path_factory.mktemp("platform"), kmslocal,
                           extra_env={"CMEK_BACKUP_INTERVAL": "0"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def tenant(platform: PlatformProcess, kmslocal: KmsLocal) -> str:
    return platform.new_tenant(kmslocal)


def warehouse(platform: PlatformProcess, tenant: str) -> str:
    """A DuckDB file in the tenant's warehouse folder; its path as a connection names it."""
    path = platform.warehouse_file(tenant)
    with duckdb.connect(str(path)) as db:
        db.execute("create table t(n integer)")
        db.execute("insert into t values (1), (2), (3)")
    return path.name


def test_schedules_run_on_the_platform_clock(platform: PlatformProcess, tenant: str,
                                             tmp_path: Path) -> None:
    token = platform.login(tenant)
    base = f"/v1/tenants/{tenant}"
    with platform.client(token) as c:
        c.put(f"{base}/connections/wh", json={
            "type": "duckdb", "config": {"path": warehouse(platform, tenant)}})
        ok = c.post(f"{base}/schedules", json={"name": "count", "connection": "wh",
                                               "sql": "select count(*) from t",
                                               "every_seconds": 3600}).json()
        bad = c.post(f"{base}/schedules", json={"name": "broken", "connection": "wh",
                                                "sql": "select nope from t",
                                                "every_seconds": 3600}).json()
        missing = c.post(f"{base}/schedules", json={"name": "x", "connection": "nope",
                                                    "sql": "select 1", "every_seconds": 60})
        assert missing.status_code == 404
        assert c.get(f"{base}/schedules/{ok['schedule_id']}/runs").json()["runs"] == []
        c.post("/_dev/clock", json={"advance_seconds": 3601})
        # The platform's own job loop may run the due slots before this call does. A
        # tenant's schedules run one pass at a time, so this call either runs them or
        # waits for the pass under way: either way each slot has run once when it
        # returns, and "ran" (its own count) says nothing about who ran them.
        assert c.post("/_dev/jobs/run").status_code == 200
        runs = c.get(f"{base}/schedules/{ok['schedule_id']}/runs").json()["runs"]
        assert [r["status"] for r in runs] == ["succeeded"]
        failed = c.get(f"{base}/schedules/{bad['schedule_id']}/runs").json()["runs"]
        assert [(r["status"], r["error_code"]) for r in failed] == [("failed",
                                                                     "warehouse_error")]
        c.post("/_dev/jobs/run")  # not due again until another hour passes
        assert len(c.get(f"{base}/schedules/{ok['schedule_id']}/runs").json()["runs"]) == 1
        assert len(c.get(f"{base}/schedules/{bad['schedule_id']}/runs").json()["runs"]) == 1


def test_backup_and_restore(platform: PlatformProcess, tenant: str) -> None:
    token = platform.login(tenant)
    base = f"/v1/tenants/{tenant}"
    with platform.client(token) as c:
        c.put(f"{base}/objects/tables/kept", json={"title": "Kept before the backup"})
        backup = c.post(f"{base}/backups").json()
        assert backup["bytes"] > 0
        assert [b["backup_id"] for b in c.get(f"{base}/backups").json()["backups"]] == [
            backup["backup_id"]]
        c.put(f"{base}/objects/tables/lost", json={"title": "Written after the backup"})
        c.delete(f"{base}/objects/tables/kept")
    with platform.client(token) as c:
        assert c.post(f"{base}/backups/{backup['backup_id']}/restore").status_code == 401
    with platform.client(OPERATOR_TOKEN) as op:
        r = op.post(f"{base}/backups/{backup['backup_id']}/restore")
        assert r.status_code == 200, r.text
        assert op.post(f"{base}/backups/nope/restore").status_code == 404
    with platform.client(token) as c:
        ids = [o["id"] for o in c.get(f"{base}/objects/tables").json()["objects"]]
        assert ids == ["kept"]
        hits = c.get(f"{base}/search", params={"q": "kept"}).json()["hits"]
        assert [h["id"] for h in hits] == ["kept"]


def test_sso_settings_are_validated_and_the_secret_never_returned(
    platform: PlatformProcess, tenant: str
) -> None:
    token = platform.login(tenant)
    base = f"/v1/tenants/{tenant}/auth/sso"
    with platform.client(token) as c:
        assert c.get(base).json() == {"configured": False}
        for bad in ({"type": "ldap"}, {"type": "saml", "entity_id": "e",
                                       "sso_url": "http://insecure", "certificate": PEM},
                    {"type": "oidc", "issuer": "https://idp", "client_id": "c"},
                    {"type": "oidc", "issuer": "https://idp", "client_id": "c",
                     "client_secret": "s", "extra": 1}):
            r = c.put(base, json=bad)
            assert r.status_code == 400, bad
            assert r.json()["error"] == "invalid_input"
        assert c.get(base).json() == {"configured": False}  # nothing half-written
        r = c.put(base, json={"type": "oidc", "issuer": "https://idp.example.com",
                              "client_id": "cid", "client_secret": "very-secret-value"})
        assert r.status_code == 200
        view = c.get(base).json()
        assert view["client_secret_set"] is True
        assert "very-secret-value" not in c.get(base).text
        saml = c.put(base, json={"type": "saml", "entity_id": "urn:acme",
                                 "sso_url": "https://idp.example.com/sso", "certificate": PEM})
        assert saml.json()["type"] == "saml"


def test_activity_log_records_logins_changes_and_queries(platform: PlatformProcess,
                                                         tenant: str, tmp_path: Path) -> None:
    token = platform.login(tenant)
    base = f"/v1/tenants/{tenant}"
    with platform.client(token) as c:
        c.put(f"{base}/objects/models/m1", json={"title": "Model"})
        c.put(f"{base}/connections/wh", json={
            "type": "duckdb", "config": {"path": warehouse(platform, tenant)}})
        c.post(f"{base}/connections/wh/query", json={"sql": "select 1"})
        kinds = [e["kind"] for e in c.get(f"{base}/activity").json()["activity"]]
    assert kinds[:4] == ["query", "connection_saved", "object_saved", "login"]
    assert "tenant_provisioned" in kinds


def test_scheduled_backups_follow_the_interval(kmslocal: KmsLocal, tmp_path: Path) -> None:
    proc = PlatformProcess(tmp_path / "p", kmslocal, extra_env={"CMEK_BACKUP_INTERVAL": "86400"})
    proc.start()
    try:
        name = f"t{uuid.uuid4().hex[:10]}"
        proc.provision(name, customer_key(kmslocal))
        token = proc.login(name)
        with proc.client(token) as c:
            c.post("/_dev/jobs/run")
            first = c.get(f"/v1/tenants/{name}/backups").json()["backups"]
            assert len(first) == 1
            c.post("/_dev/jobs/run")
            assert len(c.get(f"/v1/tenants/{name}/backups").json()["backups"]) == 1
            c.post("/_dev/clock", json={"advance_seconds": 86401})
            c.post("/_dev/jobs/run")
            assert c.get(f"/v1/tenants/{name}/backups").status_code == 401  # session expired
        with proc.client(proc.login(name)) as c:
            assert len(c.get(f"/v1/tenants/{name}/backups").json()["backups"]) == 2
    finally:
        proc.stop()


def test_a_locked_tenant_is_never_backed_up_even_after_a_restart(kmslocal: KmsLocal,
                                                                  tmp_path: Path) -> None:
    """A restarted process opens every tenant's stores again; the key state still rules,
    and the refusal comes before any KMS call."""
    proc = PlatformProcess(tmp_path / "p", kmslocal, extra_env={"CMEK_BACKUP_INTERVAL": "0"})
    proc.start()
    name = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    try:
        proc.provision(name, arn)
        kmslocal.client(CUSTOMER).disable_key(KeyId=arn)
        with proc.operator() as op:
            assert op.post(f"/v1/tenants/{name}/key/check").json()["state"] == "locked"
    finally:
        proc.stop()
    restarted = Platform(load_settings(None, env=proc.env()), SystemClock())
    try:
        with pytest.raises(TenantKeyUnavailable):
            restarted.backups.create(name, "scheduler")
    finally:
        restarted.close()


def test_each_tenants_worker_runs_its_jobs_in_the_background(
    platform: PlatformProcess, kmslocal: KmsLocal, tmp_path: Path
) -> None:
    tenants = []
    for _ in range(2):
        name = f"t{uuid.uuid4().hex[:10]}"
        platform.provision(name, customer_key(kmslocal))
        token = platform.login(name)
        with platform.client(token) as c:
            c.put(f"/v1/tenants/{name}/connections/wh", json={
                "type": "duckdb",
                "config": {"path": warehouse(platform, name)}})
            sid = c.post(f"/v1/tenants/{name}/schedules", json={
                "name": "n", "connection": "wh", "sql": "select 1",
                "every_seconds": 60}).json()["schedule_id"]
        tenants.append((name, token, sid))
    with platform.client() as c:
        c.post("/_dev/clock", json={"advance_seconds": 61})
    deadline = time.monotonic() + 15
    for name, token, sid in tenants:  # no /_dev/jobs/run: the workers pick them up
        with platform.client(token) as c:
            while not c.get(f"/v1/tenants/{name}/schedules/{sid}/runs").json()["runs"]:
                assert time.monotonic() < deadline, "the tenant's worker did not run"
                time.sleep(0.05)  # waiting for the worker's run, bounded
