"""The audit trail: round trips, the hash chain, tamper detection, the bytes guard, and
concurrent appenders, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cmek.audit import (
    GENESIS_HASH,
    AuditEntryCorrupt,
    AuditKindInvalid,
    AuditTrail,
    AuditValueNotAllowed,
    entry_hash,
)
from cmek.audit.trail import audit_entries
from cmek.clock import ManualClock
from cmek.db import create_engine

TENANT = "acme"
OTHER = "globex"
KINDS = ("kms.Encrypt", "kms.Decrypt", "key.rotated")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def trail(engine: sa.Engine, clock: ManualClock) -> AuditTrail:
    return AuditTrail(engine, clock)


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[sa.Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_trail(sqlite_engine: sa.Engine, clock: ManualClock) -> AuditTrail:
    """For checks that do not depend on the backend."""
    return AuditTrail(sqlite_engine, clock)


def fill(trail: AuditTrail, clock: ManualClock, tenant: str, n: int) -> None:
    for i in range(n):
        trail.append(tenant, KINDS[i % len(KINDS)], {"i": i, "key": f"k-{i}"})
        clock.advance(1.5)


def run_sql(engine: sa.Engine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)


# -- round trip and chain ---------------------------------------------------------------


def test_round_trip(trail: AuditTrail, clock: ManualClock) -> None:
    data = {"key_arn": "arn:aws:kms:us-west-2:222222222222:key/x", "bytes": 4096,
            "ratio": 0.25, "ok": True, "none": None, "tags": ["a", {"b": "ü"}],
            "nested": {"tuple": (1, 2)}}
    made = trail.append(TENANT, "kms.GenerateDataKey", data)
    assert made.seq == 1
    assert made.ts == clock.now()
    assert made.data["nested"]["tuple"] == [1, 2]  # stored as JSON, returned as JSON
    assert trail.entries(TENANT) == [made]
    assert trail.entries(OTHER) == []


def test_chain_hashes(trail: AuditTrail, clock: ManualClock) -> None:
    fill(trail, clock, TENANT, 5)
    got = trail.entries(TENANT)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert got[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(got):
        assert after.prev_hash == before.hash
    first = got[0]
    body = json.dumps({"tenant": TENANT, "seq": 1, "ts": first.ts, "kind": first.kind,
                       "data": first.data}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    assert first.hash == hashlib.sha256(f"{'0' * 64}\n{body}".encode()).hexdigest()
    assert all(e.hash == entry_hash(e.prev_hash, e.tenant, e.seq, e.ts, e.kind, e.data)
               for e in got)


def test_verify_ok(trail: AuditTrail, clock: ManualClock) -> None:
    empty = trail.verify(TENANT)
    assert (empty.ok, empty.entries, empty.problems) == (True, 0, [])
    fill(trail, clock, TENANT, 6)
    fill(trail, clock, OTHER, 2)
    result = trail.verify(TENANT)
    assert (result.tenant, result.ok, result.entries, result.problems) == (TENANT, True, 6, [])
    assert trail.tenants() == [TENANT, OTHER]


# -- tampering directly with SQL --------------------------------------------------------


def swap_rows(engine: sa.Engine, a: int, b: int) -> None:
    """Reorders history: rows a and b trade everything except their seq."""
    cols = ("ts", "kind", "data", "prev_hash", "hash")
    t = audit_entries
    with engine.begin() as conn:
        rows = {r.seq: r for r in conn.execute(
            sa.select(t).where(t.c.tenant == TENANT, t.c.seq.in_([a, b])))}
        for mine, theirs in ((a, b), (b, a)):
            conn.execute(t.update().where(t.c.tenant == TENANT, t.c.seq == mine)
                         .values({c: getattr(rows[theirs], c) for c in cols}))


def rewrite_with_hash(engine: sa.Engine, seq: int) -> None:
    """A careful forger recomputes the edited entry's hash; its successor still breaks."""
    t = audit_entries
    with engine.begin() as conn:
        row = conn.execute(sa.select(t).where(t.c.tenant == TENANT, t.c.seq == seq)).one()
        data = {"i": 999}
        digest = entry_hash(row.prev_hash, TENANT, seq, row.ts, row.kind, data)
        conn.execute(t.update().where(t.c.tenant == TENANT, t.c.seq == seq)
                     .values(data=json.dumps(data), hash=digest))


WHERE = "WHERE tenant = 'acme' AND seq = "
TAMPERS: dict[str, tuple[Callable[[sa.Engine], None], list[str]]] = {
    "edit_data": (
        lambda e: run_sql(e, "UPDATE audit_entries SET data = :d " + WHERE + "3", d='{"i":99}'),
        ["entry 3: hash does not match its content"]),
    "edit_ts": (
        lambda e: run_sql(e, "UPDATE audit_entries SET ts = ts + 1 " + WHERE + "3"),
        ["entry 3: hash does not match its content"]),
    "edit_kind": (
        lambda e: run_sql(e, "UPDATE audit_entries SET kind = 'kms.Sign' " + WHERE + "2"),
        ["entry 2: hash does not match its content"]),
    "delete_middle": (
        lambda e: run_sql(e, "DELETE FROM audit_entries " + WHERE + "3"),
        ["entry 3: missing (gap in seq)", "entry 4: prev_hash does not link"]),
    "delete_newest": (
        lambda e: run_sql(e, "DELETE FROM audit_entries " + WHERE + "5"),
        ["entry 5: missing (head records seq 5, newest entry is 4)"]),
    "delete_two_newest": (
        lambda e: run_sql(e, "DELETE FROM audit_entries WHERE tenant = 'acme' AND seq > 3"),
        ["entries 4..5: missing"]),
    "swap_contents": (
        lambda e: swap_rows(e, 2, 4),
        ["entry 2: hash does not match its content", "entry 4: hash does not match"]),
    "change_prev_hash": (
        lambda e: run_sql(e, "UPDATE audit_entries SET prev_hash = :h " + WHERE + "3",
                          h="f" * 64),
        ["entry 3: prev_hash does not link", "entry 3: hash does not match its content"]),
    "rewrite_with_hash": (
        lambda e: rewrite_with_hash(e, 3), ["entry 4: prev_hash does not link"]),
    "corrupt_json": (
        lambda e: run_sql(e, "UPDATE audit_entries SET data = 'not json' " + WHERE + "3"),
        ["entry 3: data is not valid JSON"]),
    "delete_head": (
        lambda e: run_sql(e, "DELETE FROM audit_heads WHERE tenant = 'acme'"),
        ["entry 5: newest entry has no head record"]),
    "move_head_back": (
        lambda e: run_sql(e, "UPDATE audit_heads SET seq = 4 WHERE tenant = 'acme'"),
        ["entry 5: beyond the head"]),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampering_is_detected(case: str, trail: AuditTrail, engine: sa.Engine,
                               clock: ManualClock) -> None:
    fill(trail, clock, TENANT, 5)
    fill(trail, clock, OTHER, 5)
    tamper, expected = TAMPERS[case]
    tamper(engine)
    result = trail.verify(TENANT)
    assert not result.ok
    for needle in expected:
        assert any(line.startswith(needle) for line in result.problems), result.problems
    assert trail.verify(OTHER).ok  # one tenant's tampering leaves the others intact
    assert trail.verify(OTHER).entries == 5


def test_corrupt_entry_raises_on_read(sqlite_trail: AuditTrail, sqlite_engine: sa.Engine,
                                      clock: ManualClock) -> None:
    fill(sqlite_trail, clock, TENANT, 2)
    run_sql(sqlite_engine, "UPDATE audit_entries SET data = '[1]' WHERE seq = 2")
    with pytest.raises(AuditEntryCorrupt) as info:
        sqlite_trail.entries(TENANT)
    assert info.value.code == "audit_entry_corrupt"


def test_problem_report_is_capped(sqlite_trail: AuditTrail, sqlite_engine: sa.Engine,
                                  clock: ManualClock) -> None:
    fill(sqlite_trail, clock, TENANT, 120)
    run_sql(sqlite_engine, "UPDATE audit_entries SET data = '{}'")
    result = sqlite_trail.verify(TENANT)
    assert len(result.problems) == 100
    assert result.problems[0] == "entry 1: hash does not match its content"
    assert result.problems[-1] == "... and 21 more problems"


def test_appends_continue_the_chain_after_reopening(engine: sa.Engine,
                                                    clock: ManualClock) -> None:
    fill(AuditTrail(engine, clock), clock, TENANT, 3)
    again = AuditTrail(engine, clock)  # create_all is idempotent
    assert again.append(TENANT, "key.rotated", {}).seq == 4
    assert again.verify(TENANT).ok


# -- export -----------------------------------------------------------------------------


def test_export_is_json_lines_equal_to_entries(trail: AuditTrail, clock: ManualClock) -> None:
    fill(trail, clock, TENANT, 4)
    trail.append(TENANT, "key.disabled", {"reason": "customer revoked ✓", "x": 1.1})
    fill(trail, clock, OTHER, 2)
    out = io.StringIO()
    assert trail.export(TENANT, out) == 5
    lines = out.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert parsed == [e.to_json() for e in trail.entries(TENANT)]
    # The customer can check the chain from the export alone.
    prev = GENESIS_HASH
    for item in parsed:
        body = json.dumps({k: item[k] for k in ("tenant", "seq", "ts", "kind", "data")},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert item["prev_hash"] == prev
        prev = hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()
        assert item["hash"] == prev


# -- the guard against bytes and other non-JSON values ----------------------------------


@pytest.mark.parametrize("data", [
    {"key": b"\x00secret-key-bytes"},
    {"key": bytearray(b"secret-key-bytes")},
    {"key": memoryview(b"secret-key-bytes")},
    {"outer": {"list": [1, {"deep": b"secret-key-bytes"}]}},
    {"tuple": ("ok", b"secret-key-bytes")},
    {"obj": object()},
    {"set": {1, 2}},
    {"nan": float("nan")},
    {"inf": [float("inf")]},
    {"keys": {b"secret-key-bytes": 1}},
    {"keys": {1: "int key"}},
])
def test_refuses_non_json_values(sqlite_trail: AuditTrail, data: dict[str, Any]) -> None:
    with pytest.raises(AuditValueNotAllowed) as info:
        sqlite_trail.append(TENANT, "kms.Decrypt", data)
    assert info.value.code == "audit_value_not_allowed"
    assert "secret" not in str(info.value)  # the refusal never echoes the value
    assert sqlite_trail.entries(TENANT) == []
    assert sqlite_trail.tenants() == []


def test_refuses_bytes_as_the_whole_data(sqlite_trail: AuditTrail) -> None:
    with pytest.raises(AuditValueNotAllowed):
        sqlite_trail.append(TENANT, "kms.Decrypt", b"secret")  # type: ignore[arg-type]


def test_refuses_too_deep_data(sqlite_trail: AuditTrail) -> None:
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(AuditValueNotAllowed):
        sqlite_trail.append(TENANT, "x", deep)


@pytest.mark.parametrize("kind", ["", "k" * 65, 7])
def test_refuses_bad_kind(sqlite_trail: AuditTrail, kind: Any) -> None:
    with pytest.raises(AuditKindInvalid) as info:
        sqlite_trail.append(TENANT, kind, {})
    assert info.value.code == "audit_kind_invalid"


def test_accepts_kind_of_64_chars(sqlite_trail: AuditTrail) -> None:
    assert sqlite_trail.append(TENANT, "k" * 64, {}).kind == "k" * 64


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_appenders(trail: AuditTrail, clock: ManualClock) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(50):
                trail.append(TENANT, "kms.Encrypt", {"worker": n, "i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    verdicts: list[bool] = []
    done = threading.Event()

    def verifier() -> None:  # verify reads one snapshot: a head and chain that agree
        try:
            while not done.wait(0.02):  # paced: on SQLite a verify holds the write lock
                verdicts.append(trail.verify(TENANT).ok)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    checker = threading.Thread(target=verifier)
    checker.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    checker.join()
    assert errors == []
    assert verdicts
    assert all(verdicts)
    got = trail.entries(TENANT)
    assert [e.seq for e in got] == list(range(1, 201))
    assert sorted((e.data["worker"], e.data["i"]) for e in got) == [
        (n, i) for n in range(4) for i in range(50)]
    result = trail.verify(TENANT)
    assert (result.ok, result.entries, result.problems) == (True, 200, [])


# -- filters ----------------------------------------------------------------------------


def test_entries_filters(trail: AuditTrail, clock: ManualClock) -> None:
    fill(trail, clock, TENANT, 9)  # ts = start + 1.5 * i, kinds cycle
    start = trail.entries(TENANT)[0].ts
    decrypts = trail.entries(TENANT, kinds={"kms.Decrypt"})
    assert [e.seq for e in decrypts] == [2, 5, 8]
    assert [e.seq for e in trail.entries(TENANT, kinds="kms.Decrypt")] == [2, 5, 8]
    assert trail.entries(TENANT, kinds=[]) == []
    assert [e.seq for e in trail.entries(TENANT, since=start + 6.0)] == [5, 6, 7, 8, 9]
    both = trail.entries(TENANT, kinds=["kms.Encrypt", "key.rotated"], since=start + 3.0)
    assert [e.seq for e in both] == [3, 4, 6, 7, 9]
    assert trail.entries(OTHER, kinds=["kms.Decrypt"]) == []
    # the newest few, still oldest first: what a console shows without reading everything
    assert [e.seq for e in trail.entries(TENANT, kinds={"kms.Decrypt"}, last=2)] == [5, 8]
    assert [e.seq for e in trail.entries(TENANT, last=1)] == [9]
    assert [e.seq for e in trail.entries(TENANT, last=100)] == list(range(1, 10))
