"""One tenant's stores, each payload sealed under the tenant's data keys.

A tenant is an isolated environment: its own database (a SQLite file, or a PostgreSQL
schema with its own role), its own object prefix and its own search index. Only
identifiers needed for routing (object ids, connection names, user ids, schedule ids,
timestamps, run status and error codes) are stored in clear; docs/coverage.md lists them.
Everything else goes through the keyring, bound to (tenant, category, object id) and,
for rows that change (objects, users, connections, settings), to the row's version: an
older ciphertext put back into a row that has moved on does not open.

The store can be closed and reopened: the lifecycle engine closes it when the tenant's
key goes away, and every call on a closed store raises ``StoreClosed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cmek.clock import Clock
from cmek.errors import CmekError, InvalidInput
from cmek.keyring import Keyring
from cmek.stores.tenant_schema import (
    activity,
    connections,
    metadata,
    objects,
    runs,
    schedules,
    secrets_table,
    settings_table,
    users,
)

OBJECT_KINDS = ("tables", "models", "liveboards", "answers")


class StoreClosed(CmekError):
    code = "tenant_store_closed"


class NotFound(CmekError):
    code = "not_found"


class Conflict(CmekError):
    code = "conflict"


def _id(value: str, what: str, max_len: int = 128) -> str:
    if (not isinstance(value, str) or not 1 <= len(value) <= max_len
            or not all(c.isalnum() or c in "-_." for c in value) or value in (".", "..")):
        raise InvalidInput(f"{what} must be 1-{max_len} characters of letters, digits, '-', "
                           "'_' and '.'")
    return value


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class StoredObject:
    kind: str
    object_id: str
    version: int
    updated_at: float
    body: dict[str, Any]


class TenantStore:
    def __init__(self, tenant: str, keyring: Keyring, engine: sa.Engine, clock: Clock) -> None:
        self.tenant = tenant
        self.keyring = keyring
        self.engine = engine
        self.clock = clock
        self._closed = False
        self._lock = threading.Lock()
        self._lookup_key: bytes | None = None
        metadata.create_all(engine)

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving and drop every connection and cached secret of the tenant."""
        with self._lock:
            self._closed = True
            self._lookup_key = None
        self.engine.dispose()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        if self._closed:
            raise StoreClosed(f"the stores of tenant {self.tenant} are closed")
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        if self._closed:
            raise StoreClosed(f"the stores of tenant {self.tenant} are closed")
        with self.engine.connect() as conn:
            yield conn

    def _seal(self, category: str, object_id: str, value: Any) -> bytes:
        return self.keyring.seal(self.tenant, category, object_id, _json(value))

    def _open(self, category: str, object_id: str, sealed: bytes) -> Any:
        return json.loads(self.keyring.open(self.tenant, category, object_id, bytes(sealed)))

    # --- metadata objects -----------------------------------------------------------------
    def put_object(self, kind: str, object_id: str, body: dict[str, Any]) -> StoredObject:
        if kind not in OBJECT_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(OBJECT_KINDS)}")
        _id(object_id, "object id")
        now = self.clock.now()
        with self._tx() as conn:
            current = conn.execute(sa.select(objects.c.version).where(
                objects.c.kind == kind, objects.c.object_id == object_id)).scalar()
            version = (current or 0) + 1
            sealed = self._seal("metadata", f"{kind}/{object_id}/{version}", body)
            values = {"version": version, "updated_at": now, "sealed": sealed}
            if current is None:
                conn.execute(objects.insert().values(kind=kind, object_id=object_id, **values))
            else:
                conn.execute(objects.update().where(
                    objects.c.kind == kind, objects.c.object_id == object_id).values(**values))
        return StoredObject(kind, object_id, version, now, body)

    def get_object(self, kind: str, object_id: str) -> StoredObject:
        with self._read() as conn:
            row = conn.execute(sa.select(objects).where(
                objects.c.kind == kind, objects.c.object_id == object_id)).first()
        if row is None:
            raise NotFound(f"no {kind[:32]} object {object_id[:128]!r}")
        return self._object(row)

    def _object(self, row: sa.Row[Any]) -> StoredObject:
        m = row._mapping
        body = self._open("metadata", f"{m['kind']}/{m['object_id']}/{m['version']}",
                          m["sealed"])
        return StoredObject(m["kind"], m["object_id"], m["version"], m["updated_at"], body)

    def list_objects(self, kind: str | None = None) -> list[StoredObject]:
        query = sa.select(objects).order_by(objects.c.kind, objects.c.object_id)
        if kind is not None:
            query = query.where(objects.c.kind == kind)
        with self._read() as conn:
            rows = list(conn.execute(query))
        return [self._object(r) for r in rows]

    def object_versions(self) -> dict[str, int]:
        """``kind/id`` -> version of every object, opening nothing: what the search index
        is checked against when it is loaded."""
        with self._read() as conn:
            return {f"{r[0]}/{r[1]}": int(r[2]) for r in conn.execute(
                sa.select(objects.c.kind, objects.c.object_id, objects.c.version))}

    def delete_object(self, kind: str, object_id: str) -> None:
        with self._tx() as conn:
            deleted = conn.execute(objects.delete().where(
                objects.c.kind == kind, objects.c.object_id == object_id)).rowcount
        if not deleted:
            raise NotFound(f"no {kind[:32]} object {object_id[:128]!r}")

    # --- users ----------------------------------------------------------------------------
    def _email_lookup(self, email: str) -> str:
        """A keyed hash of the email: finds a user without storing the address in clear.
        The key itself is sealed under the tenant's key, so lookups end with it."""
        key = self._lookup_key
        if key is None:
            key = self._load_lookup_key()
        return hmac.new(key, email.strip().casefold().encode(), hashlib.sha256).hexdigest()

    def email_lookup(self, email: str) -> str:
        """What failed sign-ins are counted by: names an address without revealing it."""
        return self._email_lookup(email)

    def _load_lookup_key(self) -> bytes:
        with self._tx() as conn:
            row = conn.execute(sa.select(secrets_table.c.sealed)
                               .where(secrets_table.c.name == "email_lookup")).first()
            if row is None:
                key = os.urandom(32)
                conn.execute(secrets_table.insert().values(
                    name="email_lookup",
                    sealed=self.keyring.seal(self.tenant, "auth", "secret/email_lookup", key)))
            else:
                key = self.keyring.open(self.tenant, "auth", "secret/email_lookup",
                                        bytes(row[0]))
        self._lookup_key = key
        return key

    def create_user(self, email: str, password_hash: str, role: str) -> dict[str, Any]:
        user_id = str(uuid.uuid4())
        record = {"user_id": user_id, "email": email, "password_hash": password_hash,
                  "role": role, "created_at": self.clock.now()}
        lookup = self._email_lookup(email)
        with self._tx() as conn:
            if conn.execute(sa.select(users.c.user_id)
                            .where(users.c.email_lookup == lookup)).first() is not None:
                raise Conflict("a user with that email already exists")
            conn.execute(users.insert().values(
                user_id=user_id, version=1, email_lookup=lookup, created_at=record["created_at"],
                sealed=self._seal("auth", f"user/{user_id}/1", record)))
        return record

    def _user(self, row: sa.Row[Any]) -> dict[str, Any]:
        return dict(self._open("auth", f"user/{row.user_id}/{row.version}", row.sealed))

    def find_user(self, email: str) -> dict[str, Any] | None:
        lookup = self._email_lookup(email)
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.email_lookup == lookup)).first()
        return None if row is None else self._user(row)

    def get_user(self, user_id: str) -> dict[str, Any]:
        with self._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            raise NotFound("no such user")
        return self._user(row)

    def has_users(self) -> bool:
        """Without opening anything: a tenant without users is one whose provisioning a
        crash cut short."""
        with self._read() as conn:
            return conn.execute(sa.select(users.c.user_id).limit(1)).first() is not None

    def list_users(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = list(conn.execute(sa.select(users).order_by(users.c.created_at)))
        return [self._user(r) for r in rows]

    # --- connections ----------------------------------------------------------------------
    def put_connection(self, name: str, kind: str, config: dict[str, Any],
                       credentials: dict[str, Any]) -> None:
        _id(name, "connection name")
        value = {"type": kind, "config": config, "credentials": credentials}
        now = self.clock.now()
        with self._tx() as conn:
            current = conn.execute(sa.select(connections.c.version)
                                   .where(connections.c.name == name)).scalar()
            version = (current or 0) + 1
            row = {"version": version, "updated_at": now, "sealed": self._seal(
                "warehouse_credentials", f"connection/{name}/{version}", value)}
            if current is None:
                conn.execute(connections.insert().values(name=name, **row))
            else:
                conn.execute(connections.update().where(connections.c.name == name)
                             .values(**row))

    def get_connection(self, name: str) -> dict[str, Any]:
        """The whole connection, credentials included: for the connector, never a reply."""
        with self._read() as conn:
            row = conn.execute(sa.select(connections)
                               .where(connections.c.name == name)).first()
        if row is None:
            raise NotFound(f"no connection {name[:128]!r}")
        return dict(self._open("warehouse_credentials", f"connection/{name}/{row.version}",
                               row.sealed))

    def list_connections(self) -> list[str]:
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute(
                sa.select(connections.c.name).order_by(connections.c.name))]

    def delete_connection(self, name: str) -> None:
        with self._tx() as conn:
            if not conn.execute(connections.delete()
                                .where(connections.c.name == name)).rowcount:
                raise NotFound(f"no connection {name[:128]!r}")

    # --- settings (SSO) -------------------------------------------------------------------
    def put_setting(self, name: str, value: dict[str, Any]) -> None:
        _id(name, "setting name", 32)
        now = self.clock.now()
        with self._tx() as conn:
            current = conn.execute(sa.select(settings_table.c.version)
                                   .where(settings_table.c.name == name)).scalar()
            version = (current or 0) + 1
            conn.execute(settings_table.delete().where(settings_table.c.name == name))
            conn.execute(settings_table.insert().values(
                name=name, version=version, updated_at=now,
                sealed=self._seal("auth", f"setting/{name}/{version}", value)))

    def get_setting(self, name: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(sa.select(settings_table)
                               .where(settings_table.c.name == name)).first()
        return None if row is None else dict(
            self._open("auth", f"setting/{name}/{row.version}", row.sealed))

    # --- activity log ---------------------------------------------------------------------
    def log(self, kind: str, actor: str, detail: dict[str, Any] | None = None) -> None:
        now = self.clock.now()
        entry_id = uuid.uuid4().hex
        sealed = self._seal("logs", f"activity/{entry_id}",
                            {"kind": kind, "actor": actor, "detail": detail or {}, "ts": now})
        with self._tx() as conn:
            conn.execute(activity.insert().values(entry_id=entry_id, ts=now, sealed=sealed))

    def activity(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = list(conn.execute(sa.select(activity).order_by(activity.c.seq.desc())
                                     .limit(limit)))
        return [{"seq": r.seq, **self._open("logs", f"activity/{r.entry_id}", r.sealed)}
                for r in rows]

    # --- schedules and their runs ---------------------------------------------------------
    def create_schedule(self, name: str, connection: str, sql: str,
                        every_seconds: float) -> dict[str, Any]:
        schedule_id = str(uuid.uuid4())
        now = self.clock.now()
        spec = {"name": name, "connection": connection, "sql": sql}
        with self._tx() as conn:
            conn.execute(schedules.insert().values(
                schedule_id=schedule_id, every_seconds=every_seconds,
                next_run_at=now + every_seconds, created_at=now,
                sealed=self._seal("metadata", f"schedule/{schedule_id}", spec)))
        return {"schedule_id": schedule_id, "every_seconds": every_seconds,
                "next_run_at": now + every_seconds, "created_at": now, **spec}

    def _schedule(self, row: sa.Row[Any]) -> dict[str, Any]:
        m = row._mapping
        spec = self._open("metadata", f"schedule/{m['schedule_id']}", m["sealed"])
        return {"schedule_id": m["schedule_id"], "every_seconds": m["every_seconds"],
                "next_run_at": m["next_run_at"], "created_at": m["created_at"], **spec}

    def list_schedules(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = list(conn.execute(sa.select(schedules).order_by(schedules.c.created_at)))
        return [self._schedule(r) for r in rows]

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        with self._read() as conn:
            row = conn.execute(sa.select(schedules)
                               .where(schedules.c.schedule_id == schedule_id)).first()
        if row is None:
            raise NotFound("no such schedule")
        return self._schedule(row)

    def due_schedule_ids(self, now: float) -> list[str]:
        """Due schedules, without opening anything: a locked tenant's jobs still get a run
        record with the reason they could not run."""
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute(
                sa.select(schedules.c.schedule_id).where(schedules.c.next_run_at <= now)
                .order_by(schedules.c.next_run_at))]

    def schedule_slots(self) -> list[tuple[str, float, float]]:
        """(schedule id, next run, period) of every schedule: clear bookkeeping the
        platform keeps, so runs due while the tenant is locked are recorded as refused."""
        with self._read() as conn:
            return [(str(r[0]), float(r[1]), float(r[2])) for r in conn.execute(
                sa.select(schedules.c.schedule_id, schedules.c.next_run_at,
                          schedules.c.every_seconds))]

    def skip_refused_slots(self, next_runs: dict[str, float]) -> None:
        """Move schedules past the slots refused while the tenant was locked: a refused
        run is that slot's run, so restoring does not replay it."""
        with self._tx() as conn:
            for schedule_id, next_run in next_runs.items():
                conn.execute(schedules.update().where(
                    schedules.c.schedule_id == schedule_id,
                    schedules.c.next_run_at < next_run).values(next_run_at=next_run))

    def record_run(self, schedule_id: str, started_at: float, status: str,
                   error_code: str | None, result_key: str | None,
                   detail: dict[str, Any] | None) -> dict[str, Any]:
        """Store a run and move the schedule to its next slot after ``started_at``."""
        run_id = str(uuid.uuid4())
        finished = self.clock.now()
        sealed = (self._seal("warehouse_data", f"run/{run_id}", detail)
                  if detail is not None else None)
        with self._tx() as conn:
            conn.execute(runs.insert().values(
                run_id=run_id, schedule_id=schedule_id, started_at=started_at,
                finished_at=finished, status=status, error_code=error_code,
                result_key=result_key, sealed=sealed))
            every = conn.execute(sa.select(schedules.c.every_seconds)
                                 .where(schedules.c.schedule_id == schedule_id)).scalar_one()
            conn.execute(schedules.update().where(schedules.c.schedule_id == schedule_id)
                         .values(next_run_at=started_at + float(every)))
        return {"run_id": run_id, "schedule_id": schedule_id, "started_at": started_at,
                "finished_at": finished, "status": status, "error_code": error_code}

    def list_runs(self, schedule_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = list(conn.execute(sa.select(runs).where(runs.c.schedule_id == schedule_id)
                                     .order_by(runs.c.started_at.desc()).limit(limit)))
        return [{"run_id": r.run_id, "schedule_id": r.schedule_id, "started_at": r.started_at,
                 "finished_at": r.finished_at, "status": r.status, "error_code": r.error_code,
                 "result_key": r.result_key} for r in rows]
