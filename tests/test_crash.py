"""Crash safety: a real `cmek serve --dev` is SIGKILLed in the middle of writes, backups,
restores, rewraps and crypto-shreds, then restarted on the same data directory. Each
operation is then completed or cleanly absent, and every acknowledged write (a 2xx
answer) reads back byte for byte.

The process kills itself at a named crash point (``CMEK_DEV_CRASH_AT``, cmek.crashpoints)
so each step boundary is hit exactly; one more test kills it from outside at an
arbitrary moment while several writers are busy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

import cmek
from cmek import crashpoints
from cmek.audit import AuditEntry, AuditTrail
from cmek.cli import main
from cmek.clock import SystemClock
from cmek.db import create_engine
from cmek.kms import KmsSettings
from cmek.stores.backup import RestoreJournal
from cmek.stores.objects_file import FileObjectStore
from cmek.stores.objects_s3 import S3ObjectStore
from tests.conftest import make_bucket
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal
from tests.platform_harness import INTEGRITY_KEY, PlatformProcess, customer_key, wait_until
from tests.reliability import record

DAY = 86400.0
TABLES = "tables"
ACKS_BEFORE_THE_KILL = 80


class Node:
    """One platform data directory, across crashes and restarts."""

    def __init__(self, data_dir: Path, kms: KmsLocal) -> None:
        self.data_dir = data_dir
        self.proc = PlatformProcess(data_dir, kms, extra_env={
            "CMEK_CHECK_INTERVAL": "3600", "CMEK_BACKUP_INTERVAL": "0"})

    def start(self, crash_at: str | None = None) -> None:
        self.proc.extra_env.pop(crashpoints.ENV_VAR, None)
        if crash_at is not None:
            self.proc.extra_env[crashpoints.ENV_VAR] = crash_at
        self.proc.start()

    def crashed(self) -> None:
        """The process died of SIGKILL (its own crash point, or ours)."""
        proc = self.proc.process
        assert proc is not None
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the crash point was never reached:\n"
                                 + "".join(self.proc.output[-30:])) from None
        assert code == -signal.SIGKILL, "".join(self.proc.output[-30:])
        self.proc.process = None
        record("crashes", "injected")

    def stop(self) -> None:
        self.proc.stop()

    def client(self, token: str | None = None) -> httpx.Client:
        return self.proc.client(token)

    def operator(self) -> httpx.Client:
        return self.proc.operator()

    def tenant_files(self, tenant: str) -> list[str]:
        """Every file below the tenant's object prefix, staging files included."""
        base = self.data_dir / "objects" / "tenants" / tenant
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def staging_files(self) -> list[Path]:
        return [p for p in (self.data_dir / "objects").rglob("~*") if p.is_file()]

    def control(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "control.sqlite3")) as db:
            return list(db.execute(sql, args))

    def audit(self, tenant: str) -> list[AuditEntry]:
        engine = create_engine(f"sqlite:///{self.data_dir / 'control.sqlite3'}")
        try:
            return AuditTrail(engine, SystemClock()).entries(tenant)
        finally:
            engine.dispose()

    def audit_kinds(self, tenant: str) -> list[str]:
        return [e.kind for e in self.audit(tenant)]


@pytest.fixture
def node(tmp_path: Path, kmslocal: KmsLocal) -> Iterator[Node]:
    n = Node(tmp_path / "platform", kmslocal)
    yield n
    if n.proc.process is not None:
        n.proc.process.kill()
        n.proc.process.wait()


def dies(call: Callable[[], Any]) -> None:
    """The request never gets an answer: the process died while serving it."""
    with pytest.raises(httpx.TransportError):
        call()


def digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def put(c: httpx.Client, tenant: str, oid: str, body: dict[str, Any]) -> httpx.Response:
    return c.put(f"/v1/tenants/{tenant}/objects/{TABLES}/{oid}", json=body)


def put_until_it_dies(node: Node, tenant: str, token: str, prefix: str
                      ) -> tuple[dict[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """PUT fresh objects until the armed crash point kills the process: the acknowledged
    ones, and the one that was cut short."""
    acked: dict[str, dict[str, Any]] = {}
    with node.client(token) as c:
        for n in range(20):
            oid = f"{prefix}{n}"
            body = {"title": f"crash {oid}", "description": f"written {n}", "n": n}
            try:
                r = put(c, tenant, oid, body)
            except httpx.TransportError:
                return acked, (oid, body)
            assert r.status_code == 200, r.text
            acked[oid] = body
    raise AssertionError("the crash point was never reached")


def search_ids(c: httpx.Client, tenant: str, q: str) -> set[str]:
    r = c.get(f"/v1/tenants/{tenant}/search", params={"q": q, "limit": 200})
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["hits"]}


def listed(c: httpx.Client, tenant: str) -> set[str]:
    r = c.get(f"/v1/tenants/{tenant}/objects/{TABLES}")
    assert r.status_code == 200, r.text
    return {o["id"] for o in r.json()["objects"]}


def body_of(c: httpx.Client, tenant: str, oid: str) -> dict[str, Any] | None:
    r = c.get(f"/v1/tenants/{tenant}/objects/{TABLES}/{oid}")
    assert r.status_code in (200, 404), r.text  # never a 500: nothing half-written
    return dict(r.json()["body"]) if r.status_code == 200 else None


def warehouse(node: Node, tenant: str) -> str:
    """A DuckDB file in the tenant's warehouse folder; its path as a connection names it."""
    path = node.proc.warehouse_file(tenant)
    with duckdb.connect(str(path)) as db:
        db.execute("create table sales(region varchar, amount integer)")
        db.execute("insert into sales values ('emea', 10), ('amer', 32)")
    return path.name


def query(c: httpx.Client, tenant: str, sql: str) -> str:
    r = c.post(f"/v1/tenants/{tenant}/connections/wh/query", json={"sql": sql})
    assert r.status_code == 200, r.text
    return str(r.json()["result_id"])


# --- writes ----------------------------------------------------------------------------


def test_acknowledged_writes_survive_a_kill_under_concurrent_writers(
        node: Node, kmslocal: KmsLocal) -> None:
    node.start()
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    lock = threading.Lock()
    acked: dict[str, tuple[int, str]] = {}  # id -> (version, digest) of the last 2xx
    sent: dict[str, set[str]] = {}  # id -> digests sent without an answer
    failures: list[str] = []
    answered = [0]
    enough = threading.Event()

    def writer(w: int) -> None:
        rng = random.Random(w)
        with node.client(token) as c:
            for n in range(10_000):
                oid = f"w{w}-{rng.randrange(30)}"  # overwrites of its own ids, too
                body = {"title": f"crash k{w}x{n}", "description": f"writer {w}",
                        "payload": rng.randbytes(rng.randrange(16, 3000)).hex()}
                with lock:
                    sent.setdefault(oid, set()).add(digest(body))
                try:
                    r = put(c, tenant, oid, body)
                except httpx.TransportError:
                    return  # killed mid-request: unacknowledged
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                with lock:
                    sent[oid].discard(digest(body))
                    acked[oid] = (int(r.json()["version"]), digest(body))
                    answered[0] += 1
                    if answered[0] >= ACKS_BEFORE_THE_KILL:
                        enough.set()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(60), failures
    assert node.proc.process is not None
    node.proc.process.kill()  # an arbitrary moment, from outside
    node.crashed()
    for t in threads:
        t.join(30)
    assert failures == []

    node.start()
    lost: list[str] = []
    with node.client(token) as c:
        present = listed(c, tenant)
        for oid in sorted(set(acked) | set(sent)):
            r = c.get(f"/v1/tenants/{tenant}/objects/{TABLES}/{oid}")
            assert r.status_code in (200, 404), r.text  # never a 500
            allowed = set(sent.get(oid, ()))
            if oid in acked:
                allowed.add(acked[oid][1])
                if r.status_code != 200 or digest(r.json()["body"]) not in allowed or (
                        r.json()["version"] < acked[oid][0]):
                    lost.append(oid)
            elif r.status_code == 200:  # an unacknowledged write: complete or absent
                assert digest(r.json()["body"]) in allowed
        assert present == {oid for oid in set(acked) | set(sent)
                           if body_of(c, tenant, oid) is not None}
        # The index agrees with the store: no ghost, nothing missing, no stale title.
        assert search_ids(c, tenant, "crash") == present
        for oid in present:
            title = (body_of(c, tenant, oid) or {})["title"]
            assert oid in search_ids(c, tenant, title.split()[1])
    assert lost == [], lost
    record("crashes", "acknowledged_writes_checked", len(acked))
    record("crashes", "acknowledged_writes_lost", len(lost))
    record("crashes", "recovered")
    node.stop()


def test_a_write_cut_between_its_steps_is_complete_after_restart(
        node: Node, kmslocal: KmsLocal) -> None:
    node.start("write.object_committed:3")  # the row is in; its index entry is not
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    first, (cut_a, body_a) = put_until_it_dies(node, tenant, token, "a")
    node.crashed()
    assert len(first) == 2

    node.start("objects.staged:4")  # an index is staged under a temporary name only
    second, (cut_b, body_b) = put_until_it_dies(node, tenant, token, "b")
    node.crashed()
    assert second != {}
    assert node.staging_files() != []  # what the crash left behind

    node.start()
    acked = {**first, **second}
    with node.client(token) as c:
        lost = [oid for oid, body in acked.items() if body_of(c, tenant, oid) != body]
        # Both cut writes got as far as their row: they are complete, never partial.
        assert body_of(c, tenant, cut_a) == body_a
        assert body_of(c, tenant, cut_b) == body_b
        everything = {*acked, cut_a, cut_b}
        assert listed(c, tenant) == everything
        assert search_ids(c, tenant, "crash") == everything
    assert node.staging_files() == []  # swept at start
    assert lost == []
    record("crashes", "acknowledged_writes_checked", len(acked))
    record("crashes", "acknowledged_writes_lost", len(lost))
    record("crashes", "recovered", 2)
    node.stop()


# --- backups and restores --------------------------------------------------------------


def backups(c: httpx.Client, tenant: str) -> list[str]:
    r = c.get(f"/v1/tenants/{tenant}/backups")
    assert r.status_code == 200, r.text
    return [b["backup_id"] for b in r.json()["backups"]]


def restore(node: Node, tenant: str, backup_id: str) -> httpx.Response:
    with node.operator() as op:
        return op.post(f"/v1/tenants/{tenant}/backups/{backup_id}/restore")


def test_a_backup_cut_short_is_never_listed_and_a_published_one_restores(
        node: Node, kmslocal: KmsLocal, tmp_path: Path) -> None:
    # Each backup streams two objects (the index and a cached result): the third one
    # streamed is the second backup's first.
    node.start("backup.object_streamed:3")
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    with node.client(token) as c:
        assert c.put(f"/v1/tenants/{tenant}/connections/wh", json={
            "type": "duckdb", "config": {"path": warehouse(node, tenant)}}).status_code == 200
        query(c, tenant, "select * from sales")
        assert put(c, tenant, "a", {"title": "crash a"}).status_code == 200
        first = c.post(f"/v1/tenants/{tenant}/backups")
        assert first.status_code == 201, first.text
        assert put(c, tenant, "b", {"title": "crash b"}).status_code == 200
        dies(lambda: c.post(f"/v1/tenants/{tenant}/backups"))
    node.crashed()
    staged = [f for f in node.tenant_files(tenant) if f.startswith("backups/~")]
    assert staged != []  # the cut backup exists only under a staging name

    node.start("backup.published")
    with node.client(token) as c:
        assert backups(c, tenant) == [first.json()["backup_id"]]
        assert [f for f in node.tenant_files(tenant) if "~" in f] == []  # swept
        dies(lambda: c.post(f"/v1/tenants/{tenant}/backups"))
    node.crashed()

    node.start()
    with node.client(token) as c:
        ids = backups(c, tenant)
        assert len(ids) == 2
        assert ids[0] == first.json()["backup_id"]
        # The backup published just before the crash is whole: it restores.
        assert restore(node, tenant, ids[1]).status_code == 200
        assert listed(c, tenant) == {"a", "b"}
        assert restore(node, tenant, ids[0]).status_code == 200
        assert listed(c, tenant) == {"a"}
        assert search_ids(c, tenant, "crash") == {"a"}
    record("crashes", "recovered", 2)
    node.stop()


def test_a_restore_cut_short_is_finished_after_restart(
        node: Node, kmslocal: KmsLocal, tmp_path: Path) -> None:
    node.start("restore.rows_replaced")
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    with node.client(token) as c:
        assert c.put(f"/v1/tenants/{tenant}/connections/wh", json={
            "type": "duckdb", "config": {"path": warehouse(node, tenant)}}).status_code == 200
        kept = query(c, tenant, "select * from sales")
        assert put(c, tenant, "a", {"title": "crash a one"}).status_code == 200
        assert put(c, tenant, "b", {"title": "crash b"}).status_code == 200
        backup = c.post(f"/v1/tenants/{tenant}/backups")
        assert backup.status_code == 201, backup.text
    backup_id = backup.json()["backup_id"]
    at_backup = {"index/search", f"results/{kept}"}

    def change_everything() -> None:
        with node.client(token) as c:
            assert put(c, tenant, "a", {"title": "crash a two"}).status_code == 200
            assert put(c, tenant, "c", {"title": "crash c"}).status_code == 200
            assert c.delete(f"/v1/tenants/{tenant}/objects/{TABLES}/b").status_code == 204
            query(c, tenant, "select region from sales")

    def as_at_backup() -> None:
        with node.client(token) as c:
            assert listed(c, tenant) == {"a", "b"}
            assert body_of(c, tenant, "a") == {"title": "crash a one"}
            assert search_ids(c, tenant, "crash") == {"a", "b"}
            assert search_ids(c, tenant, "two") == set()
        live = {f for f in node.tenant_files(tenant) if not f.startswith("backups/")}
        assert live == at_backup

    change_everything()
    dies(lambda: restore(node, tenant, backup_id))
    node.crashed()
    node.start()  # finished before it serves
    assert node.control("select count(*) from cmek_restores") == [(0,)]
    as_at_backup()
    record("crashes", "recovered")
    change_everything()
    node.stop()

    node.start("restore.object_replaced:2")  # the rows and the backup's objects are in
    dies(lambda: restore(node, tenant, backup_id))
    node.crashed()
    # The backup is out of reach at the restart: the restore cannot be finished yet, and
    # the half-restored tenant is not served meanwhile.
    stored = node.data_dir / "objects" / "tenants" / tenant / "backups" / backup_id
    away = stored.rename(tmp_path / "away")
    node.start()
    with node.client(token) as c:
        refused = c.get(f"/v1/tenants/{tenant}/objects/{TABLES}/a")
        assert (refused.status_code, refused.json()["error"]) == (423, "tenant_store_closed")
    away.rename(stored)  # back: the job runner finishes the restore

    def served() -> bool:
        with node.client(token) as c:
            return c.get(f"/v1/tenants/{tenant}/objects/{TABLES}/a").status_code == 200

    wait_until(served)
    assert node.control("select count(*) from cmek_restores") == [(0,)]
    as_at_backup()
    record("crashes", "recovered")
    node.stop()


def test_the_restore_journal_tells_a_running_restore_from_an_abandoned_one(
        pg_url: str) -> None:
    """Several processes over PostgreSQL: a restore running in one is never resumed by
    another; one whose process died (its row lock gone with it) is."""
    mine, other = (RestoreJournal(create_engine(pg_url)) for _ in range(2))
    with mine.entry("t1", "b1", 1.0):
        assert mine.abandoned() == []
        assert other.abandoned() == []  # its owner is alive: the row lock says so
    assert other.abandoned() == []  # finished: gone
    with pytest.raises(RuntimeError), mine.entry("t2", "b2", 2.0):
        raise RuntimeError("cut short, as by a crash: the entry stays, its lock goes")
    assert other.abandoned() == [("t2", "b2")]
    assert mine.abandoned() == [("t2", "b2")]
    other.forget("t2")
    assert mine.abandoned() == []


# --- rewrap ----------------------------------------------------------------------------


def tenant_key(node: Node, tenant: str) -> str:
    with node.operator() as op:
        return str(op.get(f"/v1/tenants/{tenant}").json()["kms_key_arn"])


def rewrap(node: Node, tenant: str, key_arn: str) -> httpx.Response:
    with node.operator() as op:
        return op.post(f"/v1/tenants/{tenant}/key/rewrap", json={"kms_key_arn": key_arn})


def test_a_rewrap_cut_short_resumes_and_finishes(node: Node, kmslocal: KmsLocal) -> None:
    node.start("rewrap.key_rewrapped:2")
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    first_key = tenant_key(node, tenant)
    with node.client(token) as c:  # data keys for auth, logs, metadata, index, backups
        assert put(c, tenant, "a", {"title": "crash a"}).status_code == 200
        assert c.post(f"/v1/tenants/{tenant}/backups").status_code == 201
    total = node.control("select count(*) from cmek_data_keys where tenant_id = ?", tenant)
    assert total[0][0] >= 5
    second_key = customer_key(kmslocal)
    dies(lambda: rewrap(node, tenant, second_key))
    node.crashed()
    arns = node.control("select key_arn from cmek_data_keys where tenant_id = ?", tenant)
    assert {a for (a,) in arns} == {first_key, second_key}  # cut halfway

    node.start("rewrap.finished")  # nobody asks again: the platform finishes on its own
    wait_until(lambda: tenant_key(node, tenant) == second_key)
    assert "rewrap_resumed" in node.audit_kinds(tenant)
    third_key = customer_key(kmslocal)
    dies(lambda: rewrap(node, tenant, third_key))
    node.crashed()

    node.start()
    wait_until(lambda: tenant_key(node, tenant) == third_key)
    assert node.control("select distinct key_arn from cmek_data_keys where tenant_id = ?",
                        tenant) == [(third_key,)]
    assert node.control("select rewrap_to from cmek_tenants where tenant_id = ?",
                        tenant) == [(None,)]
    customer = kmslocal.client(CUSTOMER)
    customer.disable_key(KeyId=first_key)
    customer.disable_key(KeyId=second_key)
    with node.client() as c:  # past the data-key cache: every key is unwrapped anew
        c.post("/_dev/clock", json={"advance_seconds": 3600})
    with node.client(token) as c:
        assert body_of(c, tenant, "a") == {"title": "crash a"}
        assert search_ids(c, tenant, "crash") == {"a"}
        assert c.get(f"/v1/tenants/{tenant}/users").status_code == 200
        assert c.get(f"/v1/tenants/{tenant}/activity").status_code == 200
        (backup_id,) = backups(c, tenant)
    assert restore(node, tenant, backup_id).status_code == 200
    record("crashes", "recovered", 2)
    node.stop()


def test_a_rewrap_also_rewraps_data_keys_made_while_it_runs(
        tmp_path: Path, kmslocal: KmsLocal) -> None:
    """A key made mid-rewrap is wrapped under the old key: the rewrap must not finish
    until it is rewrapped too, or it dies with the old key."""
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    kms = KmsSettings(region=REGION, endpoint_url=kmslocal.url, access_key_id=PROVIDER[1],
                      secret_access_key=PROVIDER[2])
    keyring = cmek.connect(url, kms, integrity_key=INTEGRITY_KEY)
    old, new = customer_key(kmslocal), customer_key(kmslocal)
    keyring.register_tenant("rewrapped", old)
    sealed = {"metadata": keyring.seal("rewrapped", "metadata", "o", b"m"),
              "auth": keyring.seal("rewrapped", "auth", "o", b"a")}

    def meanwhile(done: int, total: int) -> None:
        if "logs" not in sealed:  # the first record of a category: a new data key
            sealed["logs"] = keyring.seal("rewrapped", "logs", "o", b"l")

    report = keyring.rewrap("rewrapped", new, progress=meanwhile)
    assert (report.rewrapped, report.total) == (3, 3)
    kmslocal.client(CUSTOMER).disable_key(KeyId=old)
    # nothing cached: every data key is unwrapped anew
    fresh = cmek.connect(url, kms, integrity_key=INTEGRITY_KEY)
    assert {c: fresh.open("rewrapped", c, "o", e) for c, e in sealed.items()} == {
        "metadata": b"m", "auth": b"a", "logs": b"l"}


# --- crypto-shred ----------------------------------------------------------------------


def key_state(node: Node, tenant: str) -> dict[str, Any]:
    with node.operator() as op:
        return dict(op.get(f"/v1/tenants/{tenant}/key").json())


def past_restore_window_and_check(node: Node, tenant: str) -> None:
    """Move the dev clock past the restore window (it starts afresh with each process, so
    each start moves it again), then ask for a check, which may die mid-shred."""
    with node.client() as c:
        assert c.post("/_dev/clock", json={"advance_seconds": 31 * DAY}).status_code == 200
    with contextlib.suppress(httpx.TransportError), node.operator() as op:
        op.post(f"/v1/tenants/{tenant}/key/check")


def test_a_shred_cut_short_is_finished_by_the_next_check(
        node: Node, kmslocal: KmsLocal) -> None:
    node.start("shred.data_keys_deleted")
    tenant = node.proc.new_tenant(kmslocal)
    token = node.proc.login(tenant)
    key = tenant_key(node, tenant)
    with node.client(token) as c:
        assert put(c, tenant, "a", {"title": "crash a"}).status_code == 200
        assert c.post(f"/v1/tenants/{tenant}/backups").status_code == 201
    kmslocal.client(CUSTOMER).disable_key(KeyId=key)
    with node.operator() as op:
        assert op.post(f"/v1/tenants/{tenant}/key/check").json()["state"] == "locked"
    past_restore_window_and_check(node, tenant)
    node.crashed()

    node.start("shred.objects_deleted")
    assert key_state(node, tenant)["state"] == "locked"  # never "destroyed" before the shred
    assert node.control("select count(*) from cmek_data_keys where tenant_id = ?",
                        tenant) == [(0,)]
    assert node.tenant_files(tenant) != []  # the crash came between the steps
    past_restore_window_and_check(node, tenant)
    node.crashed()

    node.start()
    assert key_state(node, tenant)["state"] == "locked"
    assert node.tenant_files(tenant) == []
    past_restore_window_and_check(node, tenant)
    view = wait_until(lambda: (v := key_state(node, tenant))["state"] == "destroyed" and v)
    assert view["reason"] == "restore_window_over"
    trail = node.audit(tenant)
    # Three runs started (two cut short); the one that finished attests nothing is left.
    assert [e.kind for e in trail].count("crypto_shred_started") == 3
    (attestation,) = [e.data for e in trail if e.kind == "crypto_shred_attestation"]
    assert attestation["data_keys_remaining"] == attestation["objects_remaining"] == 0
    assert node.control("select count(*) from cmek_data_keys where tenant_id = ?",
                        tenant) == [(0,)]
    with node.client(token) as c:
        assert c.get(f"/v1/tenants/{tenant}/objects/{TABLES}/a").status_code == 423
    record("crashes", "recovered", 2)
    node.stop()


# --- provisioning ----------------------------------------------------------------------


def test_a_provisioning_cut_short_is_finished_by_provisioning_again(
        node: Node, kmslocal: KmsLocal) -> None:
    node.start(crash_at="provision.registered")
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    body = {"tenant_id": tenant, "kms_key_arn": arn, "admin_email": "admin@example.com",
            "admin_password": "correct horse battery"}
    with node.operator() as op:
        dies(lambda: op.post("/v1/tenants", json=body))
    node.crashed()
    node.start()
    with node.operator() as op:
        other_key = op.post("/v1/tenants", json={**body, "kms_key_arn": customer_key(kmslocal)})
        assert (other_key.status_code, other_key.json()["error"]) == (409, "tenant_exists")
        again = op.post("/v1/tenants", json=body)
        assert again.status_code == 201, again.text
        assert op.post("/v1/tenants", json=body).status_code == 409  # now it is finished
    token = node.proc.login(tenant)
    with node.client(token) as c:
        assert put(c, tenant, "t1", {"title": "after"}).status_code == 200
    node.stop()
    record("crashes", "recovered")


# --- the crash points themselves -------------------------------------------------------


def test_crash_points_are_refused_outside_dev_and_must_be_known(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMEK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CMEK_HOST", "203.0.113.1")  # never bindable here: nothing serves
    try:
        for spec, args, expected in (
            ("backup.published", [], "crash points need --dev"),
            ("backup.publish", ["--dev"], "unknown crash point 'backup.publish'"),
            ("backup.published:0", ["--dev"], "whole number >= 1"),
        ):
            monkeypatch.setenv(crashpoints.ENV_VAR, spec)
            assert main(["serve", "--port", "0", *args]) == 2  # a bad setting: usage
            err = capsys.readouterr().err
            assert err.startswith("cmek: config_invalid: CMEK_DEV_CRASH_AT: "), err
            assert expected in err
            assert len(err.splitlines()) == 1
    finally:
        crashpoints.disarm()


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_sweep_takes_abandoned_staging_files_and_never_a_live_writers(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store: FileObjectStore | S3ObjectStore
    if kind == "file":
        staging = tmp_path / "root"
        store = FileObjectStore(staging)
        (staging / "t" / "backups").mkdir(parents=True)
        dead = staging / "t" / "backups" / "~dead.part"
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                            ("AWS_EC2_METADATA_DISABLED", "true")):
            monkeypatch.setenv(name, value)
        staging = tmp_path / "spool"
        staging.mkdir()
        store = S3ObjectStore(make_bucket(endpoint), endpoint_url=endpoint, spool_dir=staging)
        dead = staging / "cmek-spool-dead.part"
    dead.write_bytes(b"staged by a writer that died: nobody holds it")
    writing, release = threading.Event(), threading.Event()

    def slow(f: Any) -> None:
        f.write(b"part one ")
        f.flush()
        writing.set()
        assert release.wait(10)
        f.write(b"part two")

    writer = threading.Thread(target=lambda: store.put_stream("t/backups/b1", slow))
    writer.start()
    assert writing.wait(10)
    assert store.sweep() == 1  # the abandoned one; the live writer holds its own
    assert not dead.exists()
    assert len([p for p in staging.rglob("*") if p.is_file()]) == 1
    release.set()
    writer.join(10)
    assert store.get("t/backups/b1") == b"part one part two"
    assert [p for p in staging.rglob("*") if p.is_file() and p.name.endswith(".part")] == []
