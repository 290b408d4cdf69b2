"""Warehouse engines: read-only SQL against a tenant's DuckDB file or PostgreSQL database,
run here in the test process (the platform runs them in a query process of their own:
tests/test_warehouse_sandbox.py), and the validation of a stored connection.

Every refusal is checked twice: the error code, and that the warehouse is unchanged.
A PostgreSQL database that does not exist is ``invalid_connection`` (the stored config is wrong).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import duckdb
import psycopg
import pytest

from cmek.errors import CmekError, InvalidInput
from cmek.platform.warehouse import engines
from cmek.platform.warehouse.connections import Target, validate_connection
from cmek.platform.warehouse.engines import QueryLimits, QueryResult, execute
from cmek.platform.warehouse.errors import (
    ConnectorError,
    InvalidConnection,
    QueryTimeout,
    SqlNotReadOnly,
    WarehouseAuthFailed,
    WarehouseNotVerified,
    WarehouseUnreachable,
)

SECRET = "Pl4nted-S3cret-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _code(exc: BaseException) -> str:
    assert isinstance(exc, CmekError)
    assert "\n" not in str(exc)
    assert 0 < len(str(exc)) <= 300
    return exc.code


# --- DuckDB -------------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE orders (id INTEGER, placed DATE, amount DECIMAL(10, 2), "
                 "note VARCHAR)")
    conn.execute("INSERT INTO orders VALUES (1, DATE '2024-01-02', 12.50, 'first'), "
                 "(2, DATE '2024-02-29', 3.10, NULL), (3, DATE '2024-12-31', 0.00, 'x;y')")
    conn.execute("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS label FROM range(50) r(i)")
    conn.close()
    return path


def _counts(path: Path) -> tuple[int, int, list[str]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()
        items = conn.execute("SELECT count(*) FROM items").fetchone()
        tables = sorted(r[0] for r in conn.execute("SHOW TABLES").fetchall())
    finally:
        conn.close()
    assert orders is not None
    assert items is not None
    return int(orders[0]), int(items[0]), tables


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def duck(path: Path, sql: str, **limits: Any) -> QueryResult:
    return execute(Target("duckdb", path=str(path)), sql, QueryLimits(**limits))


def test_duckdb_select_rows_columns_and_types(warehouse: Path) -> None:
    result = duck(warehouse, "SELECT id, placed, amount, note FROM orders ORDER BY id")
    assert result.columns == ["id", "placed", "amount", "note"]
    assert result.rows == [[1, "2024-01-02", 12.5, "first"], [2, "2024-02-29", 3.1, None],
                           [3, "2024-12-31", 0.0, "x;y"]]
    assert result.truncated is False
    assert result.to_json() == {"columns": result.columns, "rows": result.rows,
                                "truncated": False}


def test_duckdb_values_are_json_safe(warehouse: Path) -> None:
    result = duck(warehouse, """
        SELECT 0.10000000000000000001::DECIMAL(38, 20) AS exact, 'ab'::BLOB AS blob,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID AS id, TIME '13:45:00' AS t,
               TIMESTAMP '2024-01-02 03:04:05' AS ts, 'nan'::DOUBLE AS nan,
               '-inf'::DOUBLE AS ninf, [1.5::DECIMAL(3, 1)] AS list,
               {'d': DATE '2024-01-01'} AS struct, INTERVAL 2 DAY AS span, 7::HUGEINT AS big,
               1 AS id
    """)
    assert result.columns == ["exact", "blob", "id", "t", "ts", "nan", "ninf", "list",
                              "struct", "span", "big", "id"]
    assert result.rows == [["0.10000000000000000001", "YWI=",
                            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "13:45:00",
                            "2024-01-02T03:04:05", "NaN", "-Infinity", [1.5],
                            {"d": "2024-01-01"}, "2 days, 0:00:00", 7, 1]]
    json.dumps(result.to_json(), allow_nan=False)


def test_duckdb_truncates_at_max_rows(warehouse: Path) -> None:
    capped = duck(warehouse, "SELECT id FROM items ORDER BY id", max_rows=10)
    assert capped.truncated is True
    assert capped.rows == [[i] for i in range(10)]
    exact = duck(warehouse, "SELECT id FROM items", max_rows=50)
    assert (len(exact.rows), exact.truncated) == (50, False)
    huge = duck(warehouse, "SELECT * FROM range(1000000000000)", max_rows=3)
    assert (huge.rows, huge.truncated) == ([[0], [1], [2]], True)


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders VALUES (9, NULL, NULL, NULL)",
    "UPDATE orders SET amount = 0",
    "DELETE FROM orders",
    "CREATE TABLE evil (a INTEGER)",
    "CREATE OR REPLACE TABLE items AS SELECT 1 AS id",
    "DROP TABLE orders",
    "ALTER TABLE orders ADD COLUMN z INTEGER",
    "ATTACH ':memory:' AS other",
    "COPY orders TO 'out.csv'",
    "EXPORT DATABASE 'dump'",
    "select 1; drop table orders",
    "SELECT 1; SELECT 2",
    "PRAGMA table_info('orders')",
    "SET threads = 1",
    "LOAD httpfs",
    "INSTALL httpfs",
    "CHECKPOINT",
    "BEGIN TRANSACTION",
    "EXPLAIN ANALYZE INSERT INTO orders VALUES (9, NULL, NULL, NULL)",
    "EXPLAIN ANALYZE COPY orders TO 'out.csv'",  # EXPLAIN runs what it wraps: refused
    "EXPLAIN SELECT * FROM orders",
    "CALL pragma_version()",
    "PIVOT orders ON note",
    "-- only a comment",
])
def test_duckdb_refuses_anything_but_one_read(warehouse: Path, sql: str) -> None:
    before, digest = _counts(warehouse), _digest(warehouse)
    with pytest.raises(SqlNotReadOnly) as info:
        duck(warehouse, sql)
    assert _code(info.value) == "sql_not_read_only"
    assert _counts(warehouse) == before == (3, 50, ["items", "orders"])
    assert _digest(warehouse) == digest
    assert not (warehouse.parent / "out.csv").exists()
    assert not (warehouse.parent / "dump").exists()


@pytest.mark.parametrize("sql", ["SHOW TABLES", "DESCRIBE orders", "SUMMARIZE orders",
                                 "FROM orders", "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
                                 "  select 1 ;  ", "/* c */ SELECT 1"])
def test_duckdb_allows_read_statements(warehouse: Path, sql: str) -> None:
    assert duck(warehouse, sql).rows


def test_duckdb_cannot_read_platform_files(warehouse: Path, tmp_path: Path) -> None:
    secret = tmp_path / "platform.csv"
    secret.write_text("key\nplatform-private-value\n")
    with pytest.raises(ConnectorError) as info:
        duck(warehouse, f"SELECT * FROM read_csv('{secret}')")
    assert _code(info.value) == "warehouse_error"
    assert "platform-private-value" not in str(info.value)


@pytest.mark.parametrize(("sql", "fragment"), [
    ("SELECT 1 +", "syntax error"),
    ("SELECT * FROM nope", "nope does not exist"),
    ("SELECT 'x'::INTEGER", "Conversion Error"),
])
def test_duckdb_sql_errors_are_warehouse_errors(warehouse: Path, sql: str, fragment: str) -> None:
    with pytest.raises(ConnectorError) as info:
        duck(warehouse, sql)
    assert _code(info.value) == "warehouse_error"
    assert fragment in str(info.value)


def test_duckdb_timeout_interrupts_the_query(warehouse: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout) as info:
        duck(warehouse, "SELECT sum(i * i) FROM range(100000000000) r(i)", wall_seconds=0.2)
    assert _code(info.value) == "query_timeout"
    assert "timeout" in str(info.value)
    assert time.monotonic() - started < 10


def test_duckdb_missing_or_foreign_file_is_invalid_connection(tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(InvalidConnection) as info:
        duck(missing, "SELECT 1")
    assert _code(info.value) == "invalid_connection"
    assert not missing.exists()  # a read-only open must not create it
    foreign = tmp_path / "notes.duckdb"
    foreign.write_text("not a database")
    with pytest.raises(InvalidConnection) as info:
        duck(foreign, "SELECT 1")
    assert "not a DuckDB database" in str(info.value)


def test_sql_size_limits(warehouse: Path) -> None:
    for bad in ["", "   \n", "SELECT 1" + " " * 100_000, "SELECT '\x00'"]:
        with pytest.raises(InvalidInput) as info:
            duck(warehouse, bad)
        assert info.value.code == "invalid_input"
    longest = "SELECT 1" + " " * (100_000 - len("SELECT 1"))
    assert duck(warehouse, longest).rows == [[1]]


# --- validation ---------------------------------------------------------------------------

PG_CONFIG = {"host": "db.example.com", "port": 5432, "database": "wh"}
PG_CREDS = {"user": "reader", "password": SECRET}


@pytest.mark.parametrize(("kind", "config", "credentials", "field"), [
    ("mysql", PG_CONFIG, PG_CREDS, "type"),
    ("postgres", "host=x", PG_CREDS, "config"),
    ("postgres", {"port": 5432, "database": "wh"}, PG_CREDS, "config.host"),
    ("postgres", {"host": "127.0.0.1"}, PG_CREDS, "config.database"),
    ("postgres", {**PG_CONFIG, "options": "-c x=1"}, PG_CREDS, "config.options"),
    ("postgres", {**PG_CONFIG, "host": ""}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": "a b"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": 5}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "database": ""}, PG_CREDS, "config.database"),
    ("postgres", {**PG_CONFIG, "port": "5432"}, PG_CREDS, "config.port"),
    ("postgres", {**PG_CONFIG, "port": True}, PG_CREDS, "config.port"),
    ("postgres", {**PG_CONFIG, "port": 0}, PG_CREDS, "config.port"),
    ("postgres", {**PG_CONFIG, "port": 65536}, PG_CREDS, "config.port"),
    ("postgres", {**PG_CONFIG, "sslmode": "prefer"}, PG_CREDS, "config.sslmode"),
    ("postgres", {**PG_CONFIG, "sslmode": "allow"}, PG_CREDS, "config.sslmode"),
    ("postgres", {**PG_CONFIG, "sslmode": "verify-ca"}, PG_CREDS, "config.ca_pem"),
    ("postgres", {**PG_CONFIG, "sslmode": "require", "ca_pem": "x"}, PG_CREDS, "config.ca_pem"),
    ("postgres", {**PG_CONFIG, "ca_pem": "not a certificate"}, PG_CREDS, "config.ca_pem"),
    ("postgres", {**PG_CONFIG, "host": "/var/run/postgresql"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": "@abstract"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": "a.example.com,b.example.com"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": "db.example.com:5432"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "host": "fe80::1%eth0"}, PG_CREDS, "config.host"),
    ("postgres", {**PG_CONFIG, "database": "wh\r\nX-Injected: 1"}, PG_CREDS,
     "config.database"),
    ("postgres", PG_CONFIG, {"user": "reader\nx", "password": SECRET}, "credentials.user"),
    ("postgres", PG_CONFIG, {"user": "reader", "password": "pw\x00"}, "credentials.password"),
    ("postgres", PG_CONFIG, {"user": "reader", "password": "pw\x85"}, "credentials.password"),
    ("postgres", PG_CONFIG, {"password": SECRET}, "credentials.user"),
    ("postgres", PG_CONFIG, {"user": "reader"}, "credentials.password"),
    ("postgres", PG_CONFIG, {"user": "", "password": SECRET}, "credentials.user"),
    ("postgres", PG_CONFIG, {"user": "reader", "password": 1234}, "credentials.password"),
    ("postgres", PG_CONFIG, {**PG_CREDS, "token": SECRET}, "credentials.token"),
    ("postgres", PG_CONFIG, [SECRET], "credentials"),
    ("duckdb", {}, {}, "config.path"),
    ("duckdb", {"path": "/etc/passwd"}, {}, "config.path"),
    ("duckdb", {"path": "../other-tenant/wh.duckdb"}, {}, "config.path"),
    ("duckdb", {"path": "a/../../b.duckdb"}, {}, "config.path"),
    ("duckdb", {"path": ".hidden.duckdb"}, {}, "config.path"),
    ("duckdb", {"path": "a//b.duckdb"}, {}, "config.path"),
    ("duckdb", {"path": "wh.duckdb\n"}, {}, "config.path"),
    ("duckdb", {"path": 7}, {}, "config.path"),
    ("duckdb", {"path": "x.duckdb", "password": SECRET}, {}, "config.password"),
    ("duckdb", {"path": "x.duckdb"}, SECRET, "credentials"),
    ("duckdb", {"path": "x.duckdb"}, {"user": SECRET}, "credentials.user"),
])
def test_validate_connection_names_the_bad_field(kind: str, config: Any, credentials: Any,
                                                 field: str) -> None:
    with pytest.raises(InvalidConnection) as info:
        validate_connection(kind, config, credentials)
    message = str(info.value)
    assert _code(info.value) == "invalid_connection"
    assert field in message
    assert SECRET not in message


def test_validate_connection_accepts_good_connections() -> None:
    assert validate_connection("duckdb", {"path": "sales/2024.duckdb"}, {}) == {
        "path": "sales/2024.duckdb"}
    assert validate_connection("postgres", {"host": "db.example.com", "database": "wh"},
                               PG_CREDS) == {"host": "db.example.com", "port": 5432,
                                             "database": "wh", "sslmode": "verify-full"}
    for mode in ("disable", "require", "verify-full"):
        stored = validate_connection("postgres", {**PG_CONFIG, "sslmode": mode},
                                     {"user": "reader", "password": ""})
        assert stored["sslmode"] == mode  # a weaker mode only as the tenant's own choice
    assert validate_connection("postgres", {**PG_CONFIG, "host": "2001:db8::7"}, PG_CREDS)


@pytest.mark.parametrize(("sql", "allowed"), [
    ("select ';' as a", True),
    ("select $$;drop table t$$, $x$ ; $x$", True),
    ("select E'\\';' ; ", True),
    ("select 1 -- ; delete\n", True),
    ("/* a /* nested ; */ ; */ select 1", True),
    ('select 1 as ";"', True),
    ("(select 1) union (select 2)", True),
    ("TABLE t", True), ("values (1)", True), ("show all", True),
    ("explain select 1", True), ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("select 1; select 2", False),
    ("select $$a$$; delete from t", False),
    ("select 'a'';'; delete from t", False),
    ("select E'\\''; delete from t", False),
    ("/* select */ delete from t", False),
    ("-- select\ninsert into t values (1)", False),
    ("set transaction read write", False),
    ("begin", False), ("copy t to stdout", False), ("call p()", False), ("do $$ $$", False),
])
def test_postgres_statement_check(sql: str, allowed: bool) -> None:
    if allowed:
        engines.pg_check(sql)
    else:
        with pytest.raises(SqlNotReadOnly):
            engines.pg_check(sql)


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def pg(pg_url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, "
                     "balance NUMERIC(12, 2), opened DATE, tag BYTEA, ref UUID)")
        conn.execute("INSERT INTO accounts VALUES "
                     "(1, 'ada', 10.25, '2024-01-02', '\\x6162', "
                     "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), "
                     "(2, 'bob', 0.10, '2023-06-30', NULL, NULL)")
        conn.execute("INSERT INTO accounts SELECT g, 'n' || g, g, NULL, NULL, NULL "
                     "FROM generate_series(3, 40) g")
    url = urlsplit(pg_url)
    config = {"host": url.hostname, "port": url.port or 5432,
              "database": unquote(url.path.lstrip("/"))}
    credentials = {"user": unquote(url.username or ""), "password": unquote(url.password or "")}
    return config, credentials, pg_url


def _pg_state(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                              ).fetchone()
    assert row is not None
    assert tables is not None
    return (*row, tables[0])


def run_pg(config: dict[str, Any], credentials: dict[str, Any], sql: str,
           **limits: Any) -> QueryResult:
    """The test server speaks no TLS: its connections choose ``disable`` explicitly."""
    target = Target("postgres", host=str(config["host"]), hostaddr="127.0.0.1",
                    port=int(config.get("port", 5432)), database=str(config["database"]),
                    user=str(credentials["user"]), password=str(credentials["password"]),
                    sslmode=str(config.get("sslmode", "disable")))
    return execute(target, sql, QueryLimits(**limits))


def pgq(pg: tuple[dict[str, Any], dict[str, Any], str], sql: str, **limits: Any) -> QueryResult:
    config, credentials, _ = pg
    return run_pg(config, credentials, sql, **limits)


def test_postgres_select(pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    result = pgq(pg, "SELECT id, name, balance, opened, tag, ref FROM accounts "
                     "WHERE id <= 2 ORDER BY id")
    assert result.columns == ["id", "name", "balance", "opened", "tag", "ref"]
    assert result.rows == [
        [1, "ada", 10.25, "2024-01-02", "YWI=", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
        [2, "bob", 0.1, "2023-06-30", None, None],
    ]
    assert result.truncated is False
    json.dumps(result.to_json(), allow_nan=False)
    assert pgq(pg, "SHOW transaction_read_only").rows == [["on"]]


def test_postgres_truncates_at_max_rows(pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    capped = pgq(pg, "SELECT id FROM accounts ORDER BY id", max_rows=5)
    assert (capped.rows, capped.truncated) == ([[1], [2], [3], [4], [5]], True)
    exact = pgq(pg, "SELECT id FROM accounts", max_rows=40)
    assert (len(exact.rows), exact.truncated) == (40, False)
    started = time.monotonic()
    endless = pgq(pg, "SELECT generate_series(1, 1000000000)", max_rows=2)
    assert (endless.rows, endless.truncated) == ([[1], [2]], True)
    assert time.monotonic() - started < 10  # the rest was cancelled, not fetched


@pytest.mark.parametrize("sql", [
    "INSERT INTO accounts VALUES (99, 'eve', 1, NULL, NULL, NULL)",
    "UPDATE accounts SET balance = 0",
    "DELETE FROM accounts",
    "CREATE TABLE evil (a INTEGER)",
    "DROP TABLE accounts",
    "WITH gone AS (DELETE FROM accounts RETURNING id) SELECT count(*) FROM gone",
    "WITH x AS (UPDATE accounts SET balance = 0 RETURNING 1) SELECT * FROM x",
    "SELECT * INTO copied FROM accounts",
    "SELECT * FROM accounts FOR UPDATE",
    "EXPLAIN ANALYZE INSERT INTO accounts VALUES (99, 'eve', 1, NULL, NULL, NULL)",
    "select 1; commit; insert into accounts values (99, 'eve', 1, NULL, NULL, NULL)",
    "SET default_transaction_read_only = off",
])
def test_postgres_refuses_writes(pg: tuple[dict[str, Any], dict[str, Any], str],
                                 sql: str) -> None:
    before = _pg_state(pg[2])
    with pytest.raises(SqlNotReadOnly) as info:
        pgq(pg, sql)
    assert _code(info.value) == "sql_not_read_only"
    assert _pg_state(pg[2]) == before


@pytest.mark.parametrize("sql", [
    "select 1; insert into accounts values (99, 'eve', 1, NULL, NULL, NULL)",
    "commit; insert into accounts values (99, 'eve', 1, NULL, NULL, NULL)",
    "set transaction read write; delete from accounts",
    "insert into accounts values (99, 'eve', 1, NULL, NULL, NULL)",
    "create table evil (a int)",
])
def test_postgres_engine_refuses_writes_the_check_missed(
        pg: tuple[dict[str, Any], dict[str, Any], str], sql: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "pg_check", lambda sql: None)
    before = _pg_state(pg[2])
    with pytest.raises(ConnectorError) as info:
        pgq(pg, sql)
    assert _code(info.value) in {"sql_not_read_only", "warehouse_error"}
    assert _pg_state(pg[2]) == before


def test_postgres_sql_error(pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    with pytest.raises(ConnectorError) as info:
        pgq(pg, "SELECT nope FROM accounts")
    assert _code(info.value) == "warehouse_error"
    assert str(info.value) == 'column "nope" does not exist'
    with pytest.raises(ConnectorError) as info:
        pgq(pg, "SELECT FROM WHERE")
    assert _code(info.value) == "warehouse_error"


def test_postgres_statement_timeout(pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout) as info:
        pgq(pg, "SELECT pg_sleep(30)", wall_seconds=0.3)
    assert _code(info.value) == "query_timeout"
    assert time.monotonic() - started < 10


def test_postgres_unreachable(pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    config, credentials, _ = pg
    with pytest.raises(WarehouseUnreachable) as info:
        run_pg({**config, "port": _free_port()}, credentials, "SELECT 1")
    assert _code(info.value) == "warehouse_unreachable"


def test_postgres_wrong_database_is_invalid_connection(
        pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    config, credentials, _ = pg
    with pytest.raises(InvalidConnection) as info:
        run_pg({**config, "database": "no_such_db"}, credentials, "SELECT 1")
    assert _code(info.value) == "invalid_connection"
    assert "no_such_db" in str(info.value)


def test_postgres_unknown_user_is_auth_failure(
        pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    config, _, _ = pg
    with pytest.raises(WarehouseAuthFailed) as info:
        run_pg(config, {"user": "nobody_here", "password": SECRET}, "SELECT 1")
    assert _code(info.value) == "warehouse_auth_failed"


def test_postgres_tls_required_but_unsupported(
        pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    config, credentials, _ = pg
    for mode in ("require", "verify-full"):
        with pytest.raises(WarehouseNotVerified) as info:
            run_pg({**config, "sslmode": mode}, credentials, "SELECT 1")
        assert _code(info.value) == "warehouse_tls_failed"


def test_password_never_appears_in_errors(
        pg: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    """The test server trusts every login, so the planted password reaches every step."""
    config, credentials, _ = pg
    planted = {**credentials, "password": SECRET}
    attempts: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        (config, planted, f'SELECT "{SECRET}" FROM accounts'),  # the server echoes it
        (config, planted, f"SELECT '{SECRET}'::integer"),
        (config, planted, f"INSERT INTO accounts (name) VALUES ('{SECRET}')"),
        (config, {**planted, "user": "nobody_here"}, "SELECT 1"),
        (config, {**planted, "user": SECRET}, "SELECT 1"),
        ({**config, "database": SECRET}, planted, "SELECT 1"),
        ({**config, "port": _free_port()}, planted, "SELECT 1"),
    ]
    for cfg, creds, sql in attempts:
        with pytest.raises(CmekError) as info:
            run_pg(cfg, creds, sql)
        assert SECRET not in str(info.value), (cfg, sql)
        assert SECRET not in repr(info.value.args)
    assert pgq((config, planted, ""), "SELECT 1").rows == [[1]]
