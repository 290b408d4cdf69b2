"""Running one read-only statement against a resolved target, in the current process.

The platform never calls this itself: :mod:`cmek.platform.warehouse.sandbox` runs it in a
query process of its own, under memory, CPU and time limits. Read-only is enforced twice:
a cheap check up front refuses anything but one statement of a read kind (a clear
``sql_not_read_only``), and the warehouse then runs it read-only (a DuckDB file opened
``read_only``; a PostgreSQL ``READ ONLY`` transaction over the extended protocol, which
also refuses a second statement).

DuckDB is opened with file access, extension loading, spilling and configuration changes
off, one thread and a memory limit: a tenant's SELECT reads its own file and nothing else.
PostgreSQL is reached at the pinned address only; the server must prove its name
(``verify-full`` by default) and may not ask for the password in clear or as md5, so a
fake server learns nothing; the platform's own password files, service files and client
certificates are never read.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import duckdb
import psycopg
from psycopg import capabilities
from psycopg.conninfo import make_conninfo

from cmek.errors import InvalidInput
from cmek.files import private_file
from cmek.platform.warehouse.connections import Target
from cmek.platform.warehouse.errors import (
    ConnectorError,
    InvalidConnection,
    QueryResourcesExceeded,
    QueryResultTooLarge,
    QueryTimeout,
    SqlNotReadOnly,
    WarehouseAuthFailed,
    WarehouseNotVerified,
    WarehouseUnreachable,
)

MAX_SQL_CHARS = 100_000
MAX_MESSAGE_CHARS = 300
MAX_CONNECT_TIMEOUT_S = 10
_APPLICATION_NAME = "cmek-connector"
# Neither hands a fake server the password (cleartext) or a hash it can attack (md5).
_REQUIRE_AUTH = "!password,!md5"


@dataclass(frozen=True)
class QueryLimits:
    """Per query. ``memory_bytes`` and ``cpu_seconds`` bind the query process; the rest
    bind the answer and the clock."""

    max_rows: int = 10_000
    max_result_bytes: int = 4 * 1024 * 1024
    wall_seconds: float = 30.0
    cpu_seconds: float = 30.0
    memory_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_result_bytes < 1024 or self.memory_bytes < 1 << 26:
            raise ValueError("query limits: max_rows >= 1, max_result_bytes >= 1 KiB, "
                             "memory_bytes >= 64 MiB")
        if not (0 < self.wall_seconds < math.inf and 0 < self.cpu_seconds < math.inf):
            raise ValueError("query limits: wall_seconds and cpu_seconds must be > 0")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows],
                "truncated": self.truncated}


def check_sql(sql: object) -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("sql must be a non-empty string")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidInput(f"sql must be at most {MAX_SQL_CHARS} characters")
    if "\x00" in sql:
        raise InvalidInput("sql must not contain NUL characters")
    return sql


def execute(target: Target, sql: str, limits: QueryLimits) -> QueryResult:
    """Run one read-only statement; at most ``limits.max_rows`` rows come back."""
    check_sql(sql)
    if target.kind == "duckdb":
        return _run_duckdb(target.path, sql, limits)
    return _run_postgres(target, sql, limits)


# --- messages and values ------------------------------------------------------------------


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    line = lines[0] if lines else "the warehouse reported an error"
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


def _scrub(message: str, secrets: Iterable[str], fallback: str) -> str:
    """The warehouse's first line, unless it carries a secret anywhere: then only ``fallback``."""
    if any(secret and secret in message for secret in secrets):
        return fallback
    return _one_line(message)


def _json_value(value: Any) -> Any:
    """One cell as a JSON-safe value; lossy only where JSON has no equivalent."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        if value.is_finite():
            as_float = float(value)
            if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
                return as_float
        return str(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):  # arrays, DuckDB lists
        return [_json_value(v) for v in value]
    if isinstance(value, dict):  # JSON/JSONB, DuckDB structs and maps
        return {k if isinstance(k, str) else str(_json_value(k)): _json_value(v)
                for k, v in value.items()}
    return str(value)


def _collect(columns: list[str], rows: Iterator[tuple[Any, ...]],
             limits: QueryLimits) -> QueryResult:
    """Rows up to the row cap; the answer's JSON size is counted as it grows, so an
    oversized result is refused before it is all held."""
    budget = limits.max_result_bytes - len(json.dumps(columns).encode())
    out: list[list[Any]] = []
    truncated = False
    for row in rows:
        if len(out) == limits.max_rows:
            truncated = True
            break
        cells = [_json_value(v) for v in row]
        budget -= len(json.dumps(cells, ensure_ascii=False).encode()) + 1
        if budget < 0:
            raise QueryResultTooLarge(
                f"the result is larger than {limits.max_result_bytes} bytes; "
                "select fewer rows or columns")
        out.append(cells)
    return QueryResult(columns=columns, rows=out, truncated=truncated)


# --- DuckDB -------------------------------------------------------------------------------


def _duckdb_config(limits: QueryLimits) -> dict[str, str | bool | int | float | list[str]]:
    return {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "temp_directory": "",  # no spilling to disk: memory is the limit
        "threads": 1,
        "memory_limit": f"{max(32, limits.memory_bytes // 2 >> 20)}MB",
    }


def _duckdb_statement(sql: str) -> Any:
    """Exactly one SELECT. EXPLAIN is refused too: ``EXPLAIN ANALYZE`` runs what it wraps."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConnectorError(_one_line(str(exc))) from None
    if len(statements) != 1:
        raise SqlNotReadOnly(f"sql must be exactly one statement, found {len(statements)}")
    statement = statements[0]
    if statement.type is not duckdb.StatementType.SELECT:
        raise SqlNotReadOnly(
            f"only SELECT statements are allowed, not {statement.type.name}")
    return statement


def _duckdb_open(path: str, limits: QueryLimits) -> duckdb.DuckDBPyConnection:
    if not os.path.isfile(path):
        raise InvalidConnection("config.path is not an existing file")
    try:
        conn = duckdb.connect(path, read_only=True, config=_duckdb_config(limits))
        conn.execute("SET enable_progress_bar = false")  # it would write to the answer
        conn.execute("SET lock_configuration = true")  # and from here on, nothing changes
        return conn
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise WarehouseUnreachable("the DuckDB file is locked by another process") from None
        if "not a valid DuckDB database" in text or "does not exist" in text:
            raise InvalidConnection("config.path is not a DuckDB database file") from None
        raise WarehouseUnreachable(_one_line(text)) from None
    except duckdb.Error as exc:
        raise ConnectorError(_one_line(str(exc))) from None


def _run_duckdb(path: str, sql: str, limits: QueryLimits) -> QueryResult:
    statement = _duckdb_statement(sql)
    conn = _duckdb_open(path, limits)
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        conn.interrupt()

    timer = threading.Timer(limits.wall_seconds, interrupt)
    timer.daemon = True
    try:
        timer.start()
        cursor = conn.execute(statement)
        columns = [str(d[0]) for d in cursor.description or ()]
        return _collect(columns, _duckdb_rows(cursor, limits.max_rows), limits)
    except duckdb.OutOfMemoryException:
        raise QueryResourcesExceeded("the query needed more memory than it may use") from None
    except duckdb.InterruptException:
        raise _timeout(limits) from None
    except duckdb.Error as exc:
        if timed_out.is_set():
            raise _timeout(limits) from None
        text = str(exc)
        if "read-only mode" in text:
            raise SqlNotReadOnly(_one_line(text)) from None
        raise ConnectorError(_one_line(text)) from None
    finally:
        timer.cancel()
        conn.close()


def _timeout(limits: QueryLimits) -> QueryTimeout:
    return QueryTimeout(f"query cancelled after the {limits.wall_seconds:g} s timeout")


def _duckdb_rows(cursor: duckdb.DuckDBPyConnection, max_rows: int) -> Iterator[tuple[Any, ...]]:
    """Fetch in batches, one row past the cap at most, so truncation is known."""
    wanted = max_rows + 1
    while wanted > 0:
        batch = cursor.fetchmany(min(wanted, 1000))
        if not batch:
            return
        wanted -= len(batch)
        yield from batch


# --- PostgreSQL ---------------------------------------------------------------------------

_PG_READ_KEYWORDS = frozenset({"select", "with", "values", "table", "explain", "show"})
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")


def _pg_code_only(sql: str) -> str:
    """``sql`` with comments and literals blanked, so `;` and keywords are seen as code.

    Lightweight on purpose: PostgreSQL is the real guard (read-only transaction, extended
    protocol refusing a second statement); this only gives a clear early refusal.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if ch == "-" and nxt == "-":
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif ch == "/" and nxt == "*":
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif ch in "'\"":
            escapes = ch == "'" and i > 0 and sql[i - 1] in "eE" and (
                i < 2 or not _IDENT_CHAR.match(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == ch:
                    if sql.startswith(ch * 2, i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            out.append(" x ")
        elif ch == "$" and (i == 0 or not _IDENT_CHAR.match(sql[i - 1])):
            match = _DOLLAR_TAG.match(sql, i)
            if match is None:
                out.append(ch)
                i += 1
                continue
            end = sql.find(match.group(0), match.end())
            i = n if end < 0 else end + len(match.group(0))
            out.append(" x ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def pg_check(sql: str) -> None:
    code = _pg_code_only(sql)
    semicolon = code.find(";")
    if semicolon >= 0 and code[semicolon + 1:].strip():
        raise SqlNotReadOnly("sql must be exactly one statement")
    match = re.match(r"[\s(]*([A-Za-z_]+)", code)
    if match is None:
        raise SqlNotReadOnly("sql must be exactly one statement, found none")
    if match.group(1).lower() not in _PG_READ_KEYWORDS:
        raise SqlNotReadOnly(
            "only SELECT, WITH, VALUES, TABLE, EXPLAIN and SHOW statements are allowed")


_PG_AUTH_MARKERS = (
    "password authentication failed", "authentication failed", "no password supplied",
    "password is required", "role \"", "no pg_hba.conf entry", "not permitted to log in",
)
_PG_TLS_MARKERS = (
    "ssl", "certificate", "does not match host name", "tls",
)


def _pg_connect_error(exc: psycopg.Error, secrets: tuple[str, ...]) -> ConnectorError:
    """Classify a failed connect; libpq gives no SQLSTATE here, only its message."""
    text = str(exc)
    lowered = text.lower()
    if "authentication method requirement" in lowered:
        return WarehouseAuthFailed(
            "the warehouse asked for the password in clear or as md5; it was not sent "
            "(use SCRAM authentication)")
    if "database \"" in lowered and "does not exist" in lowered:
        return InvalidConnection(_scrub(text, secrets, "the database does not exist"))
    if any(marker in lowered for marker in _PG_TLS_MARKERS):
        return WarehouseNotVerified(_scrub(
            text, secrets, "TLS to the warehouse failed; the password was not sent"))
    if any(marker in lowered for marker in _PG_AUTH_MARKERS):
        return WarehouseAuthFailed(_scrub(text, secrets, "the warehouse refused the login"))
    return WarehouseUnreachable(_scrub(text, secrets, "could not connect to the warehouse"))


def _pg_tls(target: Target, folder: str) -> dict[str, str]:
    """libpq's TLS settings; a custom CA is written to the query process's own folder."""
    tls = {"sslmode": target.sslmode, "sslcertmode": "disable"}
    if target.sslmode.startswith("verify-"):
        if target.ca_pem:
            path = os.path.join(folder, "ca.pem")
            private_file(path, target.ca_pem)
            tls["sslrootcert"] = path
        else:
            tls["sslrootcert"] = "system"
    return tls


def _run_postgres(target: Target, sql: str, limits: QueryLimits) -> QueryResult:
    pg_check(sql)
    secrets = (target.password,)
    with tempfile.TemporaryDirectory(prefix="cmek-query-") as folder:
        try:
            conn = psycopg.connect(make_conninfo(
                "", host=target.host, hostaddr=target.hostaddr, port=target.port,
                dbname=target.database, user=target.user, password=target.password,
                connect_timeout=max(1, min(MAX_CONNECT_TIMEOUT_S,
                                           math.ceil(limits.wall_seconds))),
                application_name=_APPLICATION_NAME, require_auth=_REQUIRE_AUTH,
                passfile=os.path.join(folder, "none"), **_pg_tls(target, folder)))
        except psycopg.Error as exc:
            raise _pg_connect_error(exc, secrets) from None
    try:
        # Not autocommit: psycopg opens the transaction with BEGIN READ ONLY; close() rolls back.
        conn.read_only = True
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('TimeZone', 'UTC', true)",
                (str(max(1, math.ceil(limits.wall_seconds * 1000))),),
            )
            # stream(): extended protocol (one statement only), rows fetched as needed
            chunk = min(limits.max_rows + 1, 1000) if capabilities.has_stream_chunked() else 1
            rows = cast(Generator[Any, None, None], cursor.stream(sql, size=chunk))
            try:
                first = next(rows, None)
                columns = [d.name for d in cursor.description or ()]
                return _collect(columns, _chain(first, rows), limits)
            finally:
                rows.close()  # cancels the rest of a truncated result
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise SqlNotReadOnly(_scrub(str(exc), secrets, "the warehouse refused a write")) from None
    except psycopg.errors.QueryCanceled:
        raise _timeout(limits) from None
    except psycopg.OperationalError as exc:
        if exc.sqlstate is None or exc.sqlstate.startswith("08"):
            raise WarehouseUnreachable(
                _scrub(str(exc), secrets, "lost the connection to the warehouse")) from None
        raise ConnectorError(_scrub(str(exc), secrets, "the warehouse refused the query")) from None
    except psycopg.Error as exc:
        raise ConnectorError(_scrub(str(exc), secrets, "the warehouse refused the query")) from None
    finally:
        conn.close()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    if first is None:
        return
    yield tuple(first)
    for row in rest:
        yield tuple(row)
