"""How a setting's value is read and written back: seconds, secrets, URLs, folders, lists
and networks.

Kept apart from the settings model so that it reads as the list of settings and their rules.
A value that does not parse raises :class:`Invalid` with the one line that
``load_settings`` reports after the setting's name.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from cmek.db import normalize_url
from cmek.errors import CmekError
from cmek.platform.addresses import parse_networks
from cmek.platform.warehouse.egress import EgressPolicy

MIN_SECRET_CHARS = 16

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Invalid(ValueError):
    """Carries our own one-line message through pydantic, so no ``Value error,`` prefix leaks."""


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_seconds(value: Any, *, allow_zero: bool) -> float:
    op = ">=" if allow_zero else ">"
    problem = f"must be a number of seconds {op} 0, got {shown(value)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(problem)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise Invalid(problem)
    return seconds


def duration(seconds: float) -> str:
    """Seconds as written in settings, and in the largest whole unit: ``2592000 s (30 d)``."""
    text = f"{seconds:.0f} s" if float(seconds).is_integer() else f"{seconds} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{text} ({seconds / size:.0f} {unit})"
    return text


def parse_secret(value: Any) -> SecretStr | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {type(value).__name__}")  # never the value
    if len(value) < MIN_SECRET_CHARS:
        raise Invalid(f"must be at least {MIN_SECRET_CHARS} characters when set")
    return SecretStr(value)


def parse_http_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise Invalid(f"must be an http:// or https:// URL, got {shown(value)}")
    if value.lower().startswith("http://") and not _loopback(urlsplit(value).hostname):
        # Data keys cross this link in the clear without TLS: only a local endpoint may.
        raise Invalid(f"plain http:// is allowed only to a loopback host; use https://, "
                      f"got {shown(value)}")
    return value


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_database_url(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {type(value).__name__}")
    url = normalize_url(value)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    if url.startswith("postgresql://") and len(url) > len("postgresql://"):
        return url
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    # Only the scheme is echoed: the rest may hold a password.
    raise Invalid("must start with sqlite:///, postgresql:// or postgres://, "
                  f"got one starting with {scheme!r}")


def parse_object_store(value: Any) -> str:
    if isinstance(value, str):
        if value.startswith("file:///"):
            return value
        if value.startswith("s3://"):
            bucket, _, prefix = value.removeprefix("s3://").partition("/")
            if _BUCKET.match(bucket) and ".." not in bucket and "//" not in prefix:
                return value
    raise Invalid(f"must be file:///absolute/folder or s3://bucket[/prefix], "
                  f"got {shown(value)}")


def parse_dir(value: Any) -> Path:
    if isinstance(value, str) and value:
        value = Path(value)
    if not isinstance(value, Path):
        raise Invalid(f"must be a folder path, got {shown(value)}")
    return value.expanduser().resolve()


def parse_entries(value: Any, what: str) -> list[str]:
    """A list: from TOML as a list, from the environment comma-separated."""
    if isinstance(value, str):
        value = [v for v in (part.strip() for part in value.split(",")) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"must be a list of {what}")
    return list(value)


def parse_networks_list(value: Any) -> tuple[str, ...]:
    value = parse_entries(value, "CIDRs or addresses")
    try:
        parse_networks(value)
    except ValueError as e:
        raise Invalid(f"must be CIDRs or addresses: {e}") from None
    return tuple(value)


def parse_egress_list(value: Any) -> tuple[str, ...]:
    value = parse_entries(value, "CIDRs, addresses or host names")
    try:
        EgressPolicy.parse(value)
    except CmekError as e:
        raise Invalid(f"must be CIDRs, addresses or host names: {e.message}") from None
    return tuple(value)
