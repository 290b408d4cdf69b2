"""Fuzzing the platform's HTTP API from its own OpenAPI document, with schemathesis.

A real `cmek serve --dev` process (with kmslocal as its KMS) serves /openapi.json;
schemathesis turns every operation in it into a Hypothesis strategy of requests, in both
of its generation modes: valid per the schema (positive) and deliberately invalid
(negative). A third mode takes positive requests of every operation with a JSON body and
sends the body as JSON that Python parses but that is not plain JSON, or not JSON at all:
NaN and infinities, lone surrogates, deep nesting, bytes that are not UTF-8, a cut, another
top-level type.

Most requests carry credentials that get them past authentication (the operator token for
operator routes, a tenant's admin token for tenant routes, the event secret for key
events) and name the real tenant, connection, object, schedule and backup, so that fuzzed
bodies and parameters reach the handlers and the stores below them; the rest carry
generated, missing, garbage or another tenant's credentials, and generated ids.

The property: no response is a 5xx; no body carries a stack trace or an exception's repr;
every refusal (4xx) is ``{"error": <code>, "message": <text>}``; the server's own output
shows no traceback. Budgets are fixed and derandomized, so every run sends the same
requests; the requests made and the 5xx answers met are recorded for docs/reliability.md.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.kmslocal_harness import KmsLocal
from tests.platform_harness import OPERATOR_TOKEN, PlatformProcess
from tests.reliability import record

HOSTILE = "hostile"
# Examples per operation and mode; the hostile mode runs only where there is a JSON body.
BUDGET: dict[GenerationMode | str, int] = {
    GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10, HOSTILE: 12}
# The operator's routes; every other /v1/tenants/{tenant}/... route is a tenant's.
OPERATOR_ROUTE = re.compile(
    r"^/v1/tenants(/\{tenant\}(/key(/.*)?|/backups/\{backup_id\}/restore)?)?$")
STACK_TRACE = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|"
    r"<(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception) object at 0x|"
    r"\b[A-Z]\w*(?:Error|Exception)\((?:'|\")|sqlalchemy\.exc\.|pydantic_core\."
)
# Values Python's json module reads but plain JSON cannot carry, and bodies that are not JSON.
HOSTILE_VALUES = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\\ud800"', b'"x\\udfff"',
    b'{"\\udc00": 1}', b"[" * 31 + b"]" * 31, b"[" * 40 + b"]" * 40,
    b'{"a":' * 200 + b"1" + b"}" * 200, b"[" * 3000 + b"]" * 3000, b'"\xff\xfe"',
    b'"\x00"', b"1" * 5000,
]
HOSTILE_BODIES = [b"", b"[]", b"null", b'"text"', b"1", b"{", b'{"a": 1,}', b"\xef\xbb\xbf{}"]
PLACEHOLDER = "\u0000fuzz\u0000"


@dataclass
class World:
    """The live platform and the real things fuzzed requests should be able to reach."""

    platform: PlatformProcess
    tenant: str
    other_tenant: str
    admin_token: str
    other_token: str
    warehouse: str
    ids: dict[str, list[str]] = field(default_factory=dict)

    def fresh_api_token(self) -> str:
        """A token of the tenant that a fuzzed DELETE .../sessions may revoke."""
        with self.platform.client(self.admin_token) as c:
            r = c.post(f"/v1/tenants/{self.tenant}/api-tokens")
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def replenish(self) -> None:
        """Put back what fuzzed deletes and restores may have taken, before each operation."""
        root = f"/v1/tenants/{self.tenant}"
        with self.platform.client(self.admin_token) as c:
            r = c.put(f"{root}/connections/wh",
                      json={"type": "duckdb", "config": {"path": self.warehouse}})
            assert r.status_code == 200, r.text
            r = c.put(f"{root}/objects/tables/sales",
                      json={"title": "Sales", "columns": ["region", "amount"]})
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def world(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("fuzz-api")
    platform = PlatformProcess(base / "data", kmslocal)
    platform.start()
    try:
        tenant, other = platform.new_tenant(kmslocal), platform.new_tenant(kmslocal)
        warehouse = platform.warehouse_file(tenant)
        with duckdb.connect(str(warehouse)) as db:
            db.execute("create table sales(region varchar, amount integer)")
            db.execute("insert into sales values ('emea', 10), ('amer', 32)")
        world = World(platform, tenant, other, platform.login(tenant), platform.login(other),
                      warehouse.name)
        world.replenish()
        with platform.client(world.admin_token) as c:
            schedule = c.post(f"/v1/tenants/{tenant}/schedules", json={
                "name": "nightly", "connection": "wh", "sql": "select 1",
                "every_seconds": 86400})
            assert schedule.status_code == 201, schedule.text
            backup = c.post(f"/v1/tenants/{tenant}/backups")
            assert backup.status_code == 201, backup.text
        world.ids = {"tenant": [tenant, tenant, tenant, other], "name": ["wh"],
                     "kind": ["tables"], "object_id": ["sales"],
                     "schedule_id": [str(schedule.json()["schedule_id"])],
                     "backup_id": [str(backup.json()["backup_id"])]}
        yield world
    finally:
        platform.stop()


def credentials(world: World, method: str, path: str, choice: str) -> dict[str, str]:
    """Headers for the drawn choice: the right credentials, or deliberately wrong ones."""
    if path == "/v1/tenants/{tenant}/key-events":
        secret = {"right": world.platform.event_secret(world.tenant),
                  "other": OPERATOR_TOKEN}.get(choice)
        return {"x-cmek-event-secret": secret} if secret else {}
    if choice == "right":
        if OPERATOR_ROUTE.match(path):
            token = OPERATOR_TOKEN
        elif (method, path) == ("DELETE", "/v1/tenants/{tenant}/sessions"):
            token = world.fresh_api_token()  # signing out must not end the fuzzing session
        else:
            token = world.admin_token
        return {"authorization": f"Bearer {token}"}
    if choice == "other":
        token = OPERATOR_TOKEN if path.startswith("/v1/tenants/{tenant}/") else world.other_token
        return {"authorization": f"Bearer {token}"}
    return {"authorization": "Bearer not-a-token"} if choice == "garbage" else {}


def hostile(body: Any, slot: int, value: bytes | None) -> bytes:
    """The body with one top-level value replaced by ``value``, or a whole hostile body."""
    if value is None:
        return HOSTILE_BODIES[slot % len(HOSTILE_BODIES)]
    target = dict(body) if isinstance(body, dict) else {}
    keys = sorted(target) or ["fuzz"]
    target[keys[slot % len(keys)]] = PLACEHOLDER
    text = json.dumps(target).encode()
    return text.replace(json.dumps(PLACEHOLDER).encode(), value)


@dataclass
class Tally:
    requests: int = 0
    server_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)

    def check(self, label: str, response: requests.Response, reproduce: str) -> None:
        """The property, for one response."""
        self.requests += 1
        self.statuses[response.status_code] += 1
        body = response.text
        problem = None
        if response.status_code >= 500:
            self.server_errors += 1
            problem = "a 5xx"
        elif '"internal_error"' in body:
            problem = "an internal error"
        elif STACK_TRACE.search(body):
            problem = "a stack trace in the body"
        elif response.status_code >= 400:
            try:
                shape = response.json()
            except ValueError:
                shape = None
            if not (isinstance(shape, dict) and isinstance(shape.get("error"), str)
                    and isinstance(shape.get("message"), str)):
                problem = "a refusal without an error code"
        if problem:
            self.findings.append(f"{label}: {problem}: {response.status_code} {body[:300]!r}\n"
                                 f"  reproduce: {reproduce[:800]}")


def fuzz_operation(world: World, operation: Any, mode: GenerationMode | str,
                   session: requests.Session, tally: Tally) -> None:
    method, path = operation.method.upper(), operation.path
    if mode == HOSTILE and "application/json" not in [b.media_type for b in operation.body]:
        return
    generation = GenerationMode.POSITIVE if mode == HOSTILE else mode
    cases = operation.as_strategy(generation_mode=generation)
    real = {name: st.sampled_from([*values, None])
            for name, values in world.ids.items() if f"{{{name}}}" in path}
    auths = st.sampled_from(["right"] * 6 + ["generated", "none", "garbage", "other"])
    values = st.sampled_from([*HOSTILE_VALUES, None])

    @settings(max_examples=BUDGET[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases, auth=auths, ids=st.fixed_dictionaries(real), value=values,
           slot=st.integers(0, 63))
    def run(case: Any, auth: str, ids: dict[str, str | None], value: bytes | None,
            slot: int) -> None:
        for name, real_id in ids.items():
            if real_id is not None:
                case.path_parameters[name] = real_id
        headers = dict(case.headers or {})
        if auth != "generated":
            headers = {k: v for k, v in headers.items()
                       if k.lower() not in ("authorization", "x-cmek-event-secret")}
            headers.update(credentials(world, method, path, auth))
        case.headers = headers
        label = f"{method} {path} [{mode if isinstance(mode, str) else mode.value}]"
        if mode != HOSTILE:
            response = case.call(base_url=world.platform.url, session=session, timeout=30)
            tally.check(label, response, case.as_curl_command(base_url=world.platform.url))
            return
        raw = hostile(case.body, slot, value)
        response = session.request(
            method, world.platform.url + case.formatted_path, params=case.query or None,
            data=raw, headers={**headers, "content-type": "application/json"}, timeout=30)
        tally.check(label, response, f"{method} {case.formatted_path} body={raw[:300]!r}")

    try:
        run()
    except Unsatisfiable:  # nothing of this operation can be made invalid (e.g. /healthz)
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_api_fuzz(world: World) -> None:
    schema = schemathesis.openapi.from_url(f"{world.platform.url}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert "/v1/tenants/{tenant}/objects/{kind}/{object_id}" in paths  # the real document
    assert not [p for p in paths if p.startswith("/_dev/")], "dev controls are not the API"
    tally = Tally()
    with requests.Session() as session:
        for operation in operations:
            world.replenish()
            for mode in BUDGET:
                fuzz_operation(world, operation, mode, session, tally)
    output = "".join(world.platform.output)
    for match in re.finditer(r"Traceback \(most recent call last\)|unexpected \w+ in a request",
                             output):
        tally.findings.append(f"server output: {output[match.start():match.start() + 1500]}")
    record("fuzz", "api_5xx", tally.server_errors)
    assert not tally.findings, "\n".join(tally.findings[:20])
    # The credentials worked: a good share of requests got through to a handler's answer.
    answered = sum(n for status, n in tally.statuses.items() if status < 300)
    assert answered >= tally.requests // 5, sorted(tally.statuses.items())
    assert tally.requests >= len(operations) * BUDGET[GenerationMode.POSITIVE] // 2
    record("fuzz", "api_cases", tally.requests)


# --- what the fuzzing found, kept as regressions ----------------------------------------


def _put(world: World, path: str, raw: bytes, token: str | None = None) -> requests.Response:
    return requests.put(f"{world.platform.url}/v1/tenants/{world.tenant}{path}", data=raw,
                        headers={"authorization": f"Bearer {token or world.admin_token}",
                                 "content-type": "application/json"}, timeout=30)


@pytest.mark.parametrize("value", [
    b"NaN", b"-Infinity", b"1e400",  # Python reads them; JSON cannot say them back
    b'"\\ud800"', b'{"\\udc00": 1}',  # a lone surrogate is no UTF-8: the store failed
    b"[" * 40 + b"]" * 40,  # stored, then every read failed to encode the response
])
def test_free_form_bodies_must_be_plain_json(world: World, value: bytes) -> None:
    for path, raw in [
        ("/objects/tables/hostile", b'{"title": "t", "extra": ' + value + b"}"),
        ("/auth/sso", b'{"type": "oidc", "issuer": ' + value + b', "client_id": "c", '
                      b'"client_secret": "s"}'),
        ("/connections/hostile", b'{"type": "duckdb", "config": {"path": ' + value + b"}}"),
    ]:
        r = _put(world, path, raw)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] in ("invalid_input", "invalid_connection"), (path, r.text)
    got = requests.get(f"{world.platform.url}/v1/tenants/{world.tenant}/objects/tables/hostile",
                       headers={"authorization": f"Bearer {world.admin_token}"}, timeout=30)
    assert got.status_code == 404  # nothing reached the store
    event = requests.post(f"{world.platform.url}/v1/tenants/{world.tenant}/key-events",
                          data=b'{"source": "aws.kms", "resources": [], "id": ' + value + b"}",
                          headers={"x-cmek-event-secret": world.platform.event_secret(
                              world.tenant),
                                   "content-type": "application/json"}, timeout=30)
    assert event.status_code == 400
    assert event.json()["error"] == "invalid_input"


def test_plain_json_at_the_depth_limit_round_trips(world: World) -> None:
    body = {"title": "Zürich ✓", "big": 1.5e300, "deep": json.loads("[" * 30 + "]" * 30)}
    r = _put(world, "/objects/tables/plain", json.dumps(body, ensure_ascii=False).encode())
    assert r.status_code == 200, r.text
    got = requests.get(f"{world.platform.url}/v1/tenants/{world.tenant}/objects/tables/plain",
                       headers={"authorization": f"Bearer {world.admin_token}"}, timeout=30)
    assert got.json()["body"] == body


@pytest.mark.parametrize(("method", "path", "raw", "status", "code"), [
    ("PUT", "/objects/tables/x", b'{"title": "\xff"}', 400, "invalid_input"),  # not UTF-8
    ("PUT", "/objects/tables/x", b"[" * 5000 + b"]" * 5000, 400, "invalid_input"),
    ("GET", "/no-such-route", b"", 404, "not_found"),
    ("PATCH", "/objects/tables/x", b"{}", 405, "method_not_allowed"),
])
def test_framework_refusals_carry_an_error_code(world: World, method: str, path: str,
                                                raw: bytes, status: int, code: str) -> None:
    """They answered {"detail": ...}, the one refusal shape without a stable code."""
    r = requests.request(method, f"{world.platform.url}/v1/tenants/{world.tenant}{path}",
                         data=raw or None, timeout=30,
                         headers={"authorization": f"Bearer {world.admin_token}",
                                  "content-type": "application/json"})
    assert r.status_code == status
    assert r.json() == {"error": code, "message": r.json()["message"]}
    assert r.headers["cache-control"] == "no-store"


def test_dev_controls_stay_out_of_the_openapi_document(world: World) -> None:
    with world.platform.client() as anon:
        paths = anon.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith("/_dev/")]
        assert anon.get("/_dev/clock").status_code == 200  # still served with --dev
        r = anon.post("/_dev/clock", content=b'{"advance_seconds": Infinity}',
                      headers={"content-type": "application/json"})
        assert r.status_code == 400  # an infinite step broke the clock and every answer
        assert r.json()["error"] == "invalid_input"
