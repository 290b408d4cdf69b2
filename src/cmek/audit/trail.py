"""A per-tenant, hash-chained, append-only audit trail of key use and key events.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON,
so editing, reordering or removing an entry breaks the chain at that point. The newest
entries have no successor to betray their removal, so ``audit_heads`` records each
tenant's last seq and hash and ``verify`` compares it with the chain's end. Someone
able to rewrite both tables consistently can still truncate or rewrite history: the
exported JSON lines, held by the customer outside our database, are the external anchor
(an export's last hash must stay a prefix of every later export's chain).

Customers recompute hashes with ``entry_hash`` over the exported fields; the format is
plain SHA-256 over canonical JSON so that no cmek code is needed to check it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cmek.clock import Clock
from cmek.errors import CmekError, InvalidInput

_Row = sa.Row[*tuple[Any, ...]]  # a row of any shape

GENESIS_HASH = "0" * 64
MAX_KIND_LENGTH = 64
MAX_TENANT_LENGTH = 255
MAX_DEPTH = 32
MAX_PROBLEMS = 100

metadata = sa.MetaData()

audit_entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("tenant", sa.String(MAX_TENANT_LENGTH), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("kind", sa.String(MAX_KIND_LENGTH), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("tenant", sa.String(MAX_TENANT_LENGTH), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


class AuditValueNotAllowed(InvalidInput):
    """Audit data must be JSON-native; bytes in particular are refused so that key
    material can never reach the trail by accident."""

    code = "audit_value_not_allowed"


class AuditKindInvalid(InvalidInput):
    code = "audit_kind_invalid"


class AuditEntryCorrupt(CmekError):
    """A stored entry cannot even be parsed; ``verify`` reports it instead of raising."""

    code = "audit_entry_corrupt"


def canonical_json(value: Any) -> str:
    """The one serialization that is hashed, stored and exported."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def entry_hash(prev_hash: str, tenant: str, seq: int, ts: float, kind: str,
               data: Mapping[str, Any]) -> str:
    body = canonical_json({"tenant": tenant, "seq": seq, "ts": ts, "kind": kind,
                           "data": data})
    return hashlib.sha256((prev_hash + "\n" + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    tenant: str
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "seq": self.seq, "ts": self.ts, "kind": self.kind,
                "data": self.data, "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class VerifyResult:
    tenant: str
    ok: bool
    entries: int
    problems: list[str]


def _normalize(value: Any, path: str, depth: int) -> Any:
    """A plain JSON copy of ``value``; refuses anything else without echoing its content."""
    if depth > MAX_DEPTH:
        raise AuditValueNotAllowed(f"audit data nested deeper than {MAX_DEPTH} levels at {path}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditValueNotAllowed(f"audit data has a non-finite number at {path}")
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise AuditValueNotAllowed(f"audit data may not hold bytes (at {path})")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditValueNotAllowed(
                    f"audit data keys must be strings, got {type(key).__name__} at {path}")
            out[str(key)] = _normalize(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise AuditValueNotAllowed(
        f"audit data may hold only JSON values, got {type(value).__name__} at {path}")


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_LENGTH:
        raise AuditKindInvalid(f"audit kind must be a non-empty string of at most "
                               f"{MAX_KIND_LENGTH} characters")
    return kind


def _check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT_LENGTH:
        raise InvalidInput(f"tenant must be a non-empty string of at most "
                           f"{MAX_TENANT_LENGTH} characters")
    return tenant


def _entry_from_row(row: _Row) -> AuditEntry:
    try:
        data = json.loads(row.data)
    except ValueError:
        raise AuditEntryCorrupt(f"entry {row.seq}: data is not valid JSON") from None
    if not isinstance(data, dict):
        raise AuditEntryCorrupt(f"entry {row.seq}: data is not a JSON object")
    return AuditEntry(tenant=row.tenant, seq=int(row.seq), ts=float(row.ts), kind=row.kind,
                      data=data, prev_hash=row.prev_hash, hash=row.hash)


class _Problems:
    """Collects verify's findings, keeping the report to ``MAX_PROBLEMS`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(line)

    def report(self) -> list[str]:
        if self.count <= MAX_PROBLEMS:
            return list(self.lines)
        shown = self.lines[: MAX_PROBLEMS - 1]
        return [*shown, f"... and {self.count - len(shown)} more problems"]


def _missing(first: int, last: int, why: str) -> str:
    if first == last:
        return f"entry {first}: missing ({why})"
    return f"entries {first}..{last}: missing ({why})"


class AuditTrail:
    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        metadata.create_all(engine)

    def append(self, tenant: str, kind: str, data: Mapping[str, Any]) -> AuditEntry:
        tenant = _check_tenant(tenant)
        kind = _check_kind(kind)
        if not isinstance(data, Mapping):
            raise AuditValueNotAllowed("audit data must be a mapping")
        text = canonical_json(_normalize(data, "data", 0))
        plain: dict[str, Any] = json.loads(text)  # exactly what entries() will return
        with self._engine.begin() as conn:
            head = self._lock_head(conn, tenant)
            seq = int(head.seq) + 1
            prev_hash = str(head.hash)
            ts = float(self._clock.now())  # read under the lock so ts follows seq
            digest = entry_hash(prev_hash, tenant, seq, ts, kind, plain)
            conn.execute(audit_entries.insert().values(
                tenant=tenant, seq=seq, ts=ts, kind=kind, data=text, prev_hash=prev_hash,
                hash=digest))
            conn.execute(audit_heads.update().where(audit_heads.c.tenant == tenant)
                         .values(seq=seq, hash=digest))
        return AuditEntry(tenant, seq, ts, kind, plain, prev_hash, digest)

    def _lock_head(self, conn: sa.Connection, tenant: str) -> _Row:
        """The tenant's head row, locked; created first (racing safely) for a new tenant."""
        select = (sa.select(audit_heads.c.seq, audit_heads.c.hash)
                  .where(audit_heads.c.tenant == tenant).with_for_update())
        head = conn.execute(select).one_or_none()
        if head is not None:
            return head
        values = {"tenant": tenant, "seq": 0, "hash": GENESIS_HASH}
        dialect = conn.dialect.name
        if dialect == "postgresql":
            conn.execute(postgresql.insert(audit_heads).values(**values)
                         .on_conflict_do_nothing(index_elements=["tenant"]))
        elif dialect == "sqlite":
            conn.execute(sqlite.insert(audit_heads).values(**values)
                         .on_conflict_do_nothing(index_elements=["tenant"]))
        else:  # no portable upsert: a racing first append fails instead of forking
            conn.execute(audit_heads.insert().values(**values))
        return conn.execute(select).one()

    def entries(self, tenant: str, *, kinds: Collection[str] | None = None,
                since: float | None = None, last: int | None = None) -> list[AuditEntry]:
        """Oldest first; with ``last``, only the newest ``last`` of them."""
        with self._engine.connect() as conn:
            rows = [_entry_from_row(row) for row in self._rows(conn, tenant, kinds, since,
                                                                newest_first=last is not None,
                                                                limit=last)]
        return rows[::-1] if last is not None else rows

    def _rows(self, conn: sa.Connection, tenant: str, kinds: Collection[str] | None = None,
              since: float | None = None, *, newest_first: bool = False,
              limit: int | None = None) -> Iterator[_Row]:
        query = sa.select(audit_entries).where(audit_entries.c.tenant == tenant)
        if kinds is not None:
            wanted = [kinds] if isinstance(kinds, str) else list(kinds)
            query = query.where(audit_entries.c.kind.in_(wanted))
        if since is not None:
            query = query.where(audit_entries.c.ts >= since)
        order = audit_entries.c.seq.desc() if newest_first else audit_entries.c.seq
        result = conn.execution_options(yield_per=500).execute(
            query.order_by(order).limit(limit))
        yield from result

    @contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        """One consistent view of head and entries even while appends commit."""
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            # SQLite: every transaction is BEGIN IMMEDIATE (cmek.db), already serialized.
            with conn.begin():
                yield conn

    def verify(self, tenant: str) -> VerifyResult:
        problems = _Problems()
        count = 0
        expected = 1
        prev_hash = GENESIS_HASH
        last_seq = 0
        with self._snapshot() as conn:
            head = conn.execute(sa.select(audit_heads.c.seq, audit_heads.c.hash)
                                .where(audit_heads.c.tenant == tenant)).one_or_none()
            for row in self._rows(conn, tenant):
                count += 1
                seq = int(row.seq)
                if seq > expected:
                    problems.add(_missing(expected, seq - 1, "gap in seq"))
                elif seq < expected:  # only seq < 1 can get here: the rows come ordered
                    problems.add(f"entry {seq}: seq out of range")
                if row.prev_hash != prev_hash:
                    problems.add(f"entry {seq}: prev_hash does not link to the entry before it")
                try:
                    entry = _entry_from_row(row)
                except AuditEntryCorrupt as exc:
                    problems.add(exc.message)
                else:
                    actual = entry_hash(entry.prev_hash, entry.tenant, entry.seq, entry.ts,
                                        entry.kind, entry.data)
                    if actual != row.hash:
                        problems.add(f"entry {seq}: hash does not match its content")
                prev_hash = row.hash
                last_seq = seq
                expected = max(expected, seq + 1)
        self._check_head(head, count, last_seq, prev_hash, problems)
        report = problems.report()
        return VerifyResult(tenant=tenant, ok=not report, entries=count, problems=report)

    @staticmethod
    def _check_head(head: _Row | None, count: int, last_seq: int, last_hash: str,
                    problems: _Problems) -> None:
        if head is None:
            if count:
                problems.add(f"entry {last_seq}: newest entry has no head record")
            return
        head_seq = int(head.seq)
        if head_seq > last_seq:
            problems.add(_missing(last_seq + 1, head_seq,
                                  f"head records seq {head_seq}, newest entry is {last_seq}"))
        elif head_seq < last_seq:
            problems.add(f"entry {head_seq + 1}: beyond the head (head records seq {head_seq})")
        elif head.hash != last_hash:
            problems.add(f"entry {last_seq}: hash does not match the head's hash")

    def export(self, tenant: str, out: TextIO) -> int:
        count = 0
        with self._engine.connect() as conn:
            for row in self._rows(conn, tenant):
                out.write(canonical_json(_entry_from_row(row).to_json()) + "\n")
                count += 1
        return count

    def tenants(self) -> list[str]:
        query = sa.union(sa.select(audit_heads.c.tenant), sa.select(audit_entries.c.tenant))
        with self._engine.connect() as conn:
            return sorted(conn.execute(query).scalars())
