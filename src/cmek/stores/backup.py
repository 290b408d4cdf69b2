"""Backups: a consistent snapshot of every store of a tenant, stream-sealed under the
tenant's ``backups`` data key into the object store, and restore from one.

Snapshot stream (before sealing), JSON lines:
    {"format": "cmek-backup", "version": 1, "tenant": ..., "created_at": ...}
    {"table": <name>, "row": {<column>: <value>, ...}}      bytes as {"b64": ...}
    {"object": <key below the tenant prefix>, "b64": ...}
    {"end": true, "rows": N, "objects": M}
Rows and objects are already sealed by their own categories; the backup adds a layer
bound to the backup's id, so a backup cannot be swapped for another one. A backup is
listed only once its object is complete (the object store publishes atomically).
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa

from cmek.errors import CmekError, InvalidInput
from cmek.stores.objects import ObjectNotFound, ObjectStore
from cmek.stores.tenant import TenantStore, metadata

FORMAT = "cmek-backup"
VERSION = 1


class BackupInvalid(CmekError):
    code = "backup_invalid"


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


def restore_backup(store: TenantStore, objects: ObjectStore, backup_id: str) -> dict[str, Any]:
    """Replace every live store of the tenant with the backup's content."""
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
        return _apply(store, objects, plain)


def _apply(store: TenantStore, objects: ObjectStore, plain: IO[bytes]) -> dict[str, Any]:
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
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        for table in metadata.sorted_tables:
            if rows[table.name]:
                conn.execute(table.insert(), rows[table.name])
    prefix = _prefix(store.tenant)
    for info in objects.list(prefix):
        if not info.key[len(prefix):].startswith("backups/"):
            objects.delete(info.key)
    for relative, data in new_objects:
        objects.put(prefix + relative, data)
    return {"restored_from": header["created_at"], "rows": end["rows"],
            "objects": end["objects"]}
