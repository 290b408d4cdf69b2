"""The platform's HTTP API end to end: a real `cmek serve` over HTTP with kmslocal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import make_bucket
from tests.kmslocal_harness import KmsLocal
from tests.pg import create_database
from tests.platform_harness import PlatformProcess, customer_key, provider_policy


@pytest.fixture(scope="module", params=["embedded", "postgres+s3"])
def platform(request: pytest.FixtureRequest, kmslocal: KmsLocal,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProcess]:
    """The embedded default (SQLite + folder), and production's PostgreSQL + S3."""
    env: dict[str, str] = {}
    if request.param == "postgres+s3":
        admin = request.getfixturevalue("pg_admin_url")
        endpoint = request.getfixturevalue("s3_endpoint")
        env = {"CMEK_DATABASE_URL": create_database(admin),
               "CMEK_OBJECT_STORE": f"s3://{make_bucket(endpoint)}/platform",
               "CMEK_S3_ENDPOINT_URL": endpoint}
    proc = PlatformProcess(tmp_path_factory.mktemp("platform"), kmslocal, extra_env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def tenant(platform: PlatformProcess, kmslocal: KmsLocal) -> str:
    return platform.new_tenant(kmslocal)


def test_healthz(platform: PlatformProcess) -> None:
    with platform.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_provision_then_operator_views(platform: PlatformProcess, kmslocal: KmsLocal) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    created = platform.provision(name, arn)
    assert created["tenant_id"] == name
    assert created["kms_key_arn"] == arn
    with platform.operator() as op:
        assert op.get(f"/v1/tenants/{name}").json()["kms_key_arn"] == arn
        assert name in [t["tenant_id"] for t in op.get("/v1/tenants").json()["tenants"]]
        again = op.post("/v1/tenants", json={"tenant_id": name, "kms_key_arn": arn,
                                              "admin_email": "a@b.c", "admin_password": "x" * 10})
        assert again.status_code == 409
        assert again.json()["error"] == "tenant_exists"


def test_provision_refuses_a_key_the_provider_cannot_use(platform: PlatformProcess,
                                                         kmslocal: KmsLocal) -> None:
    arn = customer_key(kmslocal, provider_policy("333333333333"))
    with platform.operator() as op:
        r = op.post("/v1/tenants", json={"tenant_id": f"t{uuid.uuid4().hex[:10]}",
                                          "kms_key_arn": arn, "admin_email": "a@b.c",
                                          "admin_password": "x" * 10})
    assert r.status_code == 422
    assert r.json()["error"] == "key_verification_failed"
    assert any(f["check"] == "reachable" for f in r.json()["findings"])


@pytest.mark.parametrize("body", [
    {}, {"tenant_id": "UPPER", "kms_key_arn": "arn", "admin_email": "a@b.c",
         "admin_password": "x" * 10},
    {"tenant_id": "ok", "kms_key_arn": "not-an-arn", "admin_email": "a@b.c",
     "admin_password": "x" * 10},
    {"tenant_id": "ok2", "kms_key_arn": 5, "admin_email": "a@b.c", "admin_password": "x" * 10},
])
def test_provision_bad_input(platform: PlatformProcess, body: dict[str, object]) -> None:
    with platform.operator() as op:
        r = op.post("/v1/tenants", json=body)
    assert r.status_code in (400, 422)
    assert r.json()["error"] in ("invalid_input", "key_verification_failed")
    assert "Traceback" not in r.text


def test_operator_token_required(platform: PlatformProcess) -> None:
    with platform.client() as c:
        assert c.get("/v1/tenants").status_code == 401
    with platform.client("wrong-token") as c:
        r = c.get("/v1/tenants")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


def test_login_sessions_and_api_tokens(platform: PlatformProcess, tenant: str) -> None:
    with platform.client() as c:
        bad = c.post(f"/v1/tenants/{tenant}/sessions",
                     json={"email": "admin@example.com", "password": "wrong password"})
        assert bad.status_code == 401
        assert bad.json()["error"] == "unauthorized"
    token = platform.login(tenant)
    with platform.client(token) as me:
        api = me.post(f"/v1/tenants/{tenant}/api-tokens")
        assert api.status_code == 201
        assert me.delete(f"/v1/tenants/{tenant}/sessions").status_code == 204
        assert me.get(f"/v1/tenants/{tenant}/users").status_code == 401
    with platform.client(api.json()["token"]) as app_client:
        assert app_client.get(f"/v1/tenants/{tenant}/users").status_code == 200


def test_users_and_roles(platform: PlatformProcess, tenant: str) -> None:
    admin = platform.login(tenant)
    with platform.client(admin) as c:
        r = c.post(f"/v1/tenants/{tenant}/users", json={
            "email": "ana@example.com", "password": "analyst password", "role": "analyst"})
        assert r.status_code == 201
        assert "password" not in r.text
        emails = [u["email"] for u in c.get(f"/v1/tenants/{tenant}/users").json()["users"]]
        assert sorted(emails) == ["admin@example.com", "ana@example.com"]
        dup = c.post(f"/v1/tenants/{tenant}/users", json={
            "email": "ANA@example.com", "password": "another password", "role": "analyst"})
        assert dup.status_code == 409
    analyst = platform.login(tenant, "ana@example.com", "analyst password")
    with platform.client(analyst) as c:
        r = c.post(f"/v1/tenants/{tenant}/users", json={
            "email": "x@example.com", "password": "x password!", "role": "admin"})
        assert r.status_code == 403


def test_objects_and_search(platform: PlatformProcess, tenant: str) -> None:
    token = platform.login(tenant)
    with platform.client(token) as c:
        body = {"title": "Quarterly revenue", "description": "revenue by region",
                "columns": ["region", "revenue_usd"]}
        r = c.put(f"/v1/tenants/{tenant}/objects/tables/revenue", json=body)
        assert r.status_code == 200
        assert r.json()["version"] == 1
        assert c.put(f"/v1/tenants/{tenant}/objects/tables/revenue",
                     json=body).json()["version"] == 2
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/revenue").json()["body"] == body
        listed = c.get(f"/v1/tenants/{tenant}/objects/tables").json()["objects"]
        assert [o["id"] for o in listed] == ["revenue"]
        hits = c.get(f"/v1/tenants/{tenant}/search", params={"q": "revenue_usd"}).json()["hits"]
        assert [h["id"] for h in hits] == ["revenue"]
        assert c.get(f"/v1/tenants/{tenant}/search", params={"q": "quart"}).json()["hits"]
        assert c.delete(f"/v1/tenants/{tenant}/objects/tables/revenue").status_code == 204
        missing = c.get(f"/v1/tenants/{tenant}/objects/tables/revenue")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        assert c.get(f"/v1/tenants/{tenant}/search", params={"q": "revenue"}).json()["hits"] == []
        assert c.get(f"/v1/tenants/{tenant}/objects/widgets/x").status_code in (400, 404)


def test_connections_and_queries(platform: PlatformProcess, tenant: str, tmp_path: Path) -> None:
    warehouse = platform.warehouse_file(tenant)
    with duckdb.connect(str(warehouse)) as db:
        db.execute("create table sales(region varchar, amount integer)")
        db.execute("insert into sales values ('emea', 10), ('amer', 32)")
    token = platform.login(tenant)
    with platform.client(token) as c:
        r = c.put(f"/v1/tenants/{tenant}/connections/wh", json={
            "type": "duckdb", "config": {"path": "wh.duckdb"}, "credentials": {}})
        assert r.status_code == 200, r.text
        assert "credentials" not in c.get(f"/v1/tenants/{tenant}/connections/wh").json()
        q = c.post(f"/v1/tenants/{tenant}/connections/wh/query",
                   json={"sql": "select region, amount from sales order by amount"})
        assert q.status_code == 200, q.text
        assert q.json()["columns"] == ["region", "amount"]
        assert q.json()["rows"] == [["emea", 10], ["amer", 32]]
        write = c.post(f"/v1/tenants/{tenant}/connections/wh/query",
                       json={"sql": "delete from sales"})
        assert write.status_code == 400
        assert write.json()["error"] == "sql_not_read_only"
        broken = c.post(f"/v1/tenants/{tenant}/connections/wh/query",
                        json={"sql": "select nope from sales"})
        assert broken.status_code == 400
        assert broken.json()["error"] == "warehouse_error"


def test_another_tenants_token_is_refused_everywhere(platform: PlatformProcess,
                                                     kmslocal: KmsLocal) -> None:
    a, b = (f"t{uuid.uuid4().hex[:10]}" for _ in range(2))
    platform.provision(a, customer_key(kmslocal))
    platform.provision(b, customer_key(kmslocal))
    token_a = platform.login(a)
    with platform.client(token_a) as c:
        c.put(f"/v1/tenants/{a}/objects/tables/secret", json={"title": "A's secret"})
    token_b = platform.login(b)
    with platform.client(token_b) as c:
        for method, path in [("GET", f"/v1/tenants/{a}/objects/tables/secret"),
                             ("GET", f"/v1/tenants/{a}/objects/tables"),
                             ("GET", f"/v1/tenants/{a}/users"),
                             ("GET", f"/v1/tenants/{a}/search?q=secret"),
                             ("PUT", f"/v1/tenants/{a}/objects/tables/secret"),
                             ("DELETE", f"/v1/tenants/{a}/objects/tables/secret"),
                             ("POST", f"/v1/tenants/{a}/api-tokens"),
                             ("GET", f"/v1/tenants/{a}/activity")]:
            r = c.request(method, path, json={"title": "x"} if method == "PUT" else None)
            assert r.status_code == 403, (method, path, r.status_code)
            assert "secret" not in r.text.lower().replace("forbidden", "")
        assert c.get(f"/v1/tenants/{b}/objects/tables/secret").status_code == 404


def test_bad_requests_get_stable_codes(platform: PlatformProcess, tenant: str) -> None:
    token = platform.login(tenant)
    with platform.client(token) as c:
        r = c.put(f"/v1/tenants/{tenant}/objects/tables/x", content=b"{not json",
                  headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_input"
        big = c.put(f"/v1/tenants/{tenant}/objects/tables/x",
                    content=b'{"t": "' + b"a" * 2_000_000 + b'"}',
                    headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        assert big.json()["error"] == "body_too_large"
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/x").status_code == 404
        r = c.get(f"/v1/tenants/{tenant}/objects/tables/..%2F..%2Fetc")
        assert r.status_code in (400, 404)
        for resp in (r, big):
            assert "Traceback" not in resp.text
        assert c.get(f"/v1/tenants/{tenant}/users").headers["cache-control"] == "no-store"
