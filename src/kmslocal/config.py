"""Configuration: region, principals (access keys) and event targets, from TOML.

Without a config file (or with one that lists no principals) the two documented dev
principals exist, so ``kmslocal serve`` works out of the box.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmslocal.sigv4 import Credential

DEFAULT_REGION = "us-west-2"

# Documented, fixed, and useless outside kmslocal: a provider and a customer key admin.
DEV_PRINCIPALS = (
    Credential(
        access_key_id="AKIAKMSLOCALPROVIDER",
        secret_access_key="kmslocal-dev-provider-secret",  # noqa: S106 - documented dev key
        principal_arn="arn:aws:iam::111111111111:role/cmek-platform",
    ),
    Credential(
        access_key_id="AKIAKMSLOCALCUSTOMER",
        secret_access_key="kmslocal-dev-customer-secret",  # noqa: S106 - documented dev key
        principal_arn="arn:aws:iam::222222222222:user/key-admin",
    ),
)

_PRINCIPAL_ARN = re.compile(r"^arn:aws:iam::(\d{12}):(user|role)/[\w+=,.@/-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


@dataclass(frozen=True)
class EventTarget:
    account: str
    url: str
    secret_header: str = "X-Cmek-Event-Secret"  # noqa: S105 - a header name
    secret: str = ""


@dataclass(frozen=True)
class Config:
    region: str = DEFAULT_REGION
    principals: tuple[Credential, ...] = DEV_PRINCIPALS
    event_targets: tuple[EventTarget, ...] = field(default_factory=tuple)

    def credential(self, access_key_id: str) -> Credential | None:
        for cred in self.principals:
            if cred.access_key_id == access_key_id:
                return cred
        return None


def account_of(principal_arn: str) -> str:
    return principal_arn.split(":")[4]


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def load(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    region = _str(raw, "region", "config", DEFAULT_REGION)
    if not _REGION.match(region):
        raise ConfigError(f"config: region {region!r} is not an AWS region name")
    principals = []
    for i, p in enumerate(raw.get("principals", [])):
        where = f"principals[{i}]"
        arn = _str(p, "arn", where)
        if not _PRINCIPAL_ARN.match(arn):
            raise ConfigError(f"{where}: arn {arn!r} is not an IAM user or role ARN")
        principals.append(
            Credential(_str(p, "access_key_id", where), _str(p, "secret_access_key", where), arn)
        )
    if len({p.access_key_id for p in principals}) != len(principals):
        raise ConfigError("config: two principals share an access_key_id")
    targets = []
    for i, t in enumerate(raw.get("event_targets", [])):
        where = f"event_targets[{i}]"
        account = _str(t, "account", where)
        if not re.fullmatch(r"\d{12}", account):
            raise ConfigError(f"{where}: account must be 12 digits")
        url = _str(t, "url", where)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be http(s)")
        targets.append(
            EventTarget(
                account, url, _str(t, "secret_header", where, "X-Cmek-Event-Secret"),
                str(t.get("secret", "")),
            )
        )
    return Config(region, tuple(principals) or DEV_PRINCIPALS, tuple(targets))
