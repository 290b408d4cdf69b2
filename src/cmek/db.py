"""Database engines for the control plane: SQLite by default, PostgreSQL in production.

SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` transactions so that writers
from several threads or processes queue instead of failing on lock upgrades.
"""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite


def normalize_url(url: str) -> str:
    """``postgres://`` (as many tools and hosting services write it) is ``postgresql://``."""
    return "postgresql://" + url.removeprefix("postgres://") if url.startswith(
        "postgres://") else url


def redact_url(url: str) -> str:
    """A database URL fit for a message: the password replaced by ``***``."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^@/]*@", r"\1:***@", url, flags=re.I)


def unreachable(engine: sa.Engine) -> str | None:
    """Why the database does not answer a query, in one line (the driver's first line,
    without the SQLAlchemy boilerplate), or None when it does."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as e:
        lines = [line.strip() for line in str(e.orig).splitlines() if line.strip()]
        return (lines[0] if lines else type(e.orig).__name__)[:300]
    return None


def upsert(bind: sa.Engine | sa.Connection, table: sa.Table) -> Any:
    """An INSERT that takes ``on_conflict_do_update``: PostgreSQL's or SQLite's."""
    return (postgresql.insert if bind.dialect.name == "postgresql" else sqlite.insert)(table)


def count_in_window(conn: sa.Connection, key: sa.Column[Any], value: str, *,
                    count: sa.Column[Any], start: sa.Column[Any], now: float, window: float,
                    **new_row: Any) -> int:
    """Add one to a count kept per row and per fixed window (a window ``window`` seconds
    old starts afresh at 1), atomically, and return the count now. ``new_row``: the other
    columns of a row made by the first count."""
    table = key.table
    assert isinstance(table, sa.Table)
    expired = start <= now - window
    conn.execute(upsert(conn, table).values(
        {key.name: value, count.name: 1, start.name: now, **new_row},
    ).on_conflict_do_update(index_elements=[key], set_={
        count.name: sa.case((expired, 1), else_=count + 1),
        start.name: sa.case((expired, now), else_=start)}))
    return int(conn.execute(sa.select(count).where(key == value)).scalar_one())


def driver_url(url: str) -> str:
    """The URL SQLAlchemy opens: PostgreSQL through psycopg 3."""
    url = normalize_url(url)
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    url = driver_url(url)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        _owner_only(url.removeprefix("sqlite:///"))
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    return engine


def _owner_only(path: str) -> None:
    """The database file exists, readable by its owner alone, before SQLite opens it:
    SQLite gives its journal and WAL files the same mode."""
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def _tune_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
