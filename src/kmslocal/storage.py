"""SQLite persistence: keys, material, aliases, grants, tags, usage log, event outbox and
the event targets registered at run time.

One connection, used from the event loop's thread only; each API call runs in one
transaction, so a refused call changes nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kmslocal.config import EventTarget

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL, arn TEXT NOT NULL,
    created REAL NOT NULL, description TEXT NOT NULL, key_usage TEXT NOT NULL,
    key_spec TEXT NOT NULL, origin TEXT NOT NULL, multi_region INTEGER NOT NULL,
    state TEXT NOT NULL, deletion_date REAL, pending_window INTEGER, policy TEXT NOT NULL,
    rotation_period INTEGER, next_rotation REAL
);
CREATE INDEX IF NOT EXISTS keys_account ON keys (account, key_id);
CREATE INDEX IF NOT EXISTS keys_deletion ON keys (state, deletion_date);
CREATE INDEX IF NOT EXISTS keys_rotation ON keys (state, next_rotation);
CREATE TABLE IF NOT EXISTS materials (
    key_id TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    rotation_type TEXT, wrapped BLOB NOT NULL, PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    account TEXT NOT NULL, name TEXT NOT NULL, key_id TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, name TEXT NOT NULL, grantee TEXT NOT NULL,
    retiring TEXT, operations TEXT NOT NULL, constraints TEXT, issuing_account TEXT NOT NULL,
    created REAL NOT NULL, token TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS grants_key ON grants (key_id);
CREATE TABLE IF NOT EXISTS tags (
    key_id TEXT NOT NULL, tag_key TEXT NOT NULL, tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);
CREATE TABLE IF NOT EXISTS trail (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, event_id TEXT NOT NULL,
    event_time REAL NOT NULL, event_name TEXT NOT NULL, resource_name TEXT,
    access_key_id TEXT, username TEXT, read_only INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trail_account ON trail (account, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS event_targets (
    position INTEGER PRIMARY KEY, account TEXT NOT NULL, url TEXT NOT NULL UNIQUE,
    secret_header TEXT NOT NULL, secret TEXT NOT NULL, resources TEXT
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class KeyRow:
    key_id: str
    account: str
    region: str
    arn: str
    created: float
    description: str
    key_usage: str
    key_spec: str
    origin: str
    multi_region: int
    state: str
    deletion_date: float | None
    pending_window: int | None
    policy: str
    rotation_period: int | None
    next_rotation: float | None


_KEY_COLUMNS = [f.name for f in fields(KeyRow)]


@dataclass(frozen=True)
class GrantRow:
    grant_id: str
    key_id: str
    name: str
    grantee: str
    retiring: str | None
    operations: tuple[str, ...]
    constraints: dict[str, dict[str, str]] | None
    issuing_account: str
    created: float
    token: str


class Storage:
    def __init__(self, path: Path) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # its WAL files follow
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta -----------------------------------------------------------------------
    def get_meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    # --- keys -----------------------------------------------------------------------
    def insert_key(self, key: KeyRow) -> None:
        cols = ", ".join(_KEY_COLUMNS)
        marks = ", ".join("?" for _ in _KEY_COLUMNS)
        values = [getattr(key, c) for c in _KEY_COLUMNS]
        self.db.execute(f"INSERT INTO keys ({cols}) VALUES ({marks})", values)

    def update_key(self, key: KeyRow) -> None:
        sets = ", ".join(f"{c}=?" for c in _KEY_COLUMNS[1:])
        values = [getattr(key, c) for c in _KEY_COLUMNS[1:]]
        self.db.execute(f"UPDATE keys SET {sets} WHERE key_id=?", [*values, key.key_id])

    def get_key(self, key_id: str, account: str | None = None) -> KeyRow | None:
        cols = ", ".join(_KEY_COLUMNS)
        row = self.db.execute(f"SELECT {cols} FROM keys WHERE key_id=?", (key_id,)).fetchone()
        if row is None:
            return None
        key = KeyRow(*row)
        return key if account is None or key.account == account else None

    def list_keys(self, account: str) -> list[KeyRow]:
        cols = ", ".join(_KEY_COLUMNS)
        rows = self.db.execute(
            f"SELECT {cols} FROM keys WHERE account=? ORDER BY created, key_id", (account,)
        )
        return [KeyRow(*r) for r in rows]

    def keys_due(self, now: float) -> tuple[list[KeyRow], list[KeyRow]]:
        """Keys whose deletion date, and keys whose automatic rotation, has come."""
        cols = ", ".join(_KEY_COLUMNS)
        deleting = self.db.execute(
            f"SELECT {cols} FROM keys WHERE state='PendingDeletion' AND deletion_date<=?", (now,)
        )
        to_delete = [KeyRow(*r) for r in deleting]
        rotating = self.db.execute(
            f"SELECT {cols} FROM keys WHERE state='Enabled' AND next_rotation<=?", (now,)
        )
        return to_delete, [KeyRow(*r) for r in rotating]

    def delete_key(self, key_id: str) -> None:
        for table in ("materials", "grants", "tags", "aliases", "keys"):
            self.db.execute(f"DELETE FROM {table} WHERE key_id=?", (key_id,))

    # --- material -------------------------------------------------------------------
    def add_material(
        self, key_id: str, version: int, created: float, rotation_type: str | None,
        wrapped: bytes,
    ) -> None:
        self.db.execute(
            "INSERT INTO materials (key_id, version, created, rotation_type, wrapped) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, version, created, rotation_type, wrapped),
        )

    def latest_material_version(self, key_id: str) -> int | None:
        row = self.db.execute(
            "SELECT MAX(version) FROM materials WHERE key_id=?", (key_id,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def get_material(self, key_id: str, version: int) -> bytes | None:
        row = self.db.execute(
            "SELECT wrapped FROM materials WHERE key_id=? AND version=?", (key_id, version)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def rotations(self, key_id: str) -> list[tuple[float, str]]:
        rows = self.db.execute(
            "SELECT created, rotation_type FROM materials "
            "WHERE key_id=? AND rotation_type IS NOT NULL ORDER BY version",
            (key_id,),
        )
        return [(float(c), str(t)) for c, t in rows]

    # --- aliases --------------------------------------------------------------------
    def get_alias(self, account: str, name: str) -> tuple[str, float, float] | None:
        row = self.db.execute(
            "SELECT key_id, created, updated FROM aliases WHERE account=? AND name=?",
            (account, name),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]), float(row[2]))

    def put_alias(self, account: str, name: str, key_id: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO aliases (account, name, key_id, created, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT(account, name) DO UPDATE SET key_id=excluded.key_id, updated=?",
            (account, name, key_id, now, now, now),
        )

    def delete_alias(self, account: str, name: str) -> None:
        self.db.execute("DELETE FROM aliases WHERE account=? AND name=?", (account, name))

    def list_aliases(self, account: str) -> list[tuple[str, str, float, float]]:
        rows = self.db.execute(
            "SELECT name, key_id, created, updated FROM aliases WHERE account=? ORDER BY name",
            (account,),
        )
        return [(str(n), str(k), float(c), float(u)) for n, k, c, u in rows]

    # --- grants ---------------------------------------------------------------------
    _GRANT_COLS = (
        "grant_id, key_id, name, grantee, retiring, operations, constraints, "
        "issuing_account, created, token"
    )

    def add_grant(self, g: GrantRow) -> None:
        self.db.execute(
            f"INSERT INTO grants ({self._GRANT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                g.grant_id, g.key_id, g.name, g.grantee, g.retiring, json.dumps(g.operations),
                None if g.constraints is None else json.dumps(g.constraints),
                g.issuing_account, g.created, g.token,
            ),
        )

    @staticmethod
    def _grant(row: tuple[Any, ...]) -> GrantRow:
        return GrantRow(
            row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])),
            None if row[6] is None else json.loads(row[6]), row[7], row[8], row[9],
        )

    def grants_for_key(self, key_id: str) -> list[GrantRow]:
        rows = self.db.execute(
            f"SELECT {self._GRANT_COLS} FROM grants WHERE key_id=? ORDER BY created, grant_id",
            (key_id,),
        )
        return [self._grant(r) for r in rows]

    def grants_for_retiring(self, principal: str) -> list[GrantRow]:
        rows = self.db.execute(
            f"SELECT {self._GRANT_COLS} FROM grants WHERE retiring=? ORDER BY created, grant_id",
            (principal,),
        )
        return [self._grant(r) for r in rows]

    def grant_by_token(self, token: str) -> GrantRow | None:
        row = self.db.execute(
            f"SELECT {self._GRANT_COLS} FROM grants WHERE token=?", (token,)
        ).fetchone()
        return None if row is None else self._grant(row)

    def delete_grant(self, grant_id: str) -> None:
        self.db.execute("DELETE FROM grants WHERE grant_id=?", (grant_id,))

    # --- tags -----------------------------------------------------------------------
    def put_tag(self, key_id: str, tag_key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO tags (key_id, tag_key, tag_value) VALUES (?,?,?) "
            "ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value=excluded.tag_value",
            (key_id, tag_key, value),
        )

    def delete_tag(self, key_id: str, tag_key: str) -> None:
        self.db.execute("DELETE FROM tags WHERE key_id=? AND tag_key=?", (key_id, tag_key))

    def tags(self, key_id: str) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT tag_key, tag_value FROM tags WHERE key_id=? ORDER BY tag_key", (key_id,)
        )
        return [(str(k), str(v)) for k, v in rows]

    # --- usage log ------------------------------------------------------------------
    def append_trail(
        self, account: str, event_id: str, event_time: float, event_name: str,
        resource_name: str | None, access_key_id: str | None, username: str | None,
        read_only: bool, record: str,
    ) -> None:
        self.db.execute(
            "INSERT INTO trail (account, event_id, event_time, event_name, resource_name, "
            "access_key_id, username, read_only, record) VALUES (?,?,?,?,?,?,?,?,?)",
            (account, event_id, event_time, event_name, resource_name, access_key_id,
             username, int(read_only), record),
        )

    def lookup_trail(
        self, account: str, start: float, end: float, attribute: tuple[str, str] | None,
        before_seq: int | None, limit: int,
    ) -> list[tuple[Any, ...]]:
        where = ["account=?", "event_time>=?", "event_time<=?"]
        args: list[Any] = [account, start, end]
        if attribute is not None:
            column, value = attribute
            if column == "resource_name":
                where.append("(resource_name=? OR resource_name LIKE ?)")
                args += [value, f"%:key/{value}"]
            else:
                where.append(f"{column}=?")
                args.append(value)
        if before_seq is not None:
            where.append("seq<?")
            args.append(before_seq)
        sql = (
            "SELECT seq, event_id, event_time, event_name, resource_name, access_key_id, "
            f"username, read_only, record FROM trail WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT ?"
        )
        return list(self.db.execute(sql, [*args, limit]))

    # --- event outbox ---------------------------------------------------------------
    def enqueue_event(self, url: str, body: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO outbox (url, body, next_attempt) VALUES (?,?,?)", (url, body, now)
        )

    def due_urls(self, now: float) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT url FROM outbox WHERE next_attempt<=? ORDER BY url", (now,))
        return [str(u) for (u,) in rows]

    def due_events(self, url: str, now: float,
                   limit: int = 50) -> list[tuple[int, str, int]]:
        rows = self.db.execute(
            "SELECT id, body, attempts FROM outbox WHERE url=? AND next_attempt<=? "
            "ORDER BY id LIMIT ?",
            (url, now, limit),
        )
        return [(int(i), str(b), int(a)) for i, b, a in rows]

    def next_event_time(self, busy: Sequence[str] = ()) -> float | None:
        """When the next event falls due, leaving out the urls in ``busy``."""
        marks = ",".join("?" * len(busy))
        row = self.db.execute(
            f"SELECT MIN(next_attempt) FROM outbox WHERE url NOT IN ({marks})", tuple(busy)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def event_delivered(self, event_row: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id=?", (event_row,))

    def event_failed(self, event_row: int, attempts: int, next_attempt: float) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts=?, next_attempt=? WHERE id=?",
            (attempts, next_attempt, event_row),
        )

    # --- event targets registered at run time ----------------------------------------
    def event_targets(self) -> list[EventTarget]:
        rows = self.db.execute(
            "SELECT account, url, secret_header, secret, resources FROM event_targets "
            "ORDER BY position"
        )
        return [
            EventTarget(str(a), str(u), str(h), str(s), tuple(json.loads(r)) if r else ())
            for a, u, h, s, r in rows
        ]

    def replace_event_targets(self, targets: list[EventTarget]) -> None:
        self.db.execute("DELETE FROM event_targets")
        self.db.executemany(
            "INSERT INTO event_targets (position, account, url, secret_header, secret, "
            "resources) VALUES (?,?,?,?,?,?)",
            [
                (i, t.account, t.url, t.secret_header, t.secret,
                 json.dumps(t.resources) if t.resources else None)
                for i, t in enumerate(targets)
            ],
        )
