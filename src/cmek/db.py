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


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
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
