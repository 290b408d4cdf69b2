"""Soak: the platform under steady load while customers cut and return their keys.

kmslocal (``--dev``) and ``cmek serve --dev`` run as their own processes in a temporary
directory, wired as in production: kmslocal forwards each key's events to its tenant's
``POST /v1/tenants/{tenant}/key-events``, and the platform also polls each key every
``CMEK_CHECK_INTERVAL`` (5 s, the default). Five tenants each get a customer key of their
own. For ``--minutes`` (default 10):

- 16 client threads (one keep-alive httpx.Client each, spread over the tenants) write
  objects with random bodies (remembering each acknowledged body's SHA-256), read their
  own objects back, list, search, and sign in again; a client whose session a lock
  revoked signs in again once its tenant is back;
- after a warm-up, a chaos thread starts a cycle every ``--flap-seconds`` (30): it takes
  the next tenant's key away as the customer would (``DisableKey``; for one tenant
  ``ScheduleKeyDeletion``), waits until the platform's operator key view shows the
  tenant locked, gives it back a few seconds later (``EnableKey``; ``CancelKeyDeletion``
  + ``EnableKey``), waits for ``active``, and then injects a short KMS fault
  (throttling, internal errors or latency) through ``/_kmslocal/faults``.

At the end every key is usable again; every acknowledged write is read back and its
SHA-256 compared, and found by search. Must be zero:

- data after lock: a 2xx answer on a tenant data endpoint (GET/PUT object, list, search)
  for tenant T whose request *started* after the operator key view was seen to report T
  ``locked`` or ``pending_deletion`` following a chaos step, and *finished* before the
  chaos thread started giving the key back. Between those instants the key is unusable
  in KMS and the platform has said so, so nothing may be served; requests that straddle
  either instant are not judged. A lock the chaos thread never saw is not judged either
  (counted as ``locks_not_observed``);
- sign-ins after lock: the same for a 201 on ``POST .../sessions``;
- writes lost: objects whose last acknowledged write is not what reading it back gives
  (missing, or another body), unless the other body is one this client sent later, or
  sent without ever hearing an answer;
- read mismatches: the same check on the clients' own reads during the soak;
- search misses: a verified object that its own unique word does not find.

Memory is the resident set (VmRSS) of the platform and of kmslocal, after the warm-up
and when the load stops. Prints a summary; writes JSON (bench/results/soak.json); exits
non-zero when a must-be-zero figure is not zero.

    python bench/soak.py [--minutes 10] [--json PATH] [--flap-seconds 30] [--seed N]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config as BotoConfig

sys.path.insert(0, str(Path(__file__).parent))
from _servers import (
    CUSTOMER,
    OPERATOR_TOKEN,
    POLICY,
    REGION,
    ROOT,
    error_code,
    percentile,
    stack,
    subscribe,
    write_results,
)

TENANTS = [f"soak{i}" for i in range(5)]
CLIENTS = 16
PASSWORD = "soak admin password"
KINDS = ("tables", "models", "liveboards", "answers")
TOPICS = ("revenue", "orders", "customers", "inventory", "churn", "marketing", "billing")
COLUMNS = ("customer_id", "order_id", "order_total", "region", "revenue_usd", "product_sku",
           "quantity", "created_at", "country", "segment", "invoice_id", "amount_usd")
DATA_OPS = frozenset({"put", "get", "list", "search"})
# (operation, weight) of what a signed-in client does next
MIX = (("put", 25), ("overwrite", 10), ("get", 30), ("list", 5), ("search", 22),
       ("login", 3))
FAULT_OPS = ["Decrypt", "GenerateDataKey", "Encrypt", "DescribeKey"]
FAULTS: dict[str, dict[str, Any]] = {
    "throttling": {"operations": FAULT_OPS, "error": "ThrottlingException", "rate": 0.6},
    "internal_error": {"operations": FAULT_OPS, "error": "KMSInternalException", "rate": 0.3},
    "latency": {"operations": FAULT_OPS, "latency_ms": 400, "rate": 1.0},
}
DELETION_EVERY = 5  # cycle 1, 6, 11, ...: that tenant's key is scheduled for deletion
LOCKED_STATES = frozenset({"locked", "pending_deletion"})
DEFINITIONS = {
    "data_after_lock": (
        "2xx answers on tenant data endpoints (GET/PUT object, list, search) for tenant T "
        "whose request started after the operator key view (GET /v1/tenants/T/key) was "
        "seen reporting locked or pending_deletion following a chaos step, and finished "
        "before the chaos thread began giving the key back (EnableKey or "
        "CancelKeyDeletion). Requests straddling either instant are not judged."),
    "logins_after_lock": "the same window, for 201 answers to POST /v1/tenants/T/sessions",
    "sessions_surviving_lock": (
        "2xx answers for tenant T to requests started after a lock of T was observed (at any "
        "later time, after the key came back too), made with a session whose sign-in was "
        "answered before that lock was observed: a lock ends every session"),
    "writes_lost": (
        "objects whose last acknowledged PUT does not read back byte-identical (SHA-256 of "
        "canonical JSON) after every key is usable again and every tenant active, unless "
        "what is read is a body the same client sent later, or sent without an answer"),
    "read_mismatches": "the same check applied to the clients' own GETs during the soak",
    "search_misses": "verified objects that a search for their own unique word misses",
    "memory": ("VmRSS from /proc/<pid>/status after the warm-up (start) and when the load "
               "stops (end), each the median of five samples 0.2 s apart"),
}


def now() -> float:
    return time.monotonic()


def digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def steady_rss_mib(pid: int) -> float:
    """The median of five samples 0.2 s apart: one sample can land on a request's
    short-lived buffers (a whole index being sealed), which come and go by tens of MiB."""
    samples = []
    for i in range(5):
        if i:
            time.sleep(0.2)
        samples.append(rss_mib(pid))
    return sorted(samples)[2]


def customer_kms(url: str) -> Any:
    return boto3.client("kms", endpoint_url=url, region_name=REGION,
                        aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1],
                        config=BotoConfig(retries={"total_max_attempts": 3,
                                                   "mode": "standard"}))


# --- what the clients remember --------------------------------------------------------------
@dataclass
class Tracked:
    """One object's writes as its (only) writer saw them."""

    tenant: str
    kind: str
    object_id: str
    acked: str | None = None  # SHA-256 of the last acknowledged body
    # bodies that may stand instead (SHA-256 -> unique word): every attempt after the last
    # acknowledgement, and any attempt never answered (it may land late)
    maybe: dict[str, str] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)
    words: dict[str, str] = field(default_factory=dict)  # SHA-256 -> unique word
    last_put: str = ""  # how the last PUT ended, for the report

    def acceptable(self) -> set[str]:
        return ({self.acked} if self.acked else set()) | set(self.maybe)


@dataclass
class Window:
    """One chaos step on one tenant, in seconds since the soak began."""

    tenant: str
    action: str  # disable | schedule_deletion
    call_start: float
    call_returned: float = 0.0
    lock_observed: float | None = None
    observed_state: str | None = None
    give_back_start: float = 0.0
    give_back_returned: float = 0.0
    active_again: float | None = None


class Tally:
    """Every client request's outcome; shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}
        # tenant, start, end, op, when the session's sign-in was answered
        self.served: list[tuple[str, float, float, str, float]] = []
        self.logins: list[tuple[str, float, float]] = []
        self.mismatches: list[str] = []
        self.wrong_tenant: list[str] = []

    def record(self, tenant: str, op: str, t0: float, t1: float, token_at: float,
               r: httpx.Response | None, err: str | None) -> None:
        with self.lock:
            self.counts["requests"] += 1
            self.counts[f"op:{op}"] += 1
            if r is None:
                self.counts["failed_other"] += 1
                self.failed[f"connection: {err}"] += 1
                return
            status = r.status_code
            if 200 <= status < 300:
                self.counts["served"] += 1
                self.latency.setdefault(op, []).append(t1 - t0)
                if op == "login":
                    self.logins.append((tenant, t0, t1))
                else:
                    self.served.append((tenant, t0, t1, op, token_at))
            elif status == 423:
                self.counts["refused_423"] += 1
                self.counts[f"refused_423:{error_code(r)}"] += 1
            else:
                self.counts["failed_other"] += 1
                self.failed[f"{op} {status} {error_code(r)}"] += 1


# --- the clients ----------------------------------------------------------------------------
class Client(threading.Thread):
    def __init__(self, index: int, tenant: str, url: str, tally: Tally, stop: threading.Event,
                 seed: int, think: float) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.index, self.tenant, self.url = index, tenant, url
        self.tally, self.stop, self.think = tally, stop, think
        self.rng = random.Random(seed * 1000 + index)
        self.objects: list[Tracked] = []
        self.token: str | None = None
        self.token_at = 0.0  # when the sign-in that gave the token was answered
        self.seq = 0
        self.crashed: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as c:
                ops = [op for op, _ in MIX]
                weights = [w for _, w in MIX]
                while not self.stop.is_set():
                    if self.token is None:
                        self.login(c)
                        continue
                    op = self.rng.choices(ops, weights)[0]
                    if op in ("overwrite", "get") and not self.acked():
                        op = "put"
                    getattr(self, f"do_{op}")(c)
                    if self.think:
                        time.sleep(self.rng.uniform(0, self.think))
        except Exception as e:  # a bug in the soak itself: reported, not hidden
            self.crashed = f"{type(e).__name__}: {e}"

    def acked(self) -> list[Tracked]:
        return [o for o in self.objects if o.acked]

    def send(self, c: httpx.Client, op: str, method: str, path: str,
             **kw: Any) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        t0 = now()
        try:
            r = c.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as e:
            self.tally.record(self.tenant, op, t0, now(), self.token_at, None,
                              type(e).__name__)
            time.sleep(0.5)
            return None
        self.tally.record(self.tenant, op, t0, now(), self.token_at, r, None)
        if r.status_code == 401:
            self.token = None  # revoked by a lock, or expired: sign in again
        elif r.status_code == 423:
            time.sleep(self.rng.uniform(0.1, 0.4))  # the tenant is locked: back off a bit
        return r

    def login(self, c: httpx.Client) -> None:
        self.token = None
        r = self.send(c, "login", "POST", f"/v1/tenants/{self.tenant}/sessions",
                      json={"email": f"admin@{self.tenant}.example", "password": PASSWORD})
        if r is not None and r.status_code == 201:
            self.token = str(r.json()["token"])
            self.token_at = now()

    def do_login(self, c: httpx.Client) -> None:
        self.send(c, "logout", "DELETE", f"/v1/tenants/{self.tenant}/sessions")
        self.login(c)

    def body(self) -> tuple[dict[str, Any], str]:
        topic = self.rng.choice(TOPICS)
        word = f"w{self.rng.getrandbits(48):012x}"  # unique: finds exactly this body
        payload = base64.b64encode(self.rng.randbytes(self.rng.randint(64, 3072))).decode()
        return {"title": f"{topic.title()} report {self.index}-{self.seq}",
                "description": f"Daily {topic} figures, marker {word}",
                "columns": self.rng.sample(COLUMNS, self.rng.randint(3, 8)),
                "tenant": self.tenant, "payload": payload}, word

    def write(self, c: httpx.Client, obj: Tracked) -> None:
        self.seq += 1
        body, word = self.body()
        sha = digest(body)
        obj.words[sha] = word
        r = self.send(c, "put", "PUT",
                      f"/v1/tenants/{self.tenant}/objects/{obj.kind}/{obj.object_id}",
                      json=body)
        obj.last_put = "no answer" if r is None else f"{r.status_code} {error_code(r)}".strip()
        if r is not None and r.status_code == 200:
            obj.acked = sha
            obj.maybe = dict(obj.unanswered)
            if digest(r.json().get("body", {})) != sha:
                self.tally.mismatches.append(f"PUT echo {obj.object_id}")
        else:
            obj.maybe[sha] = word
            if r is None:
                obj.unanswered[sha] = word

    def do_put(self, c: httpx.Client) -> None:
        obj = Tracked(self.tenant, self.rng.choice(KINDS), f"c{self.index:02d}-{self.seq:06d}")
        self.objects.append(obj)
        self.write(c, obj)

    def do_overwrite(self, c: httpx.Client) -> None:
        self.write(c, self.rng.choice(self.acked()))

    def do_get(self, c: httpx.Client) -> None:
        obj = self.rng.choice(self.acked())
        r = self.send(c, "get", "GET",
                      f"/v1/tenants/{self.tenant}/objects/{obj.kind}/{obj.object_id}")
        if r is not None and r.status_code == 200:
            body = r.json().get("body", {})
            if body.get("tenant") != self.tenant:
                self.tally.wrong_tenant.append(f"GET {self.tenant}/{obj.object_id}")
            if digest(body) not in obj.acceptable():
                self.tally.mismatches.append(f"GET {self.tenant}/{obj.object_id}")

    def do_list(self, c: httpx.Client) -> None:
        self.send(c, "list", "GET", f"/v1/tenants/{self.tenant}/objects/"
                  f"{self.rng.choice(KINDS)}")

    def do_search(self, c: httpx.Client) -> None:
        q = self.rng.choice([*TOPICS, "report", "customer id", "amount", "seg", "order tot"])
        self.send(c, "search", "GET", f"/v1/tenants/{self.tenant}/search",
                  params={"q": q, "limit": 20})


# --- the chaos thread -------------------------------------------------------------------------
class Chaos(threading.Thread):
    def __init__(self, kms_url: str, url: str, keys: dict[str, str], flap: float,
                 stop: threading.Event, t_zero: float, seed: int) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.kms_url, self.keys, self.flap, self.stop = kms_url, keys, flap, stop
        self.t_zero = t_zero
        self.kms = customer_kms(kms_url)
        self.op = httpx.Client(base_url=url, timeout=30, trust_env=False,
                               headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        self.dev = httpx.Client(base_url=kms_url, timeout=30, trust_env=False)
        self.rng = random.Random(seed)
        self.windows: list[Window] = []
        self.faults: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.crashed: str | None = None

    def t(self) -> float:
        return now() - self.t_zero

    def run(self) -> None:
        try:
            cycle = 0
            while not self.stop.is_set():
                start = now()
                self.step(cycle)
                fault_at = start + self.flap * 0.6
                if self.stop.wait(max(0.0, fault_at - now())):
                    break
                self.fault(list(FAULTS)[cycle % len(FAULTS)],
                           min(5.0, self.flap * 0.2))
                cycle += 1
                if self.stop.wait(max(0.0, start + self.flap - now())):
                    break
        except Exception as e:
            self.crashed = f"{type(e).__name__}: {e}"
        finally:
            self.dev.delete("/_kmslocal/faults")

    def state(self, tenant: str) -> str:
        self.counts["operator_requests"] += 1
        r = self.op.get(f"/v1/tenants/{tenant}/key")
        return str(r.json()["state"]) if r.status_code == 200 else f"http_{r.status_code}"

    def until(self, tenant: str, states: frozenset[str],
              seconds: float) -> tuple[float, str] | None:
        deadline = now() + seconds
        while now() < deadline:
            s = self.state(tenant)
            seen = now()
            if s in states:
                return seen, s
            time.sleep(0.05)
        return None

    def step(self, cycle: int) -> None:
        tenant = TENANTS[cycle % len(TENANTS)]
        key = self.keys[tenant]
        deletion = cycle % DELETION_EVERY == 1
        w = Window(tenant, "schedule_deletion" if deletion else "disable", self.t())
        if deletion:
            self.kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
            self.counts["deletions_scheduled"] += 1
        else:
            self.kms.disable_key(KeyId=key)
            self.counts["key_disables"] += 1
        w.call_returned = self.t()
        seen = self.until(tenant, LOCKED_STATES, 30.0)
        if seen is None:
            self.counts["locks_not_observed"] += 1
        else:
            w.lock_observed, w.observed_state = seen[0] - self.t_zero, seen[1]
        hold = w.call_returned + self.rng.uniform(4.0, 8.0)
        time.sleep(max(0.0, hold - self.t()))
        w.give_back_start = self.t()
        if deletion:
            self.kms.cancel_key_deletion(KeyId=key)
            self.counts["deletions_cancelled"] += 1
        self.kms.enable_key(KeyId=key)
        self.counts["key_enables"] += 1
        w.give_back_returned = self.t()
        back = self.until(tenant, frozenset({"active"}), 60.0)
        if back is None:
            self.counts["restores_not_observed"] += 1
        else:
            w.active_again = back[0] - self.t_zero
        self.windows.append(w)

    def fault(self, kind: str, seconds: float) -> None:
        r = self.dev.post("/_kmslocal/faults", json=FAULTS[kind])
        if r.status_code >= 300:
            raise RuntimeError(f"fault injection refused: {r.status_code} {r.text}")
        start = self.t()
        self.counts["faults_injected"] += 1
        self.counts[f"faults:{kind}"] += 1
        self.stop.wait(seconds)
        self.dev.delete("/_kmslocal/faults")
        self.faults.append({"kind": kind, "start_s": round(start, 3),
                            "end_s": round(self.t(), 3), **FAULTS[kind]})


# --- setup and the end -----------------------------------------------------------------------
def provision(kms_url: str, url: str) -> dict[str, str]:
    kms = customer_kms(kms_url)
    keys: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as op:
        for tenant in TENANTS:
            arn = str(kms.create_key(Policy=json.dumps(POLICY))["KeyMetadata"]["Arn"])
            r = op.post("/v1/tenants", json={"tenant_id": tenant, "kms_key_arn": arn,
                                             "admin_email": f"admin@{tenant}.example",
                                             "admin_password": PASSWORD})
            if r.status_code != 201:
                raise SystemExit(f"provisioning {tenant}: {r.status_code} {r.text}")
            subscribe(kms_url, url, tenant, arn)
            keys[tenant] = arn
    return keys


def make_usable(kms_url: str, url: str, keys: dict[str, str]) -> dict[str, bool]:
    """Every key enabled and every tenant active again (nudging with a key check)."""
    kms = customer_kms(kms_url)
    httpx.delete(f"{kms_url}/_kmslocal/faults", timeout=30, trust_env=False)
    for key in keys.values():
        state = kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"]
        if state == "PendingDeletion":
            kms.cancel_key_deletion(KeyId=key)
            state = "Disabled"
        if state == "Disabled":
            kms.enable_key(KeyId=key)
    active: dict[str, bool] = {}
    with httpx.Client(base_url=url, timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as op:
        for tenant in TENANTS:
            deadline = now() + 120
            while True:
                r = op.post(f"/v1/tenants/{tenant}/key/check")
                if r.status_code == 200 and r.json()["state"] == "active":
                    active[tenant] = True
                    break
                if now() > deadline:
                    active[tenant] = False
                    break
                time.sleep(0.5)
    return active


def verify_tenant(url: str, tenant: str, objects: list[Tracked], out: dict[str, Any]) -> None:
    """Read back each object's last acknowledged write; then search for its word."""
    lost: list[str] = []
    found: list[tuple[Tracked, str]] = []
    checked = 0
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        token = None
        for _ in range(60):
            r = c.post(f"/v1/tenants/{tenant}/sessions",
                       json={"email": f"admin@{tenant}.example", "password": PASSWORD})
            if r.status_code == 201:
                token = r.json()["token"]
                break
            time.sleep(1)
        if token is None:
            out[tenant] = {"checked": 0, "lost": [o.object_id for o in objects if o.acked],
                           "search_misses": [], "note": "could not sign in"}
            return
        c.headers["Authorization"] = f"Bearer {token}"
        for obj in objects:
            if obj.acked is None:
                continue
            checked += 1
            path = f"/v1/tenants/{tenant}/objects/{obj.kind}/{obj.object_id}"
            got = None
            for _ in range(5):
                try:
                    r = c.get(path)
                except httpx.HTTPError:
                    time.sleep(1)
                    continue
                if r.status_code in (200, 404):
                    got = r
                    break
                time.sleep(1)
            sha = digest(got.json().get("body", {})) if got and got.status_code == 200 else None
            if sha is None or sha not in obj.acceptable():
                lost.append(f"{obj.kind}/{obj.object_id}: "
                            f"{'HTTP ' + str(got.status_code) if got else 'no answer'}"
                            f"{', other body' if sha else ''}")
                continue
            found.append((obj, sha))

        def missed(pairs: list[tuple[Tracked, str]]) -> list[tuple[Tracked, str]]:
            left = []
            for obj, sha in pairs:
                r = c.get(f"/v1/tenants/{tenant}/search",
                          params={"q": obj.words[sha], "limit": 5})
                if r.status_code != 200 or obj.object_id not in {
                        h["id"] for h in r.json()["hits"]}:
                    left.append((obj, sha))
            return left

        # an index the platform marked stale is rebuilt by its indexing job (1 s ticks)
        first = missed(found)
        if first:
            time.sleep(3)
        misses = [f"{o.kind}/{o.object_id} ({'' if sha == o.acked else 'un'}acknowledged "
                  f"body; last PUT: {o.last_put})" for o, sha in missed(first)]
    out[tenant] = {"checked": checked, "lost": lost, "search_misses": misses}


def judge(tally: Tally, windows: list[Window], t_zero: float) -> dict[str, Any]:
    """Count what was served inside each window (see DEFINITIONS)."""
    data: list[dict[str, Any]] = []
    logins: list[dict[str, Any]] = []
    survived: list[dict[str, Any]] = []
    judged = 0
    for w in windows:
        if w.lock_observed is None:
            continue
        lo, hi = t_zero + w.lock_observed, t_zero + w.give_back_start
        judged += 1
        for tenant, t0, t1, op, token_at in tally.served:
            if tenant != w.tenant or t0 <= lo:
                continue
            if t1 < hi and op in DATA_OPS:
                data.append({"tenant": tenant, "op": op, "start_s": round(t0 - t_zero, 3),
                             "end_s": round(t1 - t_zero, 3)})
            if token_at < lo:
                survived.append({"tenant": tenant, "op": op, "start_s": round(t0 - t_zero, 3),
                                 "signed_in_s": round(token_at - t_zero, 3)})
        for tenant, t0, t1 in tally.logins:
            if tenant == w.tenant and t0 > lo and t1 < hi:
                logins.append({"tenant": tenant, "start_s": round(t0 - t_zero, 3)})
    return {"windows_judged": judged, "data_after_lock": data, "logins_after_lock": logins,
            "sessions_surviving_lock": survived}


def memory(start: dict[str, float], end: dict[str, float]) -> dict[str, Any]:
    return {name: {"start_mib": round(start[name], 1), "end_mib": round(end[name], 1),
                   "growth_mib": round(end[name] - start[name], 1)} for name in start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/soak.json")
    parser.add_argument("--flap-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--think-ms", type=float, default=20.0,
                        help="each client pauses up to this long between requests")
    parser.add_argument("--backup-interval", type=float, default=120.0,
                        help="the platform's scheduled backups (CMEK_BACKUP_INTERVAL)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.minutes <= 0 or args.flap_seconds < 10 or args.clients < 1:
        parser.error("--minutes > 0, --flap-seconds >= 10, --clients >= 1")
    duration = args.minutes * 60
    warmup = min(30.0, duration * 0.1)
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp, \
            stack(Path(tmp), CMEK_CHECK_INTERVAL="5",
                  CMEK_BACKUP_INTERVAL=str(args.backup_interval)) as (kms, platform):
        pids = {"platform": platform.proc.pid, "kmslocal": kms.proc.pid}
        keys = provision(kms.url, platform.url)
        stop = threading.Event()
        clients = [Client(i, TENANTS[i % len(TENANTS)], platform.url, tally, stop, args.seed,
                          args.think_ms / 1000) for i in range(args.clients)]
        t_zero = now()
        for cl in clients:
            cl.start()
        print(f"soak: {args.clients} clients on {len(TENANTS)} tenants for {args.minutes:g} min "
              f"(warm-up {warmup:.0f} s), key flap every {args.flap_seconds:g} s",
              file=sys.stderr, flush=True)
        time.sleep(warmup)
        rss_start = {name: steady_rss_mib(pid) for name, pid in pids.items()}
        chaos = Chaos(kms.url, platform.url, keys, args.flap_seconds, stop, t_zero, args.seed)
        chaos.start()
        rss_series: list[dict[str, float]] = []
        while (left := t_zero + duration - now()) > 0:
            time.sleep(min(10.0, left))
            if platform.proc.poll() is not None or kms.proc.poll() is not None:
                print("soak: a server exited", file=sys.stderr)
                break
            sample = {name: round(rss_mib(pid), 1) for name, pid in pids.items()}
            rss_series.append({"t_s": round(now() - t_zero, 1), **sample})
            c = tally.counts
            print(f"  {now() - t_zero:5.0f} s: {c['requests']} requests, {c['served']} served, "
                  f"{c['refused_423']} 423, {c['failed_other']} other; "
                  f"platform {sample['platform']:.0f} MiB", file=sys.stderr, flush=True)
        stop.set()
        for cl in clients:
            cl.join(timeout=120)
        chaos.join(timeout=120)
        load_s = now() - t_zero
        rss_end = {name: steady_rss_mib(pid) for name, pid in pids.items()}
        print("soak: load stopped; giving every key back and verifying writes",
              file=sys.stderr, flush=True)
        active = make_usable(kms.url, platform.url, keys)
        verified: dict[str, Any] = {}
        by_tenant: dict[str, list[Tracked]] = {t: [] for t in TENANTS}
        for cl in clients:
            by_tenant[cl.tenant].extend(cl.objects)
        threads = [threading.Thread(target=verify_tenant,
                                    args=(platform.url, t, by_tenant[t], verified))
                   for t in TENANTS]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        verdict = judge(tally, chaos.windows, t_zero)
        platform_errors = list(platform.errors)
        kms_errors = list(kms.errors)
    lost = [f"{t}: {x}" for t in TENANTS for x in verified[t]["lost"]]
    misses = [f"{t}: {x}" for t in TENANTS for x in verified[t]["search_misses"]]
    c = tally.counts
    counts = {
        "requests": c["requests"], "served": c["served"], "refused_423": c["refused_423"],
        "failed_other": c["failed_other"],
        "internal_errors": sum(n for k, n in tally.failed.items() if " 500 " in k),
        "connection_errors": sum(n for k, n in tally.failed.items()
                                 if k.startswith("connection")),
        "data_after_lock": len(verdict["data_after_lock"]),
        "logins_after_lock": len(verdict["logins_after_lock"]),
        "sessions_surviving_lock": len(verdict["sessions_surviving_lock"]),
        "writes_acknowledged": len(tally.latency.get("put", [])),
        "objects_verified": sum(v["checked"] for v in verified.values()),
        "writes_lost": len(lost), "read_mismatches": len(tally.mismatches),
        "wrong_tenant_data": len(tally.wrong_tenant), "search_misses": len(misses),
        "key_disables": chaos.counts["key_disables"],
        "key_enables": chaos.counts["key_enables"],
        "deletions_scheduled": chaos.counts["deletions_scheduled"],
        "deletions_cancelled": chaos.counts["deletions_cancelled"],
        "faults_injected": chaos.counts["faults_injected"],
        "locks_not_observed": chaos.counts["locks_not_observed"],
        "restores_not_observed": chaos.counts["restores_not_observed"],
        "windows_judged": verdict["windows_judged"],
    }
    must_be_zero = ["data_after_lock", "logins_after_lock", "sessions_surviving_lock",
                    "writes_lost", "read_mismatches", "wrong_tenant_data", "search_misses"]
    bad = [k for k in must_be_zero if counts[k]]
    problems = [f"client {cl.index}: {cl.crashed}" for cl in clients if cl.crashed]
    if chaos.crashed:
        problems.append(f"chaos: {chaos.crashed}")
    if not all(active.values()):
        problems.append(f"not active at the end: {[t for t, ok in active.items() if not ok]}")
    latency = {op: {"n": len(s), "p50_ms": round(percentile(s, 0.5) * 1e3, 1),
                    "p99_ms": round(percentile(s, 0.99) * 1e3, 1)}
               for op, s in sorted(tally.latency.items())}
    restore_s = [w.active_again - w.give_back_returned for w in chaos.windows
                 if w.active_again is not None]
    lock_s = [w.lock_observed - w.call_returned for w in chaos.windows
              if w.lock_observed is not None]
    result: dict[str, Any] = {
        "minutes": args.minutes, "load_seconds": round(load_s, 1), "warmup_seconds": warmup,
        "clients": args.clients, "tenants": len(TENANTS), "flap_seconds": args.flap_seconds,
        "think_ms": args.think_ms, "check_interval_s": 5, "events": True,
        "backup_interval_s": args.backup_interval, "seed": args.seed,
        "counts": counts, "must_be_zero": must_be_zero, "ok": not bad and not problems,
        "failed_by_reason": dict(tally.failed.most_common()),
        "refused_423_by_code": {k.split(":", 1)[1]: n for k, n in c.items()
                                if k.startswith("refused_423:")},
        "requests_by_op": {k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("op:")},
        "latency_2xx": latency,
        "memory": memory(rss_start, rss_end), "rss_series_mib": rss_series,
        "time_to_lock_observed_s": summary(lock_s),
        "time_to_active_after_give_back_s": summary(restore_s),
        "windows": [vars(w) | {k: round(v, 3) for k, v in vars(w).items()
                               if isinstance(v, float)} for w in chaos.windows],
        "faults": chaos.faults,
        "violations": {"data_after_lock": verdict["data_after_lock"][:50],
                       "logins_after_lock": verdict["logins_after_lock"][:50],
                       "sessions_surviving_lock": verdict["sessions_surviving_lock"][:50],
                       "writes_lost": lost[:50], "read_mismatches": tally.mismatches[:50],
                       "wrong_tenant_data": tally.wrong_tenant[:50],
                       "search_misses": misses[:50]},
        "problems": problems,
        "platform_error_log": platform_errors[:50], "kmslocal_error_log": kms_errors[:50],
        "definitions": DEFINITIONS,
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
    }
    print_summary(result)
    write_results(args.json, result)
    for k in bad:
        print(f"soak: must be 0 but is {counts[k]}: {k}", file=sys.stderr)
    for p in problems:
        print(f"soak: {p}", file=sys.stderr)
    return 1 if bad or problems else 0


def summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50": round(percentile(samples, 0.5), 3),
            "max": round(max(samples), 3)}


def print_summary(r: dict[str, Any]) -> None:
    c = r["counts"]
    print(f"Soak: {r['minutes']:g} min, {r['clients']} clients, {r['tenants']} tenants, "
          f"a key taken away every {r['flap_seconds']:g} s, events + {r['check_interval_s']} s "
          "polling")
    rows = [("requests", "requests"), ("served (2xx)", "served"),
            ("refused 423", "refused_423"), ("failed otherwise", "failed_other"),
            ("  of which 500", "internal_errors"), ("  of which connection", "connection_errors"),
            ("writes acknowledged", "writes_acknowledged"),
            ("objects verified", "objects_verified"),
            ("key disables", "key_disables"), ("deletions scheduled", "deletions_scheduled"),
            ("deletions cancelled", "deletions_cancelled"), ("faults injected", "faults_injected"),
            ("lock windows judged", "windows_judged"),
            ("locks not observed", "locks_not_observed"),
            ("data after lock (must be 0)", "data_after_lock"),
            ("sign-ins after lock (must be 0)", "logins_after_lock"),
            ("sessions surviving a lock (must be 0)", "sessions_surviving_lock"),
            ("writes lost (must be 0)", "writes_lost"),
            ("read mismatches (must be 0)", "read_mismatches"),
            ("wrong tenant data (must be 0)", "wrong_tenant_data"),
            ("search misses (must be 0)", "search_misses")]
    for label, key in rows:
        print(f"  {label:<34}{c[key]:>10,}")
    for reason, n in list(r["failed_by_reason"].items())[:10]:
        print(f"    failed: {n:>6,} x {reason}")
    for name, m in r["memory"].items():
        print(f"  RSS {name:<30}{m['start_mib']:>8.1f} -> {m['end_mib']:.1f} MiB "
              f"({m['growth_mib']:+.1f})")
    lock, back = r["time_to_lock_observed_s"], r["time_to_active_after_give_back_s"]
    if lock["n"]:
        print(f"  lock observed after the customer's call: p50 {lock['p50']:.2f} s, "
              f"max {lock['max']:.2f} s; active again: p50 {back.get('p50', 0):.2f} s, "
              f"max {back.get('max', 0):.2f} s")
    print(f"  result: {'OK' if r['ok'] else 'FAILED'}")


if __name__ == "__main__":
    sys.exit(main())
