"""Fault injection: kmslocal throttles, fails, stalls and restarts under a live platform
that serves several tenants at once.

Each scenario proves one guarantee: transient KMS trouble is absorbed by bounded retries
or, if it lasts, degrades a tenant (served from its cached keys) for at most the outage
grace and then locks it with reason ``kms_unavailable``; the tenant comes back by itself
once KMS does. Throughout, no response carries another tenant's data, and every refusal
is the platform's JSON error with a stable code, never a stack trace.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cmek.platform.api import STATUS
from tests.kmslocal_harness import KmsLocal, free_port, write_config
from tests.platform_harness import OPERATOR_TOKEN, PlatformProcess, customer_key, wait_until
from tests.reliability import record

READ_TIMEOUT = 1.0  # CMEK_KMS_READ_TIMEOUT: a stalled KMS call gives up after this
MAX_ATTEMPTS = 3  # the boto adapter's tries per KMS call (src/cmek/kms/boto.py)
GRACE = 300.0  # CMEK_OUTAGE_GRACE
DATA_KEY_TTL = 60.0  # CMEK_DATA_KEY_TTL
# CMEK_CHECK_INTERVAL, on the dev clock: long, so the monitor's own checks come due when
# a test moves the clock for them (Env.recovered), not in the middle of a count.
CHECK_INTERVAL = 3600.0
# A stall: each call is held until the faults are cleared, far past any read timeout.
HANG: dict[str, Any] = {"error": "timeout", "latency_ms": 600_000}
TRANSIENT = ["ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
             "KeyUnavailableException"]
# Under KMS faults a request may be refused for these reasons only.
FAULT_CODES = {"kms_unavailable", "tenant_key_unavailable", "tenant_store_closed",
               "unauthorized"}
OBJECTS = 3


@dataclass
class Tenant:
    name: str
    token: str
    marker: str  # in every object of this tenant, and in nothing of any other


@dataclass
class Env:
    kms: KmsLocal
    platform: PlatformProcess
    markers: dict[str, str] = field(default_factory=dict)  # of every tenant provisioned

    # --- kmslocal's fault controls ------------------------------------------------------
    def inject(self, spec: dict[str, Any]) -> None:
        self.kms.dev_call("POST", "/_kmslocal/faults", spec)

    def clear(self) -> None:
        self.kms.dev_call("DELETE", "/_kmslocal/faults")

    def remaining(self, operation: str) -> int:
        """Calls left to the count-limited faults on ``operation``: every KMS attempt that
        met one used one up. Read back by adding a fault that matches no operation."""
        listed = self.kms.dev_call("POST", "/_kmslocal/faults",
                                   {"operations": ["NoSuchOperation"], "latency_ms": 1})
        return sum(int(f["count"]) for f in listed["faults"]
                   if operation in f["operations"] and f["count"] is not None)

    def crash_and_restart_kms(self) -> None:
        """kmslocal killed (not shut down: held requests are cut), then started again on
        the same port and data folder; injected faults do not survive it."""
        assert self.kms.process is not None
        self.kms.process.kill()
        self.kms.process.wait()
        self.kms.process = None
        self.kms.start()

    # --- the platform -------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        with self.platform.client() as c:
            assert c.post("/_dev/clock", json={"advance_seconds": seconds}).status_code == 200

    def view(self, tenant: str) -> dict[str, Any]:
        with self.platform.client(OPERATOR_TOKEN) as op:
            return dict(op.get(f"/v1/tenants/{tenant}/key").json())

    def check(self, tenants: list[Tenant]) -> list[tuple[str, str]]:
        """Check every tenant's key now, all at once; (state, reason) of each."""
        def one(t: Tenant) -> tuple[str, str]:
            with self.platform.client(OPERATOR_TOKEN) as op:
                r = op.post(f"/v1/tenants/{t.name}/key/check")
            assert r.status_code == 200, r.text
            return str(r.json()["state"]), str(r.json()["reason"])

        with ThreadPoolExecutor(len(tenants)) as threads:
            return list(threads.map(one, tenants))

    def recovered(self, tenants: list[Tenant]) -> list[str]:
        """Wait for the monitor, on its own, to find each tenant's key usable again (the
        dev clock moves one check interval so that their checks come due); the reasons."""
        self.advance(CHECK_INTERVAL * 1.2)
        views = wait_until(lambda: (found := [self.view(t.name) for t in tenants])
                           and all(v["state"] == "active" for v in found) and found)
        return [str(v["reason"]) for v in views]


class Audit:
    """Every response of a scenario, checked for ownership and for the error shape."""

    def __init__(self, env: Env) -> None:
        self.markers = dict(env.markers)
        self.checked = 0
        self.wrong_tenant = 0
        self.problems: list[str] = []
        self.seen: list[tuple[int, str, dict[str, Any]]] = []  # status, code, body
        self._lock = threading.Lock()

    def see(self, tenant: Tenant, r: httpx.Response) -> None:
        text = r.text
        problems = []
        if "Traceback" in text or 'File "' in text:
            problems.append(f"stack trace in a {r.status_code} body: {text[:200]}")
        others = [m for name, m in self.markers.items() if name != tenant.name and m in text]
        body: dict[str, Any] = {}
        if r.is_success:
            if tenant.marker not in text:
                problems.append(f"a 2xx without the caller's data: {text[:200]}")
        else:
            body = self._refusal(r, problems)
        with self._lock:
            self.checked += r.is_success
            self.wrong_tenant += bool(others)
            self.problems += problems
            self.seen.append((r.status_code, str(body.get("error", "")), body))

    @staticmethod
    def _refusal(r: httpx.Response, problems: list[str]) -> dict[str, Any]:
        try:
            body = r.json()
        except ValueError:
            problems.append(f"a {r.status_code} that is not JSON: {r.text[:200]}")
            return {}
        if not isinstance(body, dict):
            problems.append(f"a {r.status_code} that is not a JSON object: {r.text[:200]}")
            return {}
        code, message = body.get("error"), body.get("message")
        if code not in FAULT_CODES or STATUS.get(str(code)) != r.status_code:
            problems.append(f"an unexpected refusal {r.status_code}: {r.text[:200]}")
        if not isinstance(message, str) or "\n" in message:
            problems.append(f"a refusal without a one-line message: {r.text[:200]}")
        return body

    def statuses(self, since: int = 0) -> set[int]:
        return {status for status, _, _ in self.seen[since:]}

    def done(self) -> None:
        """Record what was measured; the scenario fails on any wrong-tenant response."""
        record("faults", "requests_checked", self.checked)
        record("faults", "wrong_tenant_data", self.wrong_tenant)
        assert self.wrong_tenant == 0
        assert not self.problems, self.problems[:5]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("faults")
    kms = KmsLocal(base / "kms", write_config(base / "kmslocal.toml", None), port=free_port())
    kms.start()
    platform = PlatformProcess(base / "platform", kms, extra_env={
        "CMEK_KMS_READ_TIMEOUT": str(READ_TIMEOUT), "CMEK_KMS_CONNECT_TIMEOUT": "1",
        "CMEK_OUTAGE_GRACE": str(GRACE), "CMEK_DATA_KEY_TTL": str(DATA_KEY_TTL),
        "CMEK_CHECK_INTERVAL": str(CHECK_INTERVAL), "CMEK_BACKUP_INTERVAL": "0"})
    platform.start()
    yield Env(kms, platform)
    platform.stop()
    kms.stop()


@pytest.fixture
def fenv(env: Env) -> Iterator[Env]:
    """The shared processes, every fault cleared afterwards, pass or fail, and no stack
    trace in the platform's own output meanwhile."""
    env.clear()
    logged = len(env.platform.output)
    yield env
    if env.kms.process is None:
        env.kms.start()
    env.clear()
    output = env.platform.output[logged:]
    assert not [line for line in output if "Traceback" in line], "".join(output)[-3000:]


@pytest.fixture(scope="module")
def pool_tenants(env: Env) -> list[Tenant]:
    return provision(env, 3)


@pytest.fixture
def pool(fenv: Env, pool_tenants: list[Tenant]) -> list[Tenant]:
    """Three tenants with marked objects, for the scenarios that need no fresh one: each
    starts with all three active and signed in, whatever the scenario before did."""
    if any(fenv.view(t.name)["state"] != "active" for t in pool_tenants):
        fenv.recovered(pool_tenants)

    def signed_in(t: Tenant) -> None:
        with fenv.platform.client(t.token) as c:
            if c.get(f"/v1/tenants/{t.name}/objects/tables").status_code == 401:
                t.token = fenv.platform.login(t.name)  # a lock revoked the session

    with ThreadPoolExecutor(len(pool_tenants)) as threads:
        list(threads.map(signed_in, pool_tenants))
    return pool_tenants


def provision(env: Env, n: int, objects: bool = True) -> list[Tenant]:
    """``n`` fresh tenants, each with a key of its own and, unless told not to, objects
    that carry its marker."""
    def one(_: int) -> Tenant:
        name = f"f{uuid.uuid4().hex[:10]}"
        env.platform.provision(name, customer_key(env.kms))
        tenant = Tenant(name, env.platform.login(name), f"mark{uuid.uuid4().hex[:12]}")
        env.markers[name] = tenant.marker
        if objects:
            put_objects(env, tenant)
        return tenant

    with ThreadPoolExecutor(n) as threads:
        return list(threads.map(one, range(n)))


def put_objects(env: Env, tenant: Tenant) -> None:
    with env.platform.client(tenant.token) as c:
        for i in range(OBJECTS):
            r = c.put(f"/v1/tenants/{tenant.name}/objects/tables/m{i}", json={
                "title": f"sales {tenant.marker}", "owner": tenant.name,
                "marker": tenant.marker, "columns": ["region", "amount"]})
            assert r.status_code == 200, r.text


def load(env: Env, tenants: list[Tenant], audit: Audit, rounds: int = 2) -> None:
    """Two readers per tenant, all tenants at once: objects, lists and searches (which
    also write the tenant's activity log)."""
    def reader(tenant: Tenant, worker: int) -> None:
        base = f"/v1/tenants/{tenant.name}"
        with env.platform.client(tenant.token) as c:
            for i in range(rounds):
                paths = [f"{base}/objects/tables/m{(worker + i) % OBJECTS}",
                         f"{base}/objects/tables" if i % 2 else f"{base}/search?q=sales"]
                for path in paths[::-1] if worker % 2 else paths:  # both data keys at once
                    audit.see(tenant, c.get(path))

    jobs = [(t, w) for t in tenants for w in range(2)]
    with ThreadPoolExecutor(len(jobs)) as threads:
        for future in [threads.submit(reader, t, w) for t, w in jobs]:
            future.result()


# --- latency ---------------------------------------------------------------------------
def test_latency_spike_below_the_timeout_degrades_nothing(fenv: Env, pool: list[Tenant]
                                                          ) -> None:
    before = [fenv.view(t.name)["since"] for t in pool]
    audit = Audit(fenv)
    fenv.advance(DATA_KEY_TTL + 1)  # every cached data key expired: reads go to KMS
    record("faults", "injected")
    fenv.inject({"latency_ms": int(READ_TIMEOUT * 300)})
    started = time.monotonic()
    load(fenv, pool, audit)
    took = time.monotonic() - started
    assert audit.statuses() == {200}
    assert took >= READ_TIMEOUT * 0.3  # the spike was really met
    assert [state for state, _ in fenv.check(pool)] == ["active"] * len(pool)
    assert [fenv.view(t.name)["since"] for t in pool] == before  # no transition at all
    audit.done()
    record("faults", "survived")


# --- short bursts: absorbed by the adapter's retries -----------------------------------
# These run before the outage scenarios: a long outage drains botocore's retry quota
# (one per client), after which it retries nothing until calls succeed again.
@pytest.mark.parametrize("error", TRANSIENT)
def test_short_burst_is_absorbed_by_retries_within_budget(fenv: Env, error: str) -> None:
    tenants = provision(fenv, 3, objects=False)
    lone = tenants.pop()
    audit = Audit(fenv)
    # Each tenant's first objects need new data keys (GenerateDataKey). The monitor never
    # calls that operation, so these faults meet the data path alone.
    record("faults", "injected")
    fenv.inject({"operations": ["GenerateDataKey"], "error": error,
                 "count": MAX_ATTEMPTS - 1})
    with ThreadPoolExecutor(len(tenants)) as threads:
        list(threads.map(lambda t: put_objects(fenv, t), tenants))
    assert fenv.remaining("GenerateDataKey") == 0  # both faults were met, and retried
    assert [fenv.view(t.name)["state"] for t in tenants] == ["active"] * len(tenants)
    load(fenv, tenants, audit)
    assert audit.statuses() == {200}

    # A burst longer than the budget: exactly MAX_ATTEMPTS tries, then a clean 503, and
    # the tenant degraded, not locked.
    fenv.clear()
    fenv.inject({"operations": ["GenerateDataKey"], "error": error, "count": 10})
    with fenv.platform.client(lone.token) as c:
        r = c.put(f"/v1/tenants/{lone.name}/objects/tables/m0", json={"title": "x"})
    assert (r.status_code, r.json()["error"]) == (503, "kms_unavailable")
    assert "Traceback" not in r.text
    assert fenv.remaining("GenerateDataKey") == 10 - MAX_ATTEMPTS
    view = fenv.view(lone.name)
    assert (view["state"], view["reason"]) == ("degraded", "kms_unavailable")
    fenv.clear()
    put_objects(fenv, lone)  # nothing half-written stands in the way
    assert fenv.recovered([lone]) == ["kms_recovered"]
    load(fenv, [lone], audit, rounds=1)
    assert audit.statuses() == {200}
    audit.done()
    record("faults", "survived")


# --- lasting outages: degraded within the grace, locked after, back by itself ----------
OUTAGES: dict[str, dict[str, Any]] = {
    "throttling": {"error": "ThrottlingException"},
    "internal_errors": {"error": "KMSInternalException"},
    "timeouts": HANG,
}


@pytest.mark.parametrize("fault", list(OUTAGES))
def test_outage_degrades_within_grace_locks_after_and_recovers(fenv: Env, pool: list[Tenant],
                                                               fault: str) -> None:
    audit = Audit(fenv)
    degraded = [("degraded", "kms_unavailable")] * len(pool)
    record("faults", "injected")
    # Decrypt has a fault of its own, count-limited so that its attempts can be counted:
    # only the data path calls it here (a check stops at its failed DescribeKey).
    fenv.inject({"operations": ["DescribeKey", "GenerateDataKey", "Encrypt"],
                 **OUTAGES[fault]})
    fenv.inject({"operations": ["Decrypt"], **OUTAGES[fault], "count": 10_000})
    assert fenv.check(pool) == degraded

    # Just inside the grace: the cached data keys have expired and KMS still refuses or
    # stalls, yet every tenant is served its own data from them. Each data key (metadata,
    # search index, activity log) asks KMS once, not once per request.
    fenv.advance(GRACE - 30)
    load(fenv, pool, audit)
    assert audit.statuses() == {200}
    attempts = 10_000 - fenv.remaining("Decrypt")
    assert 0 < attempts <= len(pool) * 3 * MAX_ATTEMPTS
    assert fenv.check(pool) == degraded

    # Past the grace: locked, because KMS was unavailable (not as a revocation).
    fenv.advance(31)
    assert fenv.check(pool) == [("locked", "kms_unavailable")] * len(pool)
    before = len(audit.seen)
    load(fenv, pool, audit, rounds=1)
    refused = audit.seen[before:]
    assert {(status, body["key_state"], body["reason"]) for status, _, body in refused} == {
        (423, "locked", "kms_unavailable")}

    fenv.clear()
    assert fenv.recovered(pool) == ["restored:restart"] * len(pool)
    for t in pool:  # the lock revoked every session: a new one, the same data
        t.token = fenv.platform.login(t.name)
    before = len(audit.seen)
    load(fenv, pool, audit, rounds=1)
    assert audit.statuses(before) == {200}
    audit.done()
    record("faults", "survived")


# --- kmslocal restarted ----------------------------------------------------------------
def test_kmslocal_stopped_between_requests(fenv: Env, pool: list[Tenant]) -> None:
    audit = Audit(fenv)
    load(fenv, pool, audit, rounds=1)
    fenv.advance(DATA_KEY_TTL + 1)  # every cached data key expired
    record("faults", "injected")
    fenv.kms.stop()
    # The first unwrap that fails degrades the tenant, and from then on (that request
    # included) the expired keys serve within the outage grace.
    load(fenv, pool, audit)
    assert audit.statuses() == {200}
    assert fenv.check(pool) == [("degraded", "kms_unavailable")] * len(pool)
    fenv.kms.start()  # the same port and data folder
    assert fenv.recovered(pool) == ["kms_recovered"] * len(pool)
    fenv.advance(DATA_KEY_TTL + 1)  # fresh unwraps by the restarted kmslocal
    load(fenv, pool, audit)
    assert audit.statuses() == {200}
    audit.done()
    record("faults", "survived")


def test_kmslocal_killed_mid_request(fenv: Env, pool: list[Tenant]) -> None:
    audit = Audit(fenv)
    fenv.advance(DATA_KEY_TTL + 1)  # reads must unwrap with KMS
    record("faults", "injected")
    fenv.inject({"operations": ["Decrypt"], **HANG, "count": 1000})
    with ThreadPoolExecutor(1) as thread:
        reading = thread.submit(load, fenv, pool, audit, 1)
        wait_until(lambda: fenv.remaining("Decrypt") < 1000)  # a Decrypt is held in KMS
        assert not reading.done()
        fenv.crash_and_restart_kms()
        reading.result()
    # Cut mid-call: retried against the restarted kmslocal, or served from the cache
    # within the grace of the outage it started.
    assert audit.statuses() == {200}
    fenv.recovered(pool)
    fenv.advance(DATA_KEY_TTL + 1)  # the key material survived the crash
    before = len(audit.seen)
    load(fenv, pool, audit)
    assert audit.statuses(before) == {200}
    audit.done()
    record("faults", "survived")
