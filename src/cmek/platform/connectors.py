"""Warehouse connectors: a tenant's stored connection runs read-only SQL against its warehouse.

Read-only is enforced twice. A cheap check up front refuses anything but one statement of a
read kind, so the tenant gets a clear ``sql_not_read_only``; the warehouse itself then runs the
statement in read-only mode (a DuckDB file opened ``read_only``, a PostgreSQL ``READ ONLY``
transaction over the extended protocol, which also refuses a second statement), so a statement
the first check lets through still cannot write.

DuckDB runs inside this process, so it is opened with file access, extension loading and
configuration changes turned off: a tenant's SELECT cannot read the platform's own files.

Error mapping (``code``):
  sql_not_read_only      not exactly one SELECT-like statement, or the warehouse refused a write
  invalid_connection     bad type/config/credentials, a missing or non-DuckDB file, a
                         PostgreSQL database that does not exist, SSL required but unsupported
  warehouse_auth_failed  PostgreSQL refused the user or password
  warehouse_unreachable  connection refused, unknown host, connect timeout, dropped connection,
                         a DuckDB file locked by another process
  warehouse_error        the warehouse refused the SQL (syntax, unknown table, statement
                         timeout, ...); the message is the warehouse's first line, <= 300 chars
No message ever contains the connection's password: if one would, a generic message is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
import re
import threading
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import duckdb
import psycopg
from psycopg import capabilities

from cmek.errors import CmekError, InvalidInput

CONNECTION_TYPES = ("duckdb", "postgres")
SSL_MODES = ("disable", "prefer", "require")
MAX_SQL_CHARS = 100_000
MAX_MESSAGE_CHARS = 300
MAX_CONNECT_TIMEOUT_S = 10
_APPLICATION_NAME = "cmek-connector"


class ConnectorError(CmekError):
    code = "warehouse_error"


class SqlNotReadOnly(ConnectorError):
    code = "sql_not_read_only"


class InvalidConnection(ConnectorError):
    code = "invalid_connection"


class WarehouseAuthFailed(ConnectorError):
    code = "warehouse_auth_failed"


class WarehouseUnreachable(ConnectorError):
    code = "warehouse_unreachable"


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows],
                "truncated": self.truncated}


# --- validation ---------------------------------------------------------------------------


def _field_name(name: object) -> str:
    """A tenant-chosen key, shown in a message: bounded, one line, never a value."""
    text = name if isinstance(name, str) else type(name).__name__
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= 64 else text[:61] + "..."


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidConnection(f"{where} must be an object")
    for key in value:
        if not isinstance(key, str):
            raise InvalidConnection(f"{where} keys must be strings")
    return value


def _check_fields(value: Mapping[str, Any], where: str, required: Iterable[str],
                  optional: Iterable[str] = ()) -> None:
    required = tuple(required)
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            raise InvalidConnection(f"unexpected field {where}.{_field_name(key)}")
    for key in required:
        if key not in value:
            raise InvalidConnection(f"missing field {where}.{key}")


def _text(value: object, where: str, *, max_len: int, allow_empty: bool = False) -> str:
    """A string field; the value itself is never put in the message."""
    if not isinstance(value, str):
        raise InvalidConnection(f"{where} must be a string")
    if not value and not allow_empty:
        raise InvalidConnection(f"{where} must not be empty")
    if len(value) > max_len:
        raise InvalidConnection(f"{where} must be at most {max_len} characters")
    if "\x00" in value:
        raise InvalidConnection(f"{where} must not contain NUL characters")
    return value


def validate_connection(kind: str, config: Mapping[str, Any],
                        credentials: Mapping[str, Any]) -> None:
    """Refuse a connection that could not work, before it is stored or used."""
    if kind not in CONNECTION_TYPES:
        raise InvalidConnection(
            f"type must be one of {', '.join(CONNECTION_TYPES)}")
    config = _mapping(config, "config")
    credentials = _mapping(credentials, "credentials")
    if kind == "duckdb":
        _check_fields(config, "config", ("path",))
        path = _text(config["path"], "config.path", max_len=4096)
        if not os.path.isabs(path):
            raise InvalidConnection("config.path must be an absolute path")
        if not os.path.isfile(path):
            raise InvalidConnection("config.path is not an existing file")
        return
    _check_fields(config, "config", ("host", "database"), ("port", "sslmode"))
    host = _text(config["host"], "config.host", max_len=255)
    if any(ch.isspace() or not ch.isprintable() for ch in host) or "," in host:
        raise InvalidConnection("config.host must be a single host name or address")
    _text(config["database"], "config.database", max_len=63)
    port = config.get("port", 5432)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidConnection("config.port must be an integer from 1 to 65535")
    if "sslmode" in config and config["sslmode"] not in SSL_MODES:
        raise InvalidConnection(f"config.sslmode must be one of {', '.join(SSL_MODES)}")
    _check_fields(credentials, "credentials", ("user", "password"))
    _text(credentials["user"], "credentials.user", max_len=63)
    _text(credentials["password"], "credentials.password", max_len=1024, allow_empty=True)


# --- messages -----------------------------------------------------------------------------


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    line = lines[0] if lines else "the warehouse reported an error"
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


def _scrub(message: str, secrets: Iterable[str], fallback: str) -> str:
    """The warehouse's first line, unless it carries a secret anywhere: then only ``fallback``."""
    if any(secret and secret in message for secret in secrets):
        return fallback
    return _one_line(message)


# --- values -------------------------------------------------------------------------------


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


def _collect(columns: list[str], rows: Iterator[tuple[Any, ...]], max_rows: int) -> QueryResult:
    out: list[list[Any]] = []
    truncated = False
    for row in rows:
        if len(out) == max_rows:
            truncated = True
            break
        out.append([_json_value(v) for v in row])
    return QueryResult(columns=columns, rows=out, truncated=truncated)


# --- entry point --------------------------------------------------------------------------


def run_query(kind: str, config: Mapping[str, Any], credentials: Mapping[str, Any], sql: str,
              *, max_rows: int = 10_000, timeout_s: float = 30.0) -> QueryResult:
    """Run one read-only statement; at most ``max_rows`` rows come back."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("sql must be a non-empty string")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidInput(f"sql must be at most {MAX_SQL_CHARS} characters")
    if "\x00" in sql:
        raise InvalidInput("sql must not contain NUL characters")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InvalidInput("max_rows must be a positive integer")
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s < math.inf:
        raise InvalidInput("timeout_s must be a positive number")
    validate_connection(kind, config, credentials)
    if kind == "duckdb":
        return _run_duckdb(str(config["path"]), sql, max_rows, float(timeout_s))
    return _run_postgres(config, credentials, sql, max_rows, float(timeout_s))


# --- DuckDB -------------------------------------------------------------------------------

_DUCKDB_READ_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
# The tenant's SQL runs in this process: no files but the database, no extensions, no SET.
_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


def _duckdb_statement(sql: str) -> Any:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConnectorError(_one_line(str(exc))) from None
    if len(statements) != 1:
        raise SqlNotReadOnly(
            f"sql must be exactly one statement, found {len(statements)}")
    statement = statements[0]
    if statement.type not in _DUCKDB_READ_TYPES:
        raise SqlNotReadOnly(
            f"only SELECT and EXPLAIN statements are allowed, not {statement.type.name}")
    return statement


def _duckdb_open(path: str) -> duckdb.DuckDBPyConnection:
    if not os.path.isfile(path):
        raise InvalidConnection("config.path is not an existing file")
    try:
        return duckdb.connect(path, read_only=True, config=_DUCKDB_CONFIG)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise WarehouseUnreachable("the DuckDB file is locked by another process") from None
        if "not a valid DuckDB database" in text or "does not exist" in text:
            raise InvalidConnection("config.path is not a DuckDB database file") from None
        raise WarehouseUnreachable(_one_line(text)) from None
    except duckdb.Error as exc:
        raise ConnectorError(_one_line(str(exc))) from None


def _run_duckdb(path: str, sql: str, max_rows: int, timeout_s: float) -> QueryResult:
    statement = _duckdb_statement(sql)
    conn = _duckdb_open(path)
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        conn.interrupt()

    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    try:
        timer.start()
        cursor = conn.execute(statement)
        columns = [str(d[0]) for d in cursor.description or ()]
        return _collect(columns, _duckdb_rows(cursor, max_rows), max_rows)
    except duckdb.InterruptException:
        raise ConnectorError(f"query cancelled after the {timeout_s:g} s timeout") from None
    except duckdb.Error as exc:
        if timed_out.is_set():
            raise ConnectorError(f"query cancelled after the {timeout_s:g} s timeout") from None
        text = str(exc)
        if "read-only mode" in text:
            raise SqlNotReadOnly(_one_line(text)) from None
        raise ConnectorError(_one_line(text)) from None
    finally:
        timer.cancel()
        conn.close()


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


def _pg_check(sql: str) -> None:
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


def _pg_connect_error(exc: psycopg.Error, secrets: tuple[str, ...]) -> ConnectorError:
    """Classify a failed connect; libpq gives no SQLSTATE here, only its message."""
    text = str(exc)
    lowered = text.lower()
    if "database \"" in lowered and "does not exist" in lowered:
        return InvalidConnection(_scrub(text, secrets, "the database does not exist"))
    if "ssl" in lowered and ("does not support" in lowered or "not compiled" in lowered):
        return InvalidConnection(_scrub(text, secrets, "the server does not support SSL"))
    if any(marker in lowered for marker in _PG_AUTH_MARKERS):
        return WarehouseAuthFailed(_scrub(text, secrets, "the warehouse refused the login"))
    return WarehouseUnreachable(_scrub(text, secrets, "could not connect to the warehouse"))


def _run_postgres(config: Mapping[str, Any], credentials: Mapping[str, Any], sql: str,
                  max_rows: int, timeout_s: float) -> QueryResult:
    _pg_check(sql)
    password = str(credentials["password"])
    secrets = (password,)
    try:
        conn = psycopg.connect(
            host=str(config["host"]), port=int(config.get("port", 5432)),
            dbname=str(config["database"]), user=str(credentials["user"]), password=password,
            sslmode=str(config.get("sslmode", "prefer")),
            connect_timeout=max(1, min(MAX_CONNECT_TIMEOUT_S, math.ceil(timeout_s))),
            application_name=_APPLICATION_NAME,
        )
    except psycopg.Error as exc:
        raise _pg_connect_error(exc, secrets) from None
    try:
        # Not autocommit: psycopg opens the transaction with BEGIN READ ONLY; close() rolls back.
        conn.read_only = True
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('TimeZone', 'UTC', true)",
                (str(max(1, math.ceil(timeout_s * 1000))),),
            )
            # stream(): extended protocol (one statement only), rows fetched as needed
            chunk = min(max_rows + 1, 1000) if capabilities.has_stream_chunked() else 1
            rows = cast(Generator[Any, None, None], cursor.stream(sql, size=chunk))
            try:
                first = next(rows, None)
                columns = [d.name for d in cursor.description or ()]
                return _collect(columns, _chain(first, rows), max_rows)
            finally:
                rows.close()  # cancels the rest of a truncated result
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise SqlNotReadOnly(_scrub(str(exc), secrets, "the warehouse refused a write")) from None
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
