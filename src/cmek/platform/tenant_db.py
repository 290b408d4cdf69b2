"""Each tenant its own database: a SQLite file in its own folder, or, with a PostgreSQL
control plane, a schema owned by a role of its own.

A PostgreSQL role is cluster-wide, so its name is random (``cmek_`` and 24 hex digits),
recorded per tenant: two deployments on one cluster, or a tenant id used by both, never
collide. Its password is random too, sealed under the tenant's own key (without the key
the platform cannot even log in to the tenant's schema), and never sent to the server:
only the SCRAM verifier that libpq computes from it appears in ``CREATE ROLE``, so no
statement or error text that reaches a log carries a secret. A destroyed tenant's schema
and role are dropped, and its SQLite folder deleted.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from cmek.db import create_engine, driver_url
from cmek.files import private_dir
from cmek.keyring import Keyring
from cmek.stores.tenant import TenantStore

metadata = sa.MetaData()

tenant_dbs = sa.Table(
    "platform_tenant_databases", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("sealed_password", sa.LargeBinary, nullable=False),
)


class TenantDatabases:
    def __init__(self, control: sa.Engine, database_url: str, data_dir: Path,
                 keyring: Keyring) -> None:
        self.control = control
        self.postgres = database_url.startswith("postgresql://")
        self.database_url = database_url
        self.data_dir = data_dir
        self.keyring = keyring
        metadata.create_all(control)

    def _folder(self, tenant_id: str) -> Path:
        return self.data_dir / "tenants" / tenant_id

    def engine(self, tenant_id: str) -> sa.Engine:
        if not self.postgres:
            folder = private_dir(self._folder(tenant_id))
            return create_engine(f"sqlite:///{folder / 'tenant.sqlite3'}")
        name, password = self._role(tenant_id)
        url = sa.make_url(driver_url(self.database_url))
        url = url.set(username=name, password=password,
                      query={"options": f"-csearch_path={name}"})
        return sa.create_engine(url, pool_size=4, max_overflow=4)

    def _role(self, tenant_id: str) -> tuple[str, str]:
        with self.control.begin() as conn:
            row = conn.execute(sa.select(tenant_dbs.c.name, tenant_dbs.c.sealed_password)
                               .where(tenant_dbs.c.tenant_id == tenant_id)).first()
            if row is not None:
                return str(row[0]), self.keyring.open(
                    tenant_id, "auth", "db/password", bytes(row[1])).decode()
            name, password = f"cmek_{secrets.token_hex(12)}", secrets.token_urlsafe(24)
            role = sql.Identifier(name)
            verifier = _driver(conn).pgconn.encrypt_password(
                password.encode(), name.encode(), b"scram-sha-256").decode()
            _run(conn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                role, sql.Literal(verifier)))
            _run(conn, sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(role, role))
            conn.execute(tenant_dbs.insert().values(
                tenant_id=tenant_id, name=name, sealed_password=self.keyring.seal(
                    tenant_id, "auth", "db/password", password.encode())))
        return name, password

    def _name(self, conn: sa.Connection, tenant_id: str) -> str | None:
        return conn.execute(sa.select(tenant_dbs.c.name)
                            .where(tenant_dbs.c.tenant_id == tenant_id)).scalar()

    def close(self, tenant_id: str) -> None:
        """No new logins for the tenant's role, and its sessions terminated."""
        if not self.postgres:
            return
        with self.control.begin() as conn:
            name = self._name(conn, tenant_id)
            if name is not None:
                _shut(conn, name)

    def open(self, tenant_id: str) -> None:
        if not self.postgres:
            return
        with self.control.begin() as conn:
            name = self._name(conn, tenant_id)
            if name is not None:
                _run(conn, sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(name)))

    def drop(self, tenant_id: str) -> bool:
        """A destroyed tenant's database goes: its schema and role, or its folder."""
        if not self.postgres:
            folder = self._folder(tenant_id)
            existed = folder.exists()
            shutil.rmtree(folder, ignore_errors=True)
            return existed
        with self.control.begin() as conn:
            name = self._name(conn, tenant_id)
            if name is None:
                return False
            role = sql.Identifier(name)
            _shut(conn, name)
            _run(conn, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(role))
            _run(conn, sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            conn.execute(tenant_dbs.delete().where(tenant_dbs.c.tenant_id == tenant_id))
        return True


class OpenStores:
    """Each tenant's store, opened at most once in this process: a lock closes that one
    object and a restart reopens it, so no request holds a store the lock missed."""

    def __init__(self, open_store: Callable[[str], TenantStore]) -> None:
        self._open = open_store
        self._stores: dict[str, TenantStore] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> TenantStore:
        with self._lock:
            store = self._stores.get(tenant_id)
            if store is None:
                store = self._stores[tenant_id] = self._open(tenant_id)
            return store

    def close(self, tenant_id: str, *, forget: bool = False) -> None:
        """Close the tenant's store if it is open; ``forget``: for good (destroyed)."""
        with self._lock:
            store = (self._stores.pop(tenant_id, None) if forget
                     else self._stores.get(tenant_id))
        if store is not None:
            store.close()

    def reopen(self, tenant_id: str) -> None:
        with self._lock:
            store = self._stores.get(tenant_id)
        if store is not None:
            store.reopen()

    def close_all(self) -> None:
        with self._lock:
            stores = list(self._stores.values())
        for store in stores:
            store.close()


def _driver(conn: sa.Connection) -> Any:
    return conn.connection.driver_connection


def _run(conn: sa.Connection, statement: sql.Composed) -> None:
    conn.exec_driver_sql(statement.as_string(_driver(conn)))


def _shut(conn: sa.Connection, name: str) -> None:
    _run(conn, sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(name)))
    conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %(name)s", {"name": name})
