"""A tenant's warehouse connection: what may be stored, and where it may lead.

Everything here is the tenant's choice and is checked as hostile input:

- DuckDB: ``config.path`` names a file inside the tenant's own warehouse folder (relative,
  plain names only; after resolving links it must still be inside, or it is treated as
  absent). Nothing else on the host can be named.
- PostgreSQL: ``config.host`` is one DNS name or IP address, pinned by the egress policy;
  no field may hold a control character; TLS defaults to ``verify-full`` (against
  ``config.ca_pem`` if given, else the system's CAs). A weaker ``sslmode`` is kept only as
  the tenant's explicit choice, and is shown as such when the connection is read back.

Messages name the field, never its value: a value may be a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from cmek.platform.warehouse.egress import EgressPolicy, host_syntax
from cmek.platform.warehouse.errors import InvalidConnection

CONNECTION_TYPES = ("duckdb", "postgres")
SSL_MODES = ("verify-full", "verify-ca", "require", "disable")
DEFAULT_SSLMODE = "verify-full"
MAX_CA_PEM_CHARS = 65_536
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MAX_PATH_PARTS = 8
NOT_IN_AREA = "config.path is not a file in the tenant's warehouse folder"


@dataclass(frozen=True)
class Target:
    """Where one query goes, resolved and checked by the platform; what the query
    process receives. ``path`` is absolute; ``hostaddr`` is the pinned address."""

    kind: str
    path: str = ""
    host: str = ""
    hostaddr: str = ""
    port: int = 5432
    database: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    sslmode: str = DEFAULT_SSLMODE
    ca_pem: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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
    """A string field without control characters; the value is never in the message."""
    if not isinstance(value, str):
        raise InvalidConnection(f"{where} must be a string")
    if not value and not allow_empty:
        raise InvalidConnection(f"{where} must not be empty")
    if len(value) > max_len:
        raise InvalidConnection(f"{where} must be at most {max_len} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise InvalidConnection(f"{where} must not contain control characters")
    return value


def _relative_path(value: object) -> str:
    text = _text(value, "config.path", max_len=1024)
    parts = text.split("/")
    if len(parts) > _MAX_PATH_PARTS or not all(_PATH_PART.match(p) for p in parts):
        raise InvalidConnection(
            "config.path must be a path inside the tenant's warehouse folder: up to "
            f"{_MAX_PATH_PARTS} names of letters, digits, '.', '_' and '-' joined by '/', "
            "none starting with '.'")
    return text


def _ca_pem(value: object) -> str:
    """PEM text (line breaks are its only control characters), parsed before it is kept."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CA_PEM_CHARS:
        raise InvalidConnection(
            f"config.ca_pem must be PEM text of at most {MAX_CA_PEM_CHARS} characters")
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise InvalidConnection("config.ca_pem must be one or more PEM certificates") from None
    return value


def validate_connection(kind: str, config: Mapping[str, Any],
                        credentials: Mapping[str, Any]) -> dict[str, Any]:
    """The connection as it is stored (defaults filled in), or a refusal that names the
    field. Checks only its form; where it leads is checked when it is used."""
    if kind not in CONNECTION_TYPES:
        raise InvalidConnection(f"type must be one of {', '.join(CONNECTION_TYPES)}")
    config = _mapping(config, "config")
    credentials = _mapping(credentials, "credentials")
    if kind == "duckdb":
        _check_fields(config, "config", ("path",))
        _check_fields(credentials, "credentials", ())
        return {"path": _relative_path(config["path"])}
    _check_fields(config, "config", ("host", "database"), ("port", "sslmode", "ca_pem"))
    host = host_syntax(_text(config["host"], "config.host", max_len=253))
    database = _text(config["database"], "config.database", max_len=63)
    port = config.get("port", 5432)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidConnection("config.port must be an integer from 1 to 65535")
    sslmode = config.get("sslmode", DEFAULT_SSLMODE)
    if sslmode not in SSL_MODES:
        raise InvalidConnection(
            f"config.sslmode must be one of {', '.join(SSL_MODES)} (default "
            f"{DEFAULT_SSLMODE}; 'prefer' and 'allow' can fall back to no TLS unseen)")
    stored: dict[str, Any] = {"host": host, "port": port, "database": database,
                              "sslmode": sslmode}
    if "ca_pem" in config:
        if not str(sslmode).startswith("verify-"):
            raise InvalidConnection("config.ca_pem is used only with sslmode verify-full "
                                    "or verify-ca")
        stored["ca_pem"] = _ca_pem(config["ca_pem"])
    elif sslmode == "verify-ca":
        raise InvalidConnection("config.ca_pem is needed with sslmode verify-ca (the system's "
                                "CAs are used with verify-full only)")
    _check_fields(credentials, "credentials", ("user", "password"))
    _text(credentials["user"], "credentials.user", max_len=63)
    _text(credentials["password"], "credentials.password", max_len=1024, allow_empty=True)
    return stored


def connection_view(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """What a tenant reads back: never credentials; the TLS choice spelt out."""
    view: dict[str, Any] = {k: v for k, v in config.items() if k != "ca_pem"}
    if kind == "postgres":
        sslmode = str(config.get("sslmode", DEFAULT_SSLMODE))
        view["sslmode"] = sslmode
        view["server_verified"] = sslmode.startswith("verify-")
        view["ca"] = "custom" if "ca_pem" in config else "system"
    return view


def resolve_duckdb(area: Path, relative: str) -> str:
    """The real path of a file inside ``area``; anything else is reported as absent, so
    the answer says nothing of the rest of the host."""
    root = os.path.realpath(area)
    real = os.path.realpath(os.path.join(root, _relative_path(relative)))
    if os.path.commonpath([real, root]) != root or real == root or not os.path.isfile(real):
        raise InvalidConnection(NOT_IN_AREA)
    return real


def resolve_target(kind: str, config: Mapping[str, Any], credentials: Mapping[str, Any], *,
                   area: Path, egress: EgressPolicy) -> Target:
    """Check a stored connection again (it may predate a rule) and fix where it goes."""
    stored = validate_connection(kind, config, credentials)
    if kind == "duckdb":
        return Target("duckdb", path=resolve_duckdb(area, stored["path"]))
    port = int(stored["port"])
    return Target(
        "postgres", host=stored["host"], hostaddr=egress.pin(stored["host"], port),
        port=port, database=stored["database"], user=str(credentials["user"]),
        password=str(credentials["password"]), sslmode=stored["sslmode"],
        ca_pem=str(stored.get("ca_pem", "")))
