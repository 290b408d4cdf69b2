"""Configuration: region, principals (access keys) and event targets, from TOML.

Without a config file (or with one that lists no principals) the two documented dev
principals exist, so ``kmslocal serve`` works out of the box. Event targets registered
at run time (dev mode) are checked by the same code as those of the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
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
_ACCOUNT = re.compile(r"^\d{12}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_KEY_ID = re.compile(r"^[0-9A-Za-z-]+$")
_TARGET_FIELDS = ("account", "url", "secret_header", "secret", "resources")
DEFAULT_SECRET_HEADER = "X-Cmek-Event-Secret"  # noqa: S105 - a header name


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


@dataclass(frozen=True)
class EventTarget:
    """An EventBridge rule on ``account``'s bus with an API destination as its target.

    ``resources``, like a rule's ``resources`` pattern, narrows it to events about those
    keys; empty, the target receives every event of the account.
    """

    account: str
    url: str
    secret_header: str = DEFAULT_SECRET_HEADER
    secret: str = ""
    resources: tuple[str, ...] = ()

    def wants(self, account: str, resources: Sequence[str]) -> bool:
        if account != self.account:
            return False
        return not self.resources or not set(self.resources).isdisjoint(resources)

    def describe(self) -> dict[str, object]:
        """The target as the dev routes list it: the secret never leaves kmslocal."""
        out: dict[str, object] = {
            "account": self.account, "url": self.url, "secret_header": self.secret_header,
            "secret": "***" if self.secret else "",
        }
        if self.resources:
            out["resources"] = list(self.resources)
        return out


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
    targets = parse_event_targets(raw.get("event_targets", []), "event_targets", region)
    return Config(region, tuple(principals) or DEV_PRINCIPALS, tuple(targets))


def parse_event_target(table: object, where: str, region: str) -> EventTarget:
    """One target, from a TOML table or a JSON object; the message names ``where``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table (JSON object) of {', '.join(_TARGET_FIELDS)}")
    unknown = sorted(str(k) for k in table if k not in _TARGET_FIELDS)
    if unknown:  # a misspelt 'resources' would silently widen the target
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    account = _str(table, "account", where)
    if not _ACCOUNT.match(account):
        raise ConfigError(f"{where}: account must be 12 digits")
    url = _str(table, "url", where)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must be http(s)")
    header = _str(table, "secret_header", where, DEFAULT_SECRET_HEADER)
    if not _HEADER_NAME.match(header):
        raise ConfigError(f"{where}: secret_header must be an HTTP header name")
    secret = table.get("secret", "")
    if not isinstance(secret, str):
        raise ConfigError(f"{where}: 'secret' must be a string")
    resources = table.get("resources")
    if resources is None:
        return EventTarget(account, url, header, secret)
    if not isinstance(resources, list) or not resources:
        raise ConfigError(f"{where}: 'resources' must be a non-empty list of key ARNs")
    prefix = f"arn:aws:kms:{region}:{account}:key/"
    for i, arn in enumerate(resources):
        if not (isinstance(arn, str) and arn.startswith(prefix)
                and _KEY_ID.match(arn[len(prefix):])):
            raise ConfigError(
                f"{where}: resources[{i}] is not a key ARN of account {account} in {region}"
            )
    return EventTarget(account, url, header, secret, tuple(dict.fromkeys(resources)))


def parse_event_targets(
    items: object, where: str, region: str, taken: Iterable[str] = ()
) -> tuple[EventTarget, ...]:
    """A list of targets. Each url names one target (the outbox keeps the url), so a url
    may appear once, and not at all if it is in ``taken``."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be a list of event targets")
    targets = tuple(parse_event_target(t, f"{where}[{i}]", region) for i, t in enumerate(items))
    seen = set(taken)
    for i, target in enumerate(targets):
        check_url_free(target.url, f"{where}[{i}]", seen)
        seen.add(target.url)
    return targets


def check_url_free(url: str, where: str, taken: Iterable[str]) -> None:
    if url in taken:
        raise ConfigError(f"{where}: url is already the url of another event target")
