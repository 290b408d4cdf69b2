"""A tenant admin attacking the host and other tenants, over the HTTP API, and a database
insider forging control-plane rows: each finding of the host-isolation review, tried as
it was first found, now refused (docs/security.md, "A tenant admin").

Every attack runs against a real `cmek serve --dev` with kmslocal; the warehouse on the
other side is a real DuckDB file, the test PostgreSQL server, or a fake PostgreSQL server
that records what it receives, as an attacker's would.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import httpx
import pytest

from tests.fake_pg import Authority, FakePostgres, server_context
from tests.kmslocal_harness import CUSTOMER, KmsLocal
from tests.pg import create_database
from tests.platform_harness import OPERATOR_TOKEN, PlatformProcess, customer_key
from tests.reliability import record

PASSWORD = "correct horse battery"
WH_SECRET = "Warehouse-Secret-5f1e"


@dataclass
class Admin:
    """A tenant and its admin's session, over one client."""

    tenant: str
    key_arn: str
    http: httpx.Client

    def put(self, path: str, body: Any) -> httpx.Response:
        return self.http.put(f"/v1/tenants/{self.tenant}{path}", json=body)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.http.post(f"/v1/tenants/{self.tenant}{path}", json=body)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(f"/v1/tenants/{self.tenant}{path}", params=params or None)


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json().get("error")) == (status, code), r.text
    record("attacks", "refused")


@pytest.fixture(scope="module")
def platform(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[PlatformProcess]:
    """The platform as shipped: no warehouse address allowed beyond public ones."""
    proc = PlatformProcess(tmp_path_factory.mktemp("attacked"), kmslocal,
                           extra_env={"CMEK_CHECK_INTERVAL": "3600",
                                      "CMEK_BACKUP_INTERVAL": "0",
                                      "CMEK_EVENT_CHECK_INTERVAL": "600"})
    proc.start()
    yield proc
    proc.stop()


def admin(platform: PlatformProcess, kms: KmsLocal) -> Iterator[Admin]:
    arn = customer_key(kms)
    tenant = f"t{uuid.uuid4().hex[:10]}"
    platform.provision(tenant, arn)
    with platform.client(platform.login(tenant)) as http:
        yield Admin(tenant, arn, http)


@pytest.fixture
def attacker(platform: PlatformProcess, kmslocal: KmsLocal) -> Iterator[Admin]:
    yield from admin(platform, kmslocal)


@pytest.fixture
def victim(platform: PlatformProcess, kmslocal: KmsLocal) -> Iterator[Admin]:
    yield from admin(platform, kmslocal)


def warehouse(platform: PlatformProcess, tenant: str, value: str) -> Path:
    path = platform.warehouse_file(tenant)
    path.parent.mkdir(parents=True, exist_ok=True)  # made at provisioning; as it was before
    with duckdb.connect(str(path)) as db:
        db.execute("create table secrets(v varchar)")
        db.execute("insert into secrets values (?)", [value])
    return path


# --- 1. DuckDB connections --------------------------------------------------------------------
def test_a_duckdb_connection_reaches_no_file_but_the_tenants_own(
        platform: PlatformProcess, attacker: Admin, victim: Admin) -> None:
    theirs = warehouse(platform, victim.tenant, "the victim's rows")
    mine = warehouse(platform, attacker.tenant, "mine")
    for path in (str(theirs), f"../{victim.tenant}/wh.duckdb", str(platform.data_dir /
                 "control.sqlite3"), "/etc/passwd", "/nonexistent/file.duckdb"):
        r = attacker.put("/connections/steal", {"type": "duckdb", "config": {"path": path}})
        refused(r, 400, "invalid_connection")
        assert "victim" not in r.text
    # no existence oracle: a path outside answers the same whether or not it exists
    answers = {attacker.put("/connections/probe", {"type": "duckdb", "config": {"path": p}}
                            ).json()["message"] for p in ("/etc/passwd", "/etc/nothing-here")}
    assert len(answers) == 1
    assert attacker.put("/connections/own", {"type": "duckdb", "config": {
        "path": mine.name}}).status_code == 200
    rows = attacker.post("/connections/own/query", {"sql": "select v from secrets"})
    assert rows.json()["rows"] == [["mine"]]


@pytest.mark.parametrize("sql", [
    "EXPLAIN ANALYZE COPY secrets TO 'out.csv'",
    "EXPLAIN ANALYZE INSTALL httpfs",
    "EXPLAIN ANALYZE LOAD httpfs",
    "EXPLAIN ANALYZE SET enable_external_access = true",
    "EXPLAIN SELECT 1",
    "SELECT * FROM read_csv('/etc/passwd')",
])
def test_no_statement_wraps_a_write_or_a_setting_past_the_check(
        platform: PlatformProcess, attacker: Admin, sql: str) -> None:
    warehouse(platform, attacker.tenant, "x")
    assert attacker.put("/connections/own", {"type": "duckdb", "config": {
        "path": "wh.duckdb"}}).status_code == 200
    r = attacker.post("/connections/own/query", {"sql": sql})
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("sql_not_read_only", "warehouse_error")
    if sql.startswith("EXPLAIN"):
        assert r.json()["error"] == "sql_not_read_only"
    assert not (platform.warehouse_file(attacker.tenant, "out.csv")).exists()
    record("attacks", "refused")


# --- 2. PostgreSQL connections ----------------------------------------------------------------
@pytest.mark.parametrize(("config", "code"), [
    ({"host": "127.0.0.1", "port": 5432}, "egress_denied"),  # the host's own PostgreSQL
    ({"host": "localhost"}, "egress_denied"),
    ({"host": "::1"}, "egress_denied"),
    ({"host": "169.254.169.254", "port": 80}, "egress_denied"),  # cloud metadata
    ({"host": "fd00:ec2::254"}, "egress_denied"),
    ({"host": "10.0.0.1"}, "egress_denied"),
    ({"host": "0.0.0.0"}, "egress_denied"),  # noqa: S104 - an address, not a bind
    ({"host": "::ffff:127.0.0.1"}, "egress_denied"),
    ({"host": "/var/run/postgresql"}, "invalid_connection"),  # a Unix socket
    ({"host": "127.0.0.1,8.8.8.8"}, "invalid_connection"),
    ({"host": "8.8.8.8", "database": "x\r\nuser: postgres"}, "invalid_connection"),
    ({"host": "8.8.8.8", "sslmode": "prefer"}, "invalid_connection"),
])
def test_a_postgres_connection_never_reaches_the_host(attacker: Admin, config: dict[str, Any],
                                                      code: str) -> None:
    body = {"type": "postgres", "config": {"database": "postgres", **config},
            "credentials": {"user": "postgres", "password": ""}}
    r = attacker.put("/connections/host", body)
    refused(r, 403 if code == "egress_denied" else 400, code)
    r = attacker.put("/connections/host2", {**body, "credentials": {
        "user": "postgres\r\nX-Injected: 1", "password": ""}})
    assert r.status_code in (400, 403)


def test_the_control_plane_database_is_refused_even_where_loopback_is_allowed(
        kmslocal: KmsLocal, pg_admin_url: str, tmp_path: Path) -> None:
    """An operator who allows loopback (warehouses on this host) still never lets a tenant
    reach the platform's own PostgreSQL: the superuser session that read files, token
    hashes and wrapped keys, and could take the monitor's lock."""
    port = urlsplit(pg_admin_url).port or 5432
    fake = FakePostgres(auth="cleartext")
    proc = PlatformProcess(tmp_path / "p", kmslocal, extra_env={
        "CMEK_DATABASE_URL": create_database(pg_admin_url), "CMEK_BACKUP_INTERVAL": "0",
        "CMEK_WAREHOUSE_ALLOW": "127.0.0.0/8", "CMEK_CHECK_INTERVAL": "3600"})
    proc.start()
    try:
        for a in admin(proc, kmslocal):
            r = a.put("/connections/cp", {"type": "postgres", "config": {
                "host": "127.0.0.1", "port": port, "database": "postgres", "sslmode": "disable"},
                "credentials": {"user": "postgres", "password": ""}})
            refused(r, 403, "egress_denied")
            r = a.put("/connections/other", {"type": "postgres", "config": {
                "host": "127.0.0.1", "port": fake.port, "database": "wh",
                "sslmode": "disable"}, "credentials": {"user": "u", "password": WH_SECRET}})
            assert r.status_code == 200, r.text  # another port of the host, as allowed
    finally:
        proc.stop()
        fake.close()


# --- 3. control-plane rows --------------------------------------------------------------------
def control(platform: PlatformProcess) -> sqlite3.Connection:
    return sqlite3.connect(platform.data_dir / "control.sqlite3", timeout=30)


def admin_user_id(platform: PlatformProcess, tenant: str) -> str:
    with sqlite3.connect(platform.data_dir / "tenants" / tenant / "tenant.sqlite3") as db:
        return str(db.execute("select user_id from users").fetchone()[0])


def test_a_token_row_the_platform_did_not_write_grants_nothing(
        platform: PlatformProcess, victim: Admin) -> None:
    forged = f"cms_forged{uuid.uuid4().hex}"
    user_id = admin_user_id(platform, victim.tenant)
    with control(platform) as db:  # as the platform used to store them: SHA-256
        db.execute("insert into platform_tokens (token_hash, tenant_id, user_id, kind, role, "
                   "created_at, expires_at) values (?, ?, ?, 'session', 'admin', ?, NULL)",
                   (hashlib.sha256(forged.encode()).hexdigest(), victim.tenant, user_id,
                    time.time()))
    with platform.client(forged) as http:
        refused(http.get(f"/v1/tenants/{victim.tenant}/users"), 401, "unauthorized")


def test_an_edited_token_row_grants_nothing(platform: PlatformProcess, victim: Admin) -> None:
    """An analyst's token edited to the admin role (or another tenant) is refused."""
    r = victim.post("/users", {"email": "analyst@example.com", "password": PASSWORD,
                               "role": "analyst"})
    assert r.status_code == 201, r.text
    analyst = platform.login(victim.tenant, "analyst@example.com", PASSWORD)
    with platform.client(analyst) as http:
        path = f"/v1/tenants/{victim.tenant}/key-events/credential"
        refused(http.post(path), 403, "forbidden")
        with control(platform) as db:
            assert db.execute("update platform_tokens set role = 'admin' where tenant_id = ? "
                              "and role = 'analyst'", (victim.tenant,)).rowcount == 1
        refused(http.post(path), 401, "unauthorized")


def test_a_tenant_row_the_platform_did_not_write_is_no_tenant(
        platform: PlatformProcess, kmslocal: KmsLocal) -> None:
    name = f"forged{uuid.uuid4().hex[:8]}"
    with control(platform) as db:
        db.execute("insert into platform_tenants (tenant_id, key_arn, created_at) "
                   "values (?, ?, ?)", (name, customer_key(kmslocal), time.time()))
    with platform.operator() as op:
        refused(op.get(f"/v1/tenants/{name}"), 404, "unknown_tenant")
        assert name not in op.get("/v1/tenants").text
        r = op.post("/v1/tenants", json={"tenant_id": name, "kms_key_arn": customer_key(
            kmslocal), "admin_email": "a@example.com", "admin_password": PASSWORD})
        refused(r, 409, "tenant_exists")  # and its id is never handed out


def kms_calls(kms: KmsLocal, key_arn: str, *names: str) -> int:
    trail = kms.client(CUSTOMER, "cloudtrail")
    count, token = 0, None
    while True:
        page = trail.lookup_events(
            LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": key_arn}],
            **({"NextToken": token} if token else {}))
        count += sum(1 for e in page["Events"] if not names or e["EventName"] in names)
        token = page.get("NextToken")
        if not token:
            return count


def test_a_rewrap_forged_in_the_key_table_never_reaches_the_insiders_key(
        platform: PlatformProcess, kmslocal: KmsLocal, victim: Admin) -> None:
    """An insider who points a tenant's unfinished rewrap at a key of their own would get
    every data key encrypted under it; the forged row is refused instead."""
    assert victim.put("/objects/tables/t1", {"title": "victim data"}).status_code == 200
    insiders = customer_key(kmslocal)
    with control(platform) as db:
        db.execute("update cmek_tenants set rewrap_to = ?, rewrap_generation = "
                   "rewrap_generation + 1 where tenant_id = ?", (insiders, victim.tenant))
    with platform.client() as dev:
        dev.post("/_dev/jobs/run")  # where rewraps cut short are finished
    assert kms_calls(kmslocal, insiders, "Encrypt", "Decrypt", "ReEncrypt",
                     "GenerateDataKey") == 0
    with control(platform) as db:
        wrapped_under = {r[0] for r in db.execute(
            "select key_arn from cmek_data_keys where tenant_id = ?", (victim.tenant,))}
    assert wrapped_under == {victim.key_arn}
    with platform.operator() as op:  # the forged row is found, and said so
        refused(op.post(f"/v1/tenants/{victim.tenant}/key/check"), 500, "row_not_authentic")


def test_a_forged_key_state_never_starts_a_shred(platform: PlatformProcess,
                                                 victim: Admin) -> None:
    """A state row claiming the key has been away past the restore window would make the
    next check shred the tenant; a row the platform did not write reads as locked and is
    replaced by the check, and the data stays."""
    assert victim.put("/objects/tables/t1", {"title": "kept"}).status_code == 200
    with platform.operator() as op:
        op.get(f"/v1/tenants/{victim.tenant}/key")
        long_ago = time.time() - 90 * 86400
        with control(platform) as db:
            db.execute("update lifecycle_states set state = 'locked', reason = 'disabled', "
                       "unusable_since = ? where tenant_id = ?", (long_ago, victim.tenant))
        assert op.get(f"/v1/tenants/{victim.tenant}/key").json()["reason"] == (
            "state_not_authentic")
        checked = op.post(f"/v1/tenants/{victim.tenant}/key/check").json()
    assert checked["state"] == "active"
    fresh = platform.login(victim.tenant)
    with platform.client(fresh) as http:
        r = http.get(f"/v1/tenants/{victim.tenant}/objects/tables/t1")
    assert r.json()["body"]["title"] == "kept"
    record("attacks", "refused")


# --- 4. the warehouse server is verified ----------------------------------------------------
@pytest.fixture(scope="module")
def loopback_platform(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[PlatformProcess]:
    """A platform whose operator lets tenants reach warehouses on this host's loopback:
    where the fake servers listen."""
    proc = PlatformProcess(tmp_path_factory.mktemp("loopback"), kmslocal, extra_env={
        "CMEK_CHECK_INTERVAL": "3600", "CMEK_BACKUP_INTERVAL": "0",
        "CMEK_WAREHOUSE_ALLOW": "127.0.0.1/32"})
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("sslmode", [None, "require", "disable"])
def test_a_fake_warehouse_server_never_receives_the_stored_password(
        loopback_platform: PlatformProcess, kmslocal: KmsLocal, tmp_path: Path,
        sslmode: str | None) -> None:
    ca = Authority.new("attacker CA")
    cert, key = ca.issue(tmp_path, "localhost")
    fake = FakePostgres(auth="cleartext", tls=server_context(cert, key))
    try:
        for a in admin(loopback_platform, kmslocal):
            config = {"host": "localhost", "port": fake.port, "database": "wh"}
            if sslmode:
                config["sslmode"] = sslmode
            r = a.put("/connections/wh", {"type": "postgres", "config": config,
                                          "credentials": {"user": "u", "password": WH_SECRET}})
            assert r.status_code == 200, r.text
            q = a.post("/connections/wh/query", {"sql": "select 1"})
            assert fake.connections >= 1
            assert not fake.got(WH_SECRET)
            assert q.status_code in (400, 502), q.text
            assert q.json()["error"] == ("warehouse_tls_failed" if sslmode is None
                                         else "warehouse_auth_failed")
            shown = r.json()["config"]
            assert shown["sslmode"] == (sslmode or "verify-full")  # a weaker mode is shown
            assert shown["server_verified"] is (sslmode is None)
        record("attacks", "refused")
    finally:
        fake.close()


# --- 5. key events --------------------------------------------------------------------------
def event(key_arn: str, account: str = "222222222222") -> dict[str, Any]:
    return {"version": "0", "id": str(uuid.uuid4()), "source": "aws.kms",
            "detail-type": "KMS Key State Change", "account": account, "region": "us-west-2",
            "resources": [key_arn], "detail": {"eventName": "DisableKey"}}


def test_key_events_are_authentic_about_the_senders_key_and_cheap(
        platform: PlatformProcess, kmslocal: KmsLocal, attacker: Admin, victim: Admin) -> None:
    theirs = f"/v1/tenants/{victim.tenant}/key-events"
    mine = platform.event_secret(attacker.tenant)
    before = kms_calls(kmslocal, victim.key_arn, "DescribeKey", "Decrypt")
    with platform.client() as http:
        refused(http.post("/v1/key-events", json=event(victim.key_arn)), 404, "not_found")
        for headers in ({}, {"X-Cmek-Event-Secret": mine},
                        {"X-Cmek-Event-Secret": OPERATOR_TOKEN}):
            for _ in range(25):  # a flood of forged events: none is recorded or checked
                refused(http.post(theirs, json=event(victim.key_arn), headers=headers),
                        401, "unauthorized")
        own = {"X-Cmek-Event-Secret": mine}
        refused(http.post(f"/v1/tenants/{attacker.tenant}/key-events",
                          json=event(victim.key_arn), headers=own), 403, "event_not_for_tenant")
        assert kms_calls(kmslocal, victim.key_arn, "DescribeKey", "Decrypt") == before
        # the tenant's own events, fifty at once, cost its key one check (the interval
        # is ten minutes here)
        own_before = kms_calls(kmslocal, attacker.key_arn, "DescribeKey", "Decrypt")
        answers = [http.post(f"/v1/tenants/{attacker.tenant}/key-events",
                             json=event(attacker.key_arn), headers=own) for _ in range(50)]
    assert {r.status_code for r in answers} == {202}
    assert sum(r.json()["check"] == "done" for r in answers) == 1
    spent = kms_calls(kmslocal, attacker.key_arn, "DescribeKey", "Decrypt") - own_before
    assert spent <= 2, spent  # one check: DescribeKey and a canary Decrypt


# --- 6. tenant SQL runs outside the platform, bounded ---------------------------------------
def test_tenant_sql_runs_confined_and_bounded(platform: PlatformProcess, attacker: Admin,
                                              victim: Admin) -> None:
    warehouse(platform, attacker.tenant, "x")
    warehouse(platform, victim.tenant, "served")
    for a in (attacker, victim):
        assert a.put("/connections/wh", {"type": "duckdb", "config": {
            "path": "wh.duckdb"}}).status_code == 200
    settings = attacker.post("/connections/wh/query", {"sql": (
        "select current_setting('threads'), current_setting('memory_limit')")}).json()["rows"]
    assert settings[0][0] == 1  # one thread and a bounded memory, not 80 % of the host
    assert settings[0][1].endswith(("MiB", "KiB"))
    refused(attacker.post("/connections/wh/query", {
        "sql": "select list(i) from range(1000000000) r(i)"}), 422, "query_resources_exceeded")
    refused(attacker.post("/connections/wh/query", {
        "sql": "select repeat('x', 50000000)"}), 422, "query_result_too_large")
    assert victim.post("/connections/wh/query", {"sql": "select v from secrets"}
                       ).json()["rows"] == [["served"]]  # meanwhile, others are served
    refused(attacker.post("/schedules", {"name": "every second", "connection": "wh",
                                         "sql": "select 1", "every_seconds": 1}),
            400, "invalid_input")


# --- 7. sign-in throttling ------------------------------------------------------------------
def from_address(platform: PlatformProcess, address: str) -> httpx.Client:
    """A client whose connections come from another loopback address: another machine."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=platform.url, transport=transport, timeout=30,
                        trust_env=False)


def test_sign_in_throttling_cannot_be_bypassed_or_turned_against_the_admin(
        kmslocal: KmsLocal, tmp_path: Path) -> None:
    proc = PlatformProcess(tmp_path / "p", kmslocal, extra_env={
        "CMEK_BACKUP_INTERVAL": "0", "CMEK_LOGIN_MAX_FAILURES_PER_CLIENT": "10"})
    proc.start()
    try:
        tenant = proc.new_tenant(kmslocal)
        login = f"/v1/tenants/{tenant}/sessions"
        with from_address(proc, "127.0.0.2") as guesser:  # guessing the admin's password
            for _ in range(8):
                guesser.post(login, json={"email": "admin@example.com", "password": "guess"})
        with from_address(proc, "127.0.0.3") as owner:  # locks its owner out nowhere
            r = owner.post(login, json={"email": "admin@example.com", "password": PASSWORD})
            assert r.status_code == 201, r.text
        with proc.client() as sprayer:  # a new X-Forwarded-For every time: one client still
            codes = [sprayer.post(login, json={"email": f"spray{i}@example.com",
                                               "password": "x"},
                                  headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                     for i in range(12)]
        assert codes[:10] == [401] * 10
        assert codes[10:] == [429, 429]
    finally:
        proc.stop()
    record("attacks", "refused")


# --- 8. rollback of sealed rows -------------------------------------------------------------
def test_an_older_ciphertext_put_back_does_not_open(platform: PlatformProcess,
                                                    victim: Admin) -> None:
    def connection(password: str) -> dict[str, Any]:
        return {"type": "postgres", "config": {"host": "warehouse.example.com",
                                               "database": "wh"},
                "credentials": {"user": "reader", "password": password}}

    for password in ("old password 1", "old password 2"):
        assert victim.put("/connections/wh", connection(password)).status_code == 200
    for issuer in ("https://old.example.com", "https://new.example.com"):
        assert victim.put("/auth/sso", {"type": "oidc", "issuer": issuer, "client_id": "c",
                                        "client_secret": "s"}).status_code == 200
    tenant_db = platform.data_dir / "tenants" / victim.tenant / "tenant.sqlite3"
    # the insider kept these ciphertexts, and replays them once the rows have moved on
    with sqlite3.connect(tenant_db) as db:
        old = {}
        for table, key in (("connections", "wh"), ("settings", "sso")):
            old[table] = db.execute(f"select sealed from {table} where name = ?",
                                    (key,)).fetchone()[0]
    assert victim.put("/connections/wh", connection(WH_SECRET)).status_code == 200
    assert victim.put("/auth/sso", {"type": "oidc", "issuer": "https://newest.example.com",
                                    "client_id": "c", "client_secret": "s"}).status_code == 200
    with sqlite3.connect(tenant_db) as db:
        for table, key in (("connections", "wh"), ("settings", "sso")):
            db.execute(f"update {table} set sealed = ? where name = ?", (old[table], key))
    refused(victim.get("/connections/wh"), 500, "decryption_failed")
    refused(victim.get("/auth/sso"), 500, "decryption_failed")


# --- 9. file modes --------------------------------------------------------------------------
def test_every_file_and_folder_the_platform_makes_is_its_own(
        platform: PlatformProcess, victim: Admin) -> None:
    assert victim.put("/objects/tables/t1", {"title": "t"}).status_code == 200
    assert victim.post("/backups").status_code == 201
    warehouses = platform.data_dir / "warehouses"
    loose = []
    for path in [platform.data_dir, *platform.data_dir.rglob("*")]:
        if path.parent.parent == warehouses and path.is_file():
            continue  # a warehouse file: the tests wrote those, as the customer would
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(platform.data_dir)}: {oct(mode)}")
    assert loose == []
    record("attacks", "refused")
