"""Backups: a consistent snapshot of every store of a tenant, stream-sealed under the
tenant's ``backups`` data key into the object store, and restore from one.

Snapshot stream (before sealing), JSON lines:
    {"format": "cmek-backup", "version": 1, "tenant": ..., "created_at": ...}
    {"table": <name>, "row": {<column>: <value>, ...}}      bytes as {"b64": ...}
    {"object": <key below the tenant prefix>, "b64": ...}
    {"end": true, "rows": N, "objects": M}
Rows and objects are already sealed by their own categories; the backup adds a layer
bound to the backup's id, so a backup cannot be swapped for another one. A backup is
listed only once its object is complete (the object store publishes atomically; what a
crash leaves mid-write is a staging file, never listed, swept at the next start).
A restore is journaled in the control plane while it replaces the live stores, so one
that a crash cuts short is run again from the start (``RestoreJournal``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa

from cmek import crashpoints
from cmek.errors import CmekError, InvalidInput
from cmek.stores.objects import ObjectNotFound, ObjectStore
from cmek.stores.tenant import TenantStore
from cmek.stores.tenant_schema import metadata

FORMAT = "cmek-backup"
VERSION = 1


class BackupInvalid(CmekError):
    code = "backup_invalid"


journal_metadata = sa.MetaData()

# Restores in progress, in the control plane. A restore replaces everything with the
# backup's content, so one cut short by a crash is simply run again.
restores = sa.Table(
    "cmek_restores", journal_metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("backup_id", sa.String(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
)


class RestoreJournal:
    """Which tenants are being restored, and from which backup: so that a restore that a
    crash cut short (its rows replaced, its objects half replaced) is found and finished.

    Whether an entry's restore is still running: in this process, a set; in another one
    (PostgreSQL, several processes), the row lock its restore holds for its whole run,
    which the database drops when that process dies."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._running: set[str] = set()
        self._lock = threading.Lock()
        journal_metadata.create_all(engine)

    @contextlib.contextmanager
    def entry(self, tenant: str, backup_id: str, now: float) -> Iterator[None]:
        """Journal one restore for as long as it runs; the entry goes once it is done."""
        with self._lock:
            self._running.add(tenant)
        try:
            with self.engine.begin() as conn:
                conn.execute(restores.delete().where(restores.c.tenant_id == tenant))
                conn.execute(restores.insert().values(tenant_id=tenant, backup_id=backup_id,
                                                      started_at=now))
            with self._held(tenant):
                yield
            with self.engine.begin() as conn:
                conn.execute(restores.delete().where(restores.c.tenant_id == tenant,
                                                     restores.c.backup_id == backup_id))
        finally:
            with self._lock:
                self._running.discard(tenant)

    @contextlib.contextmanager
    def _held(self, tenant: str) -> Iterator[None]:
        if self.engine.dialect.name != "postgresql":
            yield  # SQLite: one process, whose own restores are in ``_running``
            return
        with self.engine.connect() as conn, conn.begin() as tx:
            conn.execute(sa.select(restores.c.tenant_id).where(
                restores.c.tenant_id == tenant).with_for_update())
            yield
            tx.rollback()

    def abandoned(self) -> list[tuple[str, str]]:
        """(tenant, backup id) of every restore that is journaled but not running."""
        query = sa.select(restores.c.tenant_id, restores.c.backup_id).order_by(
            restores.c.tenant_id)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            rows = [(str(r[0]), str(r[1])) for r in conn.execute(query)]
        with self._lock:
            return [r for r in rows if r[0] not in self._running]

    def forget(self, tenant: str) -> None:
        """A destroyed tenant has nothing left to restore."""
        with self.engine.begin() as conn:
            conn.execute(restores.delete().where(restores.c.tenant_id == tenant))


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    created_at: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "created_at": self.created_at, "bytes": self.bytes}


def _prefix(tenant: str) -> str:
    return f"tenants/{tenant}/"


def _backup_key(tenant: str, backup_id: str) -> str:
    return f"tenants/{tenant}/backups/{backup_id}"


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


class _Lines(io.RawIOBase):
    """A readable file over a generator of byte strings: the snapshot is produced as it
    is sealed, never written out in full."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        n = min(len(out), len(self._buffer))
        out[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _snapshot(store: TenantStore, objects: ObjectStore) -> Iterator[bytes]:
    tenant = store.tenant
    header = {"format": FORMAT, "version": VERSION, "tenant": tenant,
              "created_at": store.clock.now()}
    yield json.dumps(header).encode() + b"\n"
    rows = 0
    with store.engine.begin() as conn:  # one transaction: a consistent view of every table
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                record = {"table": table.name,
                          "row": {k: _encode(v) for k, v in row._mapping.items()}}
                rows += 1
                yield json.dumps(record).encode() + b"\n"
    count = 0
    for info in objects.list(_prefix(tenant)):
        relative = info.key[len(_prefix(tenant)):]
        if relative.startswith("backups/"):
            continue
        data = objects.get(info.key)
        count += 1
        yield json.dumps({"object": relative,
                          "b64": base64.b64encode(data).decode()}).encode() + b"\n"
        crashpoints.reached("backup.object_streamed")
    yield json.dumps({"end": True, "rows": rows, "objects": count}).encode() + b"\n"


def create_backup(store: TenantStore, objects: ObjectStore) -> BackupInfo:
    now = store.clock.now()
    backup_id = f"{int(now * 1000):015d}-{uuid.uuid4().hex[:8]}"
    key = _backup_key(store.tenant, backup_id)

    def write(out: IO[bytes]) -> None:
        src = io.BufferedReader(_Lines(_snapshot(store, objects)), buffer_size=1 << 20)
        store.keyring.seal_stream(store.tenant, "backups", f"backup/{backup_id}", src, out)

    size = objects.put_stream(key, write)
    return BackupInfo(backup_id, now, size)


def list_backups(tenant: str, objects: ObjectStore) -> list[BackupInfo]:
    out = []
    for info in objects.list(f"tenants/{tenant}/backups/"):
        backup_id = info.key.rsplit("/", 1)[1]
        millis, _, _ = backup_id.partition("-")
        out.append(BackupInfo(backup_id, int(millis) / 1000 if millis.isdigit() else 0.0,
                              info.size))
    return sorted(out, key=lambda b: b.backup_id)


def restore_backup(store: TenantStore, objects: ObjectStore, backup_id: str,
                   journal: RestoreJournal) -> dict[str, Any]:
    """Replace every live store of the tenant with the backup's content. The backup is
    opened and checked whole before anything live changes; the ``journal`` lets a restore
    that a crash cuts short after that be found and run again."""
    if not backup_id.replace("-", "").isalnum() or len(backup_id) > 64:
        raise InvalidInput("invalid backup id")
    key = _backup_key(store.tenant, backup_id)
    with tempfile.TemporaryFile() as plain:  # holds only sealed rows and objects
        try:
            src = objects.open(key)
        except ObjectNotFound:
            raise ObjectNotFound(f"no backup {backup_id}") from None
        with src:
            store.keyring.open_stream(store.tenant, "backups", f"backup/{backup_id}", src,
                                      plain)
        plain.seek(0)
        header, rows, new_objects, end = _read(store, plain)
        with journal.entry(store.tenant, backup_id, store.clock.now()):
            return _apply(store, objects, header, rows, new_objects, end)


def _read(store: TenantStore, plain: IO[bytes]) -> tuple[
        dict[str, Any], dict[str, list[dict[str, Any]]], list[tuple[str, bytes]],
        dict[str, Any]]:
    header = json.loads(plain.readline())
    if header.get("format") != FORMAT or header.get("tenant") != store.tenant:
        raise BackupInvalid("not a backup of this tenant")
    tables = {t.name: t for t in metadata.sorted_tables}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
    new_objects: list[tuple[str, bytes]] = []
    end: dict[str, Any] | None = None
    for line in plain:
        record = json.loads(line)
        if "table" in record:
            rows[record["table"]].append({k: _decode(v) for k, v in record["row"].items()})
        elif "object" in record:
            new_objects.append((record["object"], base64.b64decode(record["b64"])))
        elif record.get("end"):
            end = record
    if end is None or end["rows"] != sum(map(len, rows.values())):
        raise BackupInvalid("the backup is incomplete")
    return header, rows, new_objects, end


def _apply(store: TenantStore, objects: ObjectStore, header: dict[str, Any],
           rows: dict[str, list[dict[str, Any]]], new_objects: list[tuple[str, bytes]],
           end: dict[str, Any]) -> dict[str, Any]:
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        for table in metadata.sorted_tables:
            if rows[table.name]:
                conn.execute(table.insert(), rows[table.name])
    crashpoints.reached("restore.rows_replaced")
    prefix = _prefix(store.tenant)
    for relative, data in new_objects:  # overwrite first, then drop the rest
        objects.put(prefix + relative, data)
        crashpoints.reached("restore.object_replaced")
    keep = {prefix + relative for relative, _ in new_objects}
    for info in objects.list(prefix):
        if info.key not in keep and not info.key[len(prefix):].startswith("backups/"):
            objects.delete(info.key)
            crashpoints.reached("restore.object_replaced")
    return {"restored_from": header["created_at"], "rows": end["rows"],
            "objects": end["objects"]}
