"""Tenant isolation and authentication, probed over HTTP against a real platform process.

Two tenants each hold planted data carrying a marker of their own (metadata, the search
index, connections with credentials, SSO, users, schedules, backups, activity). Every
tenant route of the platform's own OpenAPI document must have an entry in ``PROBES``, so
an endpoint cannot be added without being probed. Each probe family sends, to every route
it applies to, a credential or an id that must not work there, and checks three things:
the refusal (status and stable code), ``Cache-Control: no-store``, and that no byte of
the other tenant's markers, tokens or secrets comes back.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import itertools
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from cmek.crypto.rows import RowAuthenticator
from cmek.db import create_engine
from cmek.keyring import encryption_context
from cmek.platform.access import SESSION_TTL
from cmek.platform.api import STATUS
from cmek.platform.config import Settings
from cmek.platform.control import ControlPlane, login_failures
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal, free_port
from tests.platform_harness import (
    INTEGRITY_KEY,
    OPERATOR_TOKEN,
    PlatformProcess,
    customer_key,
)
from tests.reliability import record

SRC = Path(__file__).resolve().parents[1] / "src"
# the probed platform's login throttling (BACKOFF: long enough that no request is slow
# enough to outlast it, since the dev clock also moves with real time)
MAX_FAILURES, PER_CLIENT, LOCKOUT, BACKOFF = 3, 5, 300, 30


# --- planted data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ids:
    """What fills a route's path for one tenant (and the ids some bodies name)."""

    tenant: str
    object_id: str
    connection: str
    schedule_id: str
    backup_id: str
    warehouse: str
    key_arn: str


@dataclass
class Tenant:
    ids: Ids
    marker: str
    email: str
    password: str
    session: str
    api: str
    sso_secret: str
    pg_password: str
    analyst_password: str
    event_secret: str
    later_sessions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.ids.tenant

    @property
    def secrets(self) -> list[str]:
        """Write-only: returned to nobody, the tenant itself included."""
        return [self.sso_secret, self.pg_password, self.analyst_password, self.event_secret]

    def leaks(self) -> list[str]:
        """Everything of this tenant that another caller must never see."""
        return [self.marker, self.session, self.api, self.password, *self.secrets,
                *self.later_sessions]


@dataclass
class World:
    platform: PlatformProcess
    kms: KmsLocal
    a: Tenant  # the tenant probed
    b: Tenant  # the other one, whose credentials and ids are tried on A
    spec: dict[str, Any]
    http: httpx.Client

    def session(self, t: Tenant) -> str:
        """A session signed in now: another test may have moved the clock past the first."""
        token = self.platform.login(t.name, t.email, t.password)
        t.later_sessions.append(token)
        return token

    def advance(self, seconds: float) -> None:
        r = self.http.post("/_dev/clock", json={"advance_seconds": seconds})
        assert r.status_code == 200, r.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url.path, r.text)
    return dict(r.json()) if r.content else {}


def plant(http: httpx.Client, platform: PlatformProcess, kms: KmsLocal, letter: str,
          folder: Path) -> Tenant:
    """A tenant whose every kind of data carries its marker (ids never do: a probe that
    names an id must not count as a leak when the id is echoed back)."""
    tag = uuid.uuid4().hex[:10]
    marker = f"mk{letter}{uuid.uuid4().hex[:12]}"  # shares nothing with the ids
    email, password = f"admin@{letter}{tag}.example.com", f"{letter} admin pw {uuid.uuid4().hex}"
    sso_secret, pg_password = f"sso-{uuid.uuid4().hex}", f"pgpw-{uuid.uuid4().hex}"
    analyst_password = f"analyst pw {uuid.uuid4().hex}"
    tenant = f"{letter}{tag}"
    key_arn = customer_key(kms)
    platform.provision(tenant, key_arn, email, password)
    session = platform.login(tenant, email, password)
    h, base = bearer(session), f"/v1/tenants/{tenant}"
    api = str(ok(http.post(f"{base}/api-tokens", headers=h), 201)["token"])
    ok(http.post(f"{base}/users", headers=h, json={
        "email": f"analyst-{marker}@example.com", "password": analyst_password,
        "role": "analyst"}), 201)
    object_id = f"{letter}-report"
    ok(http.put(f"{base}/objects/tables/{object_id}", headers=h, json={
        "title": f"Report {marker}", "description": f"figures of {marker}",
        "columns": [f"col_{marker}"]}))
    warehouse = platform.warehouse_file(tenant, f"wh-{marker}.duckdb")
    with duckdb.connect(str(warehouse)) as db:
        db.execute("create table sales(region varchar)")
        db.execute("insert into sales values (?)", [f"region {marker}"])
    ok(http.put(f"{base}/connections/{letter}-wh", headers=h, json={
        "type": "duckdb", "config": {"path": warehouse.name}, "credentials": {}}))
    ok(http.put(f"{base}/connections/{letter}-pg", headers=h, json={
        "type": "postgres", "config": {"host": "warehouse.example.com", "port": free_port(),
                                       "database": f"db{marker}"},
        "credentials": {"user": "reader", "password": pg_password}}))
    assert marker in http.post(f"{base}/connections/{letter}-wh/query", headers=h,
                               json={"sql": "select region from sales"}).text
    ok(http.put(f"{base}/auth/sso", headers=h, json={
        "type": "oidc", "issuer": f"https://idp.example.com/{marker}",
        "client_id": f"client-{marker}", "client_secret": sso_secret}))
    schedule = ok(http.post(f"{base}/schedules", headers=h, json={
        "name": f"daily {marker}", "connection": f"{letter}-wh",
        "sql": "select region from sales", "every_seconds": 86400}), 201)
    assert ok(http.get(f"{base}/search", headers=h, params={"q": marker}))["hits"]
    backup = ok(http.post(f"{base}/backups", headers=h), 201)
    ids = Ids(tenant, object_id, f"{letter}-wh", str(schedule["schedule_id"]),
              str(backup["backup_id"]), warehouse.name, key_arn)
    return Tenant(ids, marker, email, password, session, api, sso_secret, pg_password,
                  analyst_password, platform.event_secret(tenant))


@pytest.fixture(scope="module")
def world(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("isolation")
    platform = PlatformProcess(base / "platform", kmslocal, extra_env={
        "CMEK_BACKUP_INTERVAL": "0", "CMEK_CHECK_INTERVAL": "3600",
        "CMEK_LOGIN_MAX_FAILURES": str(MAX_FAILURES),
        "CMEK_LOGIN_MAX_FAILURES_PER_CLIENT": str(PER_CLIENT),
        "CMEK_LOGIN_LOCKOUT": str(LOCKOUT), "CMEK_LOGIN_BACKOFF": str(BACKOFF),
        "CMEK_TRUSTED_PROXIES": "127.0.0.1/32"})  # the tests play the local proxy
    platform.start()
    try:
        with platform.client() as http:
            a = plant(http, platform, kmslocal, "a", base)
            b = plant(http, platform, kmslocal, "b", base)
            spec = dict(http.get("/openapi.json").json())
            yield World(platform, kmslocal, a, b, spec, http)
    finally:
        platform.stop()


# --- the probe table ------------------------------------------------------------------------
Body = Callable[[Ids, Ids], Any]  # (the caller's own ids, the ids the path names) -> JSON


@dataclass(frozen=True)
class Route:
    """How a route authenticates, and what a well-formed request to it carries.

    auth: "tenant" (a tenant's bearer token), "operator" (the operator token), "admin"
    (the operator token or a tenant admin's), "login" (email and password), "event"
    (the tenant's event secret header) or "public".
    write: with another tenant's ids, a successful call creates the object in the
    caller's own namespace (PUT); otherwise it must find nothing.
    """

    auth: str
    body: Body | None = None
    params: dict[str, str] | None = None
    body_ids: bool = False  # the body names an id of the tenant (probed with the other's)
    write: bool = False


PROBES: dict[tuple[str, str], Route] = {
    ("GET", "/healthz"): Route("public"),
    ("POST", "/v1/tenants"): Route("operator", lambda own, _: {
        "tenant_id": f"probe{uuid.uuid4().hex[:8]}",
        "kms_key_arn": "arn:aws:kms:us-west-2:222222222222:key/probe",
        "admin_email": "probe@example.com", "admin_password": "probe password"}),
    ("GET", "/v1/tenants"): Route("operator"),
    ("GET", "/v1/tenants/{tenant}"): Route("operator"),
    ("GET", "/v1/tenants/{tenant}/key"): Route("operator"),
    ("POST", "/v1/tenants/{tenant}/key/check"): Route("operator"),
    ("POST", "/v1/tenants/{tenant}/key/rewrap"): Route("operator", lambda own, _: {}),
    ("POST", "/v1/tenants/{tenant}/backups/{backup_id}/restore"): Route("operator"),
    ("POST", "/v1/tenants/{tenant}/key-events"): Route("event", lambda own, _: {
        "source": "aws.kms", "detail-type": "KMS Key State Change", "account": "222222222222",
        "resources": [own.key_arn]}),
    ("POST", "/v1/tenants/{tenant}/key-events/credential"): Route("admin"),
    ("POST", "/v1/tenants/{tenant}/sessions"): Route("login"),
    ("DELETE", "/v1/tenants/{tenant}/sessions"): Route("tenant"),
    ("POST", "/v1/tenants/{tenant}/api-tokens"): Route("tenant"),
    ("POST", "/v1/tenants/{tenant}/users"): Route("tenant", lambda own, _: {
        "email": f"probe{uuid.uuid4().hex[:8]}@example.com", "password": "probe password",
        "role": "admin"}),
    ("GET", "/v1/tenants/{tenant}/users"): Route("tenant"),
    ("PUT", "/v1/tenants/{tenant}/objects/{kind}/{object_id}"): Route(
        "tenant", lambda own, _: {"title": "probe"}, write=True),
    ("GET", "/v1/tenants/{tenant}/objects/{kind}/{object_id}"): Route("tenant"),
    ("DELETE", "/v1/tenants/{tenant}/objects/{kind}/{object_id}"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/objects/{kind}"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/search"): Route("tenant", params={"q": "report"}),
    ("PUT", "/v1/tenants/{tenant}/connections/{name}"): Route("tenant", lambda own, _: {
        "type": "duckdb", "config": {"path": own.warehouse}, "credentials": {}}, write=True),
    ("GET", "/v1/tenants/{tenant}/connections/{name}"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/connections"): Route("tenant"),
    ("DELETE", "/v1/tenants/{tenant}/connections/{name}"): Route("tenant"),
    ("POST", "/v1/tenants/{tenant}/connections/{name}/query"): Route(
        "tenant", lambda own, _: {"sql": "select region from sales"}),
    ("PUT", "/v1/tenants/{tenant}/auth/sso"): Route("tenant", lambda own, _: {
        "type": "oidc", "issuer": "https://idp.example.com/probe", "client_id": "probe",
        "client_secret": "probe-secret"}),
    ("GET", "/v1/tenants/{tenant}/auth/sso"): Route("tenant"),
    ("POST", "/v1/tenants/{tenant}/backups"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/backups"): Route("tenant"),
    ("POST", "/v1/tenants/{tenant}/schedules"): Route("tenant", lambda own, ids: {
        "name": "probe", "connection": ids.connection, "sql": "select 1",
        "every_seconds": 86400}, body_ids=True),
    ("GET", "/v1/tenants/{tenant}/schedules"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/schedules/{schedule_id}/runs"): Route("tenant"),
    ("GET", "/v1/tenants/{tenant}/activity"): Route("tenant"),
}
ID_PARAMS = ("{object_id}", "{name}", "{schedule_id}", "{backup_id}")
# Routes that read the tenant's data; the tenant's own token must see its marker in each
# (the positive control that makes the marker scans meaningful).
SHOWS_MARKER = ("/users", "/objects/{kind}/{object_id}", "/objects/{kind}", "/search",
                "/connections/{name}", "/auth/sso", "/schedules", "/activity")


def tenant_route(path: str) -> bool:
    return "{tenant}" in path or path.startswith("/v1/")


def fill(template: str, ids: Ids) -> str:
    path = (template.replace("{tenant}", ids.tenant).replace("{kind}", "tables")
            .replace("{object_id}", ids.object_id).replace("{name}", ids.connection)
            .replace("{schedule_id}", ids.schedule_id).replace("{backup_id}", ids.backup_id))
    assert "{" not in path, f"fill() does not know a parameter of {template}"
    return path


def routes(*auths: str) -> list[tuple[str, str, Route]]:
    return [(m, p, r) for (m, p), r in PROBES.items() if r.auth in auths]


# --- sending and checking -------------------------------------------------------------------
@dataclass
class Prober:
    """Sends probes, counts them, and scans every answer for what must not be there."""

    http: httpx.Client
    sent: int = 0

    def __post_init__(self) -> None:
        self.leaks: list[str] = []
        self.problems: list[str] = []

    def send(self, method: str, template: str, route: Route, own: Ids, target: Ids,
             headers: dict[str, str], victim: Tenant,
             body: Any = None) -> httpx.Response:
        path = fill(template, target)
        if body is None and route.body is not None:
            body = route.body(own, target)
        r = self.http.request(method, path, headers=headers, json=body, params=route.params)
        self.sent += 1
        where = f"{method} {path} [{headers.get('Authorization', '')[:20]}...]"
        for secret in victim.leaks():
            if secret in r.text or any(secret in v for v in r.headers.values()):
                self.leaks.append(f"{where}: {r.status_code} carries {secret[:12]}...")
        if path.startswith("/v1/tenants") and r.headers.get("cache-control") != "no-store":
            self.problems.append(f"{where}: Cache-Control {r.headers.get('cache-control')!r}")
        return r

    def refused(self, r: httpx.Response, status: int, *codes: str) -> None:
        where = f"{r.request.method} {r.request.url.path}"
        if r.status_code != status:
            self.problems.append(f"{where}: {r.status_code} (wanted {status}) {r.text[:200]}")
            return
        try:
            code = r.json().get("error")
        except ValueError:
            code = None
        if code not in codes or STATUS.get(code) != status:
            self.problems.append(f"{where}: code {code!r}, wanted one of {codes}")

    def check(self, family: str) -> None:
        record("isolation", "leaks", len(self.leaks))
        assert not self.leaks, f"{family}: " + "\n".join(self.leaks)
        assert not self.problems, f"{family}: " + "\n".join(self.problems)
        record("isolation", "probes", self.sent)


def malformed(token: str) -> list[dict[str, str]]:
    """Authorization headers that must never authenticate, built around a live token."""
    return [
        {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer null"},
        {"Authorization": token},  # no scheme
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token}x"}, {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Bearer {token} {token}"},
        {"Authorization": f"Bearer {hashlib.sha256(token.encode()).hexdigest()}"},  # as stored
        {"Authorization": f"Bearer {token.upper()}"},
        {"Authorization": "Bearer " + "A" * 8000},
        {"Authorization": f"Bearer {OPERATOR_TOKEN}{token}"},
    ]


# --- the table covers the API ---------------------------------------------------------------
def test_every_tenant_route_has_a_probe(world: World) -> None:
    served = {(m.upper(), p) for p, ops in world.spec["paths"].items() for m in ops
              if m in ("get", "put", "post", "delete", "patch")}
    missing = sorted(f"{m} {p}" for m, p in served if tenant_route(p) and (m, p) not in PROBES)
    assert not missing, ("routes without a probe; add them to PROBES in "
                         "tests/test_isolation.py: " + ", ".join(missing))
    stale = sorted(f"{m} {p}" for m, p in PROBES if (m, p) not in served)
    assert not stale, "PROBES names routes the platform no longer serves: " + ", ".join(stale)
    assert {r.auth for r in PROBES.values()} <= {"tenant", "operator", "admin", "login",
                                                   "event", "public"}


def test_own_tokens_see_own_markers_and_never_a_secret(world: World) -> None:
    """The positive control: the markers are there to be found by their owner, so their
    absence elsewhere means something; and secrets come back to nobody, owner included."""
    a = world.a
    seen: dict[str, bool] = {}
    for token in (world.session(a), a.api):
        for method, template, route in routes("tenant"):
            if method != "GET":
                continue
            r = world.http.get(fill(template, a.ids), headers=bearer(token),
                               params=route.params)
            assert r.status_code == 200, (template, r.text)
            assert r.headers["cache-control"] == "no-store", template
            for secret in [a.password, *a.secrets]:
                assert secret not in r.text, (template, "returned a secret")
            suffix = template.removeprefix("/v1/tenants/{tenant}")
            seen[suffix] = seen.get(suffix, False) or a.marker in r.text
    assert all(seen[s] for s in SHOWS_MARKER), {s: seen[s] for s in SHOWS_MARKER}


def test_every_probe_is_a_well_formed_request(world: World, tmp_path: Path) -> None:
    """Each request of the table succeeds with the right credential (so every refusal
    elsewhere is the credential's doing, not the request's), and even a success that
    carries tenant data is marked non-cacheable."""
    d = world.platform.new_tenant(world.kms)
    session = world.platform.login(d)
    h, base = bearer(session), f"/v1/tenants/{d}"
    warehouse = world.platform.warehouse_file(d)
    with duckdb.connect(str(warehouse)) as db:
        db.execute("create table sales(region varchar)")
    ok(world.http.put(f"{base}/objects/tables/t1", headers=h, json={"title": "t"}))
    ok(world.http.put(f"{base}/connections/wh", headers=h, json={
        "type": "duckdb", "config": {"path": warehouse.name}}))
    schedule = ok(world.http.post(f"{base}/schedules", headers=h, json={
        "name": "s", "connection": "wh", "sql": "select 1", "every_seconds": 60}), 201)
    backup = ok(world.http.post(f"{base}/backups", headers=h), 201)
    arn = ok(world.http.get(base, headers=bearer(OPERATOR_TOKEN)))["kms_key_arn"]
    ids = Ids(d, "t1", "wh", schedule["schedule_id"], backup["backup_id"], warehouse.name, arn)

    def last(item: tuple[tuple[str, str], Route]) -> int:  # what removes things goes last
        (method, template), _ = item
        return (3 if template.endswith("/sessions") and method == "DELETE" else
                2 if method == "DELETE" else 1 if template.endswith("/restore") else 0)

    order = sorted(PROBES.items(), key=last)
    for (method, template), route in order:
        body = route.body(ids, ids) if route.body else None
        headers = {"tenant": h, "admin": h, "operator": bearer(OPERATOR_TOKEN), "public": {},
                   "login": {}}.get(route.auth) or {
                       "X-Cmek-Event-Secret": world.platform.event_secret(d)}
        if route.auth == "login":
            body = {"email": "admin@example.com", "password": "correct horse battery"}
        if (method, template) == ("POST", "/v1/tenants"):
            body = {**body, "kms_key_arn": customer_key(world.kms)}
        r = world.http.request(method, fill(template, ids), headers=headers, json=body,
                               params=route.params)
        assert 200 <= r.status_code < 300, (method, template, r.text)
        if template.startswith("/v1/tenants"):
            assert r.headers["cache-control"] == "no-store", (method, template)


# --- another tenant's credentials -----------------------------------------------------------
def test_another_tenants_tokens_are_refused_on_every_route(world: World) -> None:
    """B's session and B's API token, on every route of A's, with A's ids."""
    a, b = world.a, world.b
    prober = Prober(world.http)
    for token in (world.session(b), b.api):
        for method, template, route in routes("tenant", "admin"):
            r = prober.send(method, template, route, b.ids, a.ids, bearer(token), a)
            prober.refused(r, 403, "forbidden")
        for method, template, route in routes("operator"):
            r = prober.send(method, template, route, b.ids, a.ids, bearer(token), a)
            prober.refused(r, 401, "unauthorized")
        for method, template, route in routes("event"):
            for headers in (bearer(token), {"X-Cmek-Event-Secret": token}):
                r = prober.send(method, template, route, b.ids, a.ids, headers, a)
                prober.refused(r, 401, "unauthorized")
    for method, template, route in routes("event"):  # B's event secret, about A's or B's key
        for ids in (a.ids, b.ids):
            r = prober.send(method, template, route, ids, a.ids,
                            {"X-Cmek-Event-Secret": b.event_secret}, a)
            prober.refused(r, 401, "unauthorized")
    for method, template, route in routes("login"):  # B's own email and password, at A
        r = prober.send(method, template, route, b.ids, a.ids,
                        {"X-Forwarded-For": new_client()}, a,
                        body={"email": b.email, "password": b.password})
        prober.refused(r, 401, "unauthorized")
    # Nothing was minted or changed for A by any of them.
    users = ok(world.http.get(f"/v1/tenants/{a.name}/users", headers=bearer(a.api)))
    assert not [u for u in users["users"] if u["email"].startswith("probe")]
    got = ok(world.http.get(fill("/v1/tenants/{tenant}/objects/tables/{object_id}", a.ids),
                            headers=bearer(a.api)))
    assert got["version"] == 1
    assert a.marker in got["body"]["title"]
    prober.check("another tenant's tokens")


def test_another_tenants_ids_under_ones_own_path_find_nothing(world: World) -> None:
    """A's token on A's path with B's ids: not found, never B's data; a write with B's
    id lands in A's own namespace and leaves B's object as it was."""
    a, b = world.a, world.b
    prober = Prober(world.http)
    swapped = replace(b.ids, tenant=a.name)
    session = world.session(a)
    probed = [(m, p, r) for m, p, r in routes("tenant", "operator")
              if any(x in p for x in ID_PARAMS) or r.body_ids]
    assert len(probed) >= 9
    for method, template, route in sorted(probed, key=lambda x: x[2].write):  # writes last
        headers = bearer(OPERATOR_TOKEN if route.auth == "operator" else session)
        r = prober.send(method, template, route, a.ids, swapped, headers, b)
        if route.write:
            ok(r)
        else:
            prober.refused(r, 404, "not_found", "object_not_found")
    with httpx.Client(base_url=world.platform.url, headers=bearer(b.api), timeout=30,
                      trust_env=False) as as_b:
        got = ok(as_b.get(fill("/v1/tenants/{tenant}/objects/tables/{object_id}", b.ids)))
        assert got["version"] == 1
        assert b.marker in got["body"]["title"]
        conn = ok(as_b.get(fill("/v1/tenants/{tenant}/connections/{name}", b.ids)))
        assert conn["config"]["path"] == b.ids.warehouse
        assert b.ids.backup_id in as_b.get(f"/v1/tenants/{b.name}/backups").text
    prober.check("another tenant's ids")


# --- the operator's credentials and the tenants' ----------------------------------------------
def test_operator_and_tenant_credentials_do_not_cross(world: World) -> None:
    """The operator token opens no tenant route and a tenant token no operator route; the
    event secret opens neither, and neither opens the event route. An analyst is no
    admin."""
    a = world.a
    prober = Prober(world.http)
    for secret in (OPERATOR_TOKEN, a.event_secret):
        for method, template, route in routes("tenant"):
            r = prober.send(method, template, route, a.ids, a.ids, bearer(secret), a)
            prober.refused(r, 401, "unauthorized")
    session = world.session(a)
    for token in (session, a.api, a.event_secret):
        for method, template, route in routes("operator"):
            r = prober.send(method, template, route, a.ids, a.ids, bearer(token), a)
            prober.refused(r, 401, "unauthorized")
    for method, template, route in routes("admin"):
        r = prober.send(method, template, route, a.ids, a.ids, bearer(a.event_secret), a)
        prober.refused(r, 401, "unauthorized")
        analyst = world.platform.login(a.name, f"analyst-{a.marker}@example.com",
                                       a.analyst_password)
        r = prober.send(method, template, route, a.ids, a.ids, bearer(analyst), a)
        prober.refused(r, 403, "forbidden")
    for method, template, route in routes("event"):
        for header in (OPERATOR_TOKEN, session, a.api):
            r = prober.send(method, template, route, a.ids, a.ids,
                            {"X-Cmek-Event-Secret": header, **bearer(a.event_secret)}, a)
            prober.refused(r, 401, "unauthorized")
    prober.check("operator and tenant credentials")


def test_malformed_authorization_is_refused_everywhere(world: World) -> None:
    a = world.a
    prober = Prober(world.http)
    for method, template, route in routes("tenant", "operator", "admin"):
        live = OPERATOR_TOKEN if route.auth == "operator" else a.api
        for headers in malformed(live):
            r = prober.send(method, template, route, a.ids, a.ids, headers, a)
            prober.refused(r, 401, "unauthorized")
    prober.check("malformed Authorization")


# --- tokens that ended --------------------------------------------------------------------------
def every_tenant_route_refuses(world: World, token: str, tenant: Tenant,
                               prober: Prober) -> None:
    for method, template, route in routes("tenant", "admin"):
        r = prober.send(method, template, route, tenant.ids, tenant.ids, bearer(token), tenant)
        prober.refused(r, 401, "unauthorized")


def test_a_session_past_its_lifetime_is_refused_everywhere(world: World) -> None:
    a = world.a
    session = world.platform.login(a.name, a.email, a.password)
    assert world.http.get(f"/v1/tenants/{a.name}/users", headers=bearer(session)
                          ).status_code == 200
    world.advance(SESSION_TTL + 1)
    prober = Prober(world.http)
    every_tenant_route_refuses(world, session, a, prober)
    # API tokens live until revoked, and signing in again works.
    ok(world.http.get(f"/v1/tenants/{a.name}/users", headers=bearer(a.api)))
    again = world.platform.login(a.name, a.email, a.password)
    ok(world.http.get(f"/v1/tenants/{a.name}/users", headers=bearer(again)))
    prober.check("expired session")


def test_a_signed_out_session_is_refused_everywhere(world: World) -> None:
    a = world.a
    session = world.platform.login(a.name, a.email, a.password)
    assert world.http.delete(f"/v1/tenants/{a.name}/sessions",
                             headers=bearer(session)).status_code == 204
    prober = Prober(world.http)
    every_tenant_route_refuses(world, session, a, prober)
    prober.check("signed-out session")


def test_a_tenant_lock_revokes_every_token(world: World, tmp_path: Path) -> None:
    """Tokens revoked at a lock stay revoked when the key comes back."""
    c = plant(world.http, world.platform, world.kms, "c", tmp_path)
    arn = ok(world.http.get(f"/v1/tenants/{c.name}", headers=bearer(OPERATOR_TOKEN)))[
        "kms_key_arn"]
    check = f"/v1/tenants/{c.name}/key/check"
    world.kms.client(CUSTOMER).disable_key(KeyId=arn)
    try:
        assert ok(world.http.post(check, headers=bearer(OPERATOR_TOKEN)))["state"] == "locked"
        r = world.http.get(f"/v1/tenants/{c.name}/users", headers=bearer(c.api))
        assert (r.status_code, r.json()["error"]) == (423, "tenant_key_unavailable")
    finally:
        world.kms.client(CUSTOMER).enable_key(KeyId=arn)
    assert ok(world.http.post(check, headers=bearer(OPERATOR_TOKEN)))["state"] == "active"
    prober = Prober(world.http)
    for token in (c.session, c.api):
        every_tenant_route_refuses(world, token, c, prober)
    fresh = world.platform.login(c.name, c.email, c.password)
    assert c.marker in ok(world.http.get(f"/v1/tenants/{c.name}/auth/sso",
                                         headers=bearer(fresh)))["client_id"]
    prober.check("tokens revoked by a lock")


def test_errors_of_every_kind_are_not_cacheable(world: World) -> None:
    a = world.a
    h, base = bearer(a.api), f"/v1/tenants/{a.name}"
    as_json = {**h, "Content-Type": "application/json"}
    answers = [
        world.http.get(f"{base}/no-such-route", headers=h),
        world.http.patch(f"{base}/users", headers=h),
        world.http.put(f"{base}/objects/tables/x", headers=as_json, content=b"{"),
        world.http.put(f"{base}/objects/tables/x", headers=as_json,
                       content=b'{"t": "' + b"a" * 2_000_000 + b'"}'),
        world.http.get(f"{base}/objects/tables/absent", headers=h),
        world.http.get(f"/v1/tenants/{a.name}zz/users", headers=h),
    ]
    assert [r.status_code for r in answers] == [404, 405, 400, 413, 404, 404]
    for r in answers:
        assert r.headers["cache-control"] == "no-store", (r.request.url, r.headers)


# --- login throttling ---------------------------------------------------------------------------
def sign_in(world: World, tenant: str, email: str, password: str,
            client: str) -> httpx.Response:
    return world.http.post(f"/v1/tenants/{tenant}/sessions",
                           json={"email": email, "password": password},
                           headers={"X-Forwarded-For": client})


def throttled(r: httpx.Response) -> int:
    """A 429 with the stable code, Retry-After and nothing more; returns the wait."""
    assert r.status_code == 429, r.text
    assert r.json() == {"error": "too_many_attempts",
                        "message": "too many failed sign-ins; try again later"}
    assert r.headers["cache-control"] == "no-store"
    return int(r.headers["retry-after"])


_clients = itertools.count(1)


def new_client() -> str:
    """An address of its own (sent as X-Forwarded-For, which this platform trusts from
    loopback as from its proxy: CMEK_TRUSTED_PROXIES), so only the counter under test
    moves."""
    n = next(_clients)
    return f"10.{n // 250 % 250}.{n % 250}.1"


def new_user(world: World) -> tuple[str, str]:
    """A user of A's of its own, so that a lockout in one test touches no other."""
    email, password = f"user-{uuid.uuid4().hex[:8]}@example.com", f"pw {uuid.uuid4().hex}"
    ok(world.http.post(f"/v1/tenants/{world.a.name}/users", headers=bearer(world.a.api),
                       json={"email": email, "password": password, "role": "analyst"}), 201)
    return email, password


def test_password_guessing_slows_the_guesser_and_locks_nobody_out(world: World) -> None:
    """One client guessing one account is slowed down: BACKOFF, then twice as long after
    each further failure. The same answer whether or not the email exists, and the right
    password is refused to that client meanwhile; but the account's owner, from any other
    client, signs in at once: no one can lock an account out for anyone else."""
    a = world.a
    email, password = new_user(world)
    unknown = f"nobody-{uuid.uuid4().hex[:6]}@example.com"
    answers, guessers = [], []
    for guessed in (email, unknown):
        guesser = new_client()
        for _ in range(MAX_FAILURES):
            r = sign_in(world, a.name, guessed, "wrong guess!", guesser)
            assert r.status_code == 401, r.text
        locked = sign_in(world, a.name, guessed, "wrong guess!", guesser)
        assert BACKOFF - 2 < throttled(locked) <= BACKOFF
        answers.append((locked.status_code, locked.json()))
        guessers.append(guesser)
    assert answers[0] == answers[1]  # the same whether the email exists or not
    throttled(sign_in(world, a.name, email, password, guessers[0]))  # right, yet refused
    ok(sign_in(world, a.name, email, password, new_client()), 201)  # the owner, elsewhere
    ok(sign_in(world, world.b.name, world.b.email, world.b.password, guessers[0]), 201)
    world.advance(BACKOFF)  # a wrong guess after the wait doubles the next one
    assert sign_in(world, a.name, email, "wrong guess!", guessers[0]).status_code == 401
    wait = throttled(sign_in(world, a.name, email, "wrong guess!", guessers[0]))
    assert 2 * BACKOFF - 2 < wait <= 2 * BACKOFF
    world.advance(wait)  # (one more failure would trip this client's own limit: PER_CLIENT)
    ok(sign_in(world, a.name, email, password, guessers[0]), 201)
    record("isolation", "probes", 2 * MAX_FAILURES + 9)


def test_failure_counts_reset_after_success_and_after_the_window(world: World) -> None:
    a = world.a
    email, password = new_user(world)
    client = new_client()

    def fail(times: int) -> None:
        for _ in range(times):
            r = sign_in(world, a.name, email, "wrong guess!", client)
            assert r.status_code == 401, r.text

    fail(MAX_FAILURES - 1)
    ok(sign_in(world, a.name, email, password, client), 201)  # resets the count
    fail(MAX_FAILURES - 1)
    world.advance(LOCKOUT + 1)  # the counting window passes: the count starts again
    fail(MAX_FAILURES - 1)
    ok(sign_in(world, a.name, email, password, client), 201)
    fail(MAX_FAILURES)  # and it still counts: the next attempt is refused
    throttled(sign_in(world, a.name, email, password, client))
    record("isolation", "probes", 4 * MAX_FAILURES + 1)


def test_one_client_guessing_across_accounts_is_throttled(world: World) -> None:
    """Spraying one password over many emails trips the per-client counter."""
    a = world.a
    email, password = new_user(world)
    client = new_client()
    for i in range(PER_CLIENT):
        r = sign_in(world, a.name, f"spray{i}-{uuid.uuid4().hex[:6]}@example.com",
                    "Summer2024!", client)
        assert r.status_code == 401, r.text
    wait = throttled(sign_in(world, a.name, email, password, client))
    ok(sign_in(world, a.name, email, password, new_client()), 201)  # other clients may
    world.advance(wait)
    ok(sign_in(world, a.name, email, password, client), 201)
    record("isolation", "probes", PER_CLIENT + 3)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_failure_counters_are_shared_and_atomic(backend: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    """The counters live in the control plane, so every platform process sees one count:
    concurrent failures (as from several processes) are each counted, none lost."""
    url = (f"sqlite:///{tmp_path}/control.sqlite3" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    plane = ControlPlane(create_engine(url), RowAuthenticator(INTEGRITY_KEY.encode()))
    now, subject = 1_800_000_000.0, "s" * 64

    def fail(_: int) -> None:
        plane.login_failed([(subject, 17, False), ("other" * 12, 1000, False)], now, 300)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fail, range(16)))
    assert plane.login_locked_until([subject], now) is None  # 16 of 17
    fail(0)
    assert plane.login_locked_until([subject], now) == now + 300
    assert plane.login_locked_until([subject], now + 300) is None  # the lockout ends
    plane.login_failed([(subject, 2, False)], now + 301, 300)  # and counting starts afresh
    assert plane.login_locked_until([subject], now + 301) is None
    with plane.engine.connect() as conn:  # an idle subject's row is forgotten meanwhile
        assert set(conn.execute(sa.select(login_failures.c.subject)).scalars()) == {subject}
    plane.login_succeeded(subject)
    plane.login_failed([(subject, 2, False)], now + 302, 300)
    assert plane.login_locked_until([subject], now + 302) is None  # the success reset it
    plane.engine.dispose()


# --- constant-time comparison of secrets ----------------------------------------------------------
SECRETISH = re.compile(r"(?:^|_)(tokens?|secrets?|password|passwd|passphrase|digest|h?mac"
                       r"|signature|sig|commitment|credentials?)(?:_|$)", re.IGNORECASE)
# Files where a secret-sounding name means something else, with the reason.
NOT_SECRETS = {
    "cmek/stores/search.py": "'token' is a word of the search index, not a credential",
}


def names(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def sql_column(node: ast.AST) -> bool:
    """``table.c.column``: the comparison builds a WHERE clause, run by the database on a
    hash (of a 256-bit random token, or keyed), so its timing tells nothing usable."""
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "c")


def test_secrets_are_compared_in_constant_time() -> None:
    found = []
    files = sorted(SRC.rglob("*.py"))
    for path in files:
        rel = path.relative_to(SRC).as_posix()
        if rel in NOT_SECRETS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare) or not any(
                    isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(sql_column(o) for o in operands):
                continue
            hits = sorted({n for o in operands for n in names(o) if SECRETISH.search(n)})
            if hits:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)} ({', '.join(hits)})")
    assert len(files) > 40
    assert not found, "compare secrets with hmac.compare_digest:\n" + "\n".join(found)


def test_the_scan_sees_a_plain_comparison() -> None:
    """The scanner itself: a plain comparison of a token is found; compare_digest is not."""
    bad = ast.parse("if token == expected_token: pass").body[0]
    good = ast.parse("if hmac.compare_digest(token, expected): pass").body[0]
    sql = ast.parse("q = tokens.c.token_hash == digest").body[0]
    assert isinstance(bad, ast.If)
    assert isinstance(good, ast.If)
    assert isinstance(sql, ast.Assign)
    compare = bad.test
    assert isinstance(compare, ast.Compare)
    assert any(SECRETISH.search(n) for n in names(compare))
    assert not isinstance(good.test, ast.Compare)
    assert isinstance(sql.value, ast.Compare)
    assert sql_column(sql.value.left)


def test_login_settings_are_validated() -> None:
    assert Settings().login_max_failures == 5
    assert Settings().login_lockout == 300
    for bad in ({"login_max_failures": 0}, {"login_lockout": 0},
                {"login_max_failures_per_client": True}, {"log_level": "LOUD"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings(**bad)


# --- no secret in logs or files -----------------------------------------------------------------
def encodings(value: bytes) -> list[bytes]:
    """The value raw, in hex, and in base64 at each of the three alignments it could have
    inside a longer base64 text (standard and URL-safe alphabets)."""
    forms = [value, value.hex().encode(), value.hex().upper().encode()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            text = encode(b"\0" * shift + value)
            forms.append(text[4 if shift else 0:-4])
    return [f for f in forms if len(f) >= 12]


def data_keys(platform: PlatformProcess, kms: KmsLocal, tenant: str) -> list[bytes]:
    """The tenant's plaintext data keys, unwrapped as the platform itself would."""
    with sqlite3.connect(platform.data_dir / "control.sqlite3") as db:
        rows = db.execute("select category, epoch, wrapped from cmek_data_keys "
                          "where tenant_id = ?", (tenant,)).fetchall()
    client = kms.client(PROVIDER)
    return [bytes(client.decrypt(CiphertextBlob=bytes(wrapped), EncryptionContext=
                                 encryption_context(tenant, category, epoch))["Plaintext"])
            for category, epoch, wrapped in rows]


def exercise(http: httpx.Client, t: Tenant, kms: KmsLocal, guess: str) -> None:
    """Every path a secret travels, failures included."""
    base, h = f"/v1/tenants/{t.name}", bearer(t.session)
    for _ in range(3):  # wrong guesses, then the lockout, then the right password refused
        http.post(f"{base}/sessions", json={"email": t.email, "password": guess})
    assert http.post(f"{base}/sessions", json={"email": t.email, "password": t.password}
                     ).status_code == 429
    for headers in [*malformed(t.session), bearer(OPERATOR_TOKEN), bearer(t.event_secret)]:
        assert http.get(f"{base}/users", headers=headers).status_code == 401
    assert http.get("/v1/tenants", headers=h).status_code == 401
    assert http.post(f"{base}/connections/{t.name[0]}-pg/query", headers=h,
                     json={"sql": "select 1"}).status_code == 502  # with its password in hand
    assert http.post(f"{base}/connections/{t.name[0]}-wh/query", headers=h,
                     json={"sql": "select nope"}).status_code == 400
    assert http.put(f"{base}/connections/bad", headers=h, json={
        "type": "postgres", "config": {"host": "127.0.0.1"},
        "credentials": {"user": "u", "password": t.pg_password}}).status_code == 400
    assert http.put(f"{base}/auth/sso", headers=h, json={
        "type": "oidc", "issuer": "http://plain.example.com", "client_id": "x",
        "client_secret": t.sso_secret}).status_code == 400
    assert http.post(f"{base}/sessions", headers={"Content-Type": "application/json"},
                     content=f'{{"email": "{t.email}", "password": "{t.password}"'
                     ).status_code == 400
    arn = ok(http.get(base, headers=bearer(OPERATOR_TOKEN)))["kms_key_arn"]
    event = {"source": "aws.kms", "detail-type": "KMS Key State Change", "resources": [arn]}
    assert http.post(f"{base}/key-events", json=event,
                     headers={"X-Cmek-Event-Secret": t.session}).status_code == 401
    ok(http.post(f"{base}/key-events", json=event,
                 headers={"X-Cmek-Event-Secret": t.event_secret}), 202)
    kms.client(CUSTOMER).disable_key(KeyId=arn)  # a lock purges keys, revokes tokens ...
    try:
        assert ok(http.post(f"{base}/key/check", headers=bearer(OPERATOR_TOKEN)))[
            "state"] == "locked"
    finally:
        kms.client(CUSTOMER).enable_key(KeyId=arn)
    assert ok(http.post(f"{base}/key/check", headers=bearer(OPERATOR_TOKEN)))[
        "state"] == "active"
    assert http.get(f"{base}/users", headers=h).status_code == 401  # revoked at the lock
    ok(http.post(f"{base}/backups/{t.ids.backup_id}/restore", headers=bearer(OPERATOR_TOKEN)))
    ok(http.post("/_dev/clock", json={"advance_seconds": 3600}))  # data keys unwrapped again
    fresh = ok(http.post(f"{base}/sessions", json={"email": t.email, "password": t.password}),
               201)["token"]
    ok(http.get(f"{base}/auth/sso", headers=bearer(fresh)))
    assert http.delete(f"{base}/sessions", headers=bearer(fresh)).status_code == 204


def test_no_secret_reaches_the_logs_or_the_disk(kmslocal: KmsLocal, tmp_path: Path) -> None:
    """A platform logging at DEBUG, driven through every path a secret takes: none of the
    secrets, tokens or data keys appears in its output or in any file of its data folder,
    raw, hex or base64."""
    platform = PlatformProcess(tmp_path / "platform", kmslocal, extra_env={
        "CMEK_LOG_LEVEL": "DEBUG", "CMEK_BACKUP_INTERVAL": "0", "CMEK_CHECK_INTERVAL": "3600",
        "CMEK_LOGIN_MAX_FAILURES": "3"})
    platform.start()
    guess = f"guessed-password-{uuid.uuid4().hex}"
    try:
        with platform.client() as http:
            t = plant(http, platform, kmslocal, "l", tmp_path)
            exercise(http, t, kmslocal, guess)
            keys = data_keys(platform, kmslocal, t.name)
    finally:
        platform.stop()
    assert len(keys) >= 5  # metadata, auth, logs, credentials, search, backups ...
    values = [v.encode() for v in (t.password, t.session, t.api, *t.secrets, guess,
                                   OPERATOR_TOKEN, INTEGRITY_KEY, PROVIDER[2])] + keys
    seen, deadline = -1, time.monotonic() + 5  # the reader thread drains the last lines
    while seen != len(platform.output) and time.monotonic() < deadline:
        seen = len(platform.output)
        time.sleep(0.1)
    output = "".join(platform.output).encode()
    assert b" DEBUG " in output  # DEBUG logging really ran, botocore's included
    assert b"botocore" in output
    files = [p for p in platform.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "control.sqlite3" for p in files)
    assert any("objects" in p.parts for p in files)
    found = []
    for value in values:
        for form in encodings(value):
            if form in output:
                found.append(f"process output: {form[:16]!r}")
            found += [f"{p}: {form[:16]!r}" for p in files if form in p.read_bytes()]
    record("isolation", "log_scan_values", len(values))
    assert not found, "\n".join(found)
