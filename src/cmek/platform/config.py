"""The platform's settings: a TOML file, every setting overridable by a ``CMEK_*`` variable.

Precedence: explicit overrides (CLI flags) > environment > TOML file > defaults. Problems are
reported as one :class:`ConfigError` line that names the setting and its environment variable,
and never contains a secret's value. AWS credentials are deliberately not settings: boto3's
standard chain (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, instance roles, ...) supplies them.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cmek.db import redact_url
from cmek.errors import CmekError
from cmek.platform.config_values import (
    Invalid,
    duration,
    parse_database_url,
    parse_dir,
    parse_egress_list,
    parse_http_url,
    parse_networks_list,
    parse_object_store,
    parse_seconds,
    parse_secret,
    shown,
)

DAY = 86400.0
MIN_INTEGRITY_KEY_CHARS = 32

# Field name -> environment variable. The CMEK_* names are an operator contract: never rename.
ENV_VARS: dict[str, str] = {
    "data_dir": "CMEK_DATA_DIR",
    "database_url": "CMEK_DATABASE_URL",
    "object_store": "CMEK_OBJECT_STORE",
    "s3_endpoint_url": "CMEK_S3_ENDPOINT_URL",
    "kms_region": "CMEK_KMS_REGION",
    "kms_endpoint_url": "CMEK_KMS_ENDPOINT_URL",
    "kms_connect_timeout": "CMEK_KMS_CONNECT_TIMEOUT",
    "kms_read_timeout": "CMEK_KMS_READ_TIMEOUT",
    "provider_account": "CMEK_PROVIDER_ACCOUNT",
    "operator_token": "CMEK_OPERATOR_TOKEN",
    "integrity_key": "CMEK_INTEGRITY_KEY",
    "event_check_interval": "CMEK_EVENT_CHECK_INTERVAL",
    "event_records_per_minute": "CMEK_EVENT_RECORDS_PER_MINUTE",
    "check_interval": "CMEK_CHECK_INTERVAL",
    "outage_grace": "CMEK_OUTAGE_GRACE",
    "restore_window": "CMEK_RESTORE_WINDOW",
    "live_store_grace": "CMEK_LIVE_STORE_GRACE",
    "data_key_ttl": "CMEK_DATA_KEY_TTL",
    "backup_interval": "CMEK_BACKUP_INTERVAL",
    "host": "CMEK_HOST",
    "port": "CMEK_PORT",
    "dev": "CMEK_DEV",
    "max_body_bytes": "CMEK_MAX_BODY_BYTES",
    "login_max_failures": "CMEK_LOGIN_MAX_FAILURES",
    "login_max_failures_per_client": "CMEK_LOGIN_MAX_FAILURES_PER_CLIENT",
    "login_lockout": "CMEK_LOGIN_LOCKOUT",
    "login_backoff": "CMEK_LOGIN_BACKOFF",
    "trusted_proxies": "CMEK_TRUSTED_PROXIES",
    "log_level": "CMEK_LOG_LEVEL",
    "warehouse_dir": "CMEK_WAREHOUSE_DIR",
    "warehouse_allow": "CMEK_WAREHOUSE_ALLOW",
    "query_timeout": "CMEK_QUERY_TIMEOUT",
    "query_cpu_seconds": "CMEK_QUERY_CPU_SECONDS",
    "query_memory_mb": "CMEK_QUERY_MEMORY_MB",
    "query_max_rows": "CMEK_QUERY_MAX_ROWS",
    "query_max_result_bytes": "CMEK_QUERY_MAX_RESULT_BYTES",
    "query_max_running": "CMEK_QUERY_MAX_RUNNING",
    "query_per_tenant": "CMEK_QUERY_PER_TENANT",
    "schedule_min_period": "CMEK_SCHEDULE_MIN_PERIOD",
}

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(CmekError):
    code = "config_invalid"


class Settings(BaseModel):
    """Everything a platform process needs; built once at start, then never changes."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True,
                              validate_default=True)

    data_dir: Path = Path("data")
    database_url: str = ""  # derived from data_dir when not given
    object_store: str = ""  # derived from data_dir when not given
    s3_endpoint_url: str | None = None
    kms_region: str = "us-west-2"
    kms_endpoint_url: str | None = None
    kms_connect_timeout: float = 2.0
    kms_read_timeout: float = 5.0
    provider_account: str | None = None  # the AWS account the platform calls KMS as
    operator_token: SecretStr | None = None
    integrity_key: SecretStr | None = None  # required with PostgreSQL; else made in data_dir
    event_check_interval: float = 0.25
    event_records_per_minute: int = 60
    check_interval: float = 5.0
    outage_grace: float = 300.0
    restore_window: float = 30 * DAY
    live_store_grace: float = 7 * DAY
    data_key_ttl: float = 300.0
    backup_interval: float = DAY
    host: str = "127.0.0.1"
    port: int = 8000
    dev: bool = False
    max_body_bytes: int = 1_048_576
    login_max_failures: int = 5
    login_max_failures_per_client: int = 50
    login_lockout: float = 300.0
    login_backoff: float = 1.0
    trusted_proxies: tuple[str, ...] = ()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    warehouse_dir: Path = Path("")  # derived from data_dir when not given
    warehouse_allow: tuple[str, ...] = ()
    query_timeout: float = 30.0
    query_cpu_seconds: float = 30.0
    query_memory_mb: int = 1024
    query_max_rows: int = 10_000
    query_max_result_bytes: int = 4 * 1024 * 1024
    query_max_running: int = 4
    query_per_tenant: int = 2
    schedule_min_period: float = 60.0

    @property
    def tenant_backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.database_url.startswith("postgresql://") else "sqlite"

    def __repr_args__(self) -> Any:
        # A PostgreSQL URL may carry a password; repr/str must not.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "database_url" else value

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        """Storage locations default to folders inside data_dir, wherever that ends up."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        try:
            data_dir = parse_dir(data.get("data_dir", Path("data")))
        except Invalid:
            return data  # the data_dir field reports it
        data["data_dir"] = data_dir
        if data.get("database_url") in (None, ""):
            data["database_url"] = f"sqlite:///{data_dir}/control.sqlite3"
        if data.get("object_store") in (None, ""):
            data["object_store"] = f"file://{data_dir}/objects"
        if data.get("warehouse_dir") in (None, ""):
            data["warehouse_dir"] = data_dir / "warehouses"
        return data

    @field_validator("data_dir", "warehouse_dir", mode="before")
    @classmethod
    def _check_data_dir(cls, value: Any) -> Path:
        return parse_dir(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _check_trusted_proxies(cls, value: Any) -> tuple[str, ...]:
        return parse_networks_list(value)

    @field_validator("warehouse_allow", mode="before")
    @classmethod
    def _check_warehouse_allow(cls, value: Any) -> tuple[str, ...]:
        return parse_egress_list(value)

    @field_validator("database_url", mode="before")
    @classmethod
    def _check_database_url(cls, value: Any) -> str:
        return parse_database_url(value)

    @field_validator("object_store", mode="before")
    @classmethod
    def _check_object_store(cls, value: Any) -> str:
        return parse_object_store(value)

    @field_validator("s3_endpoint_url", "kms_endpoint_url", mode="before")
    @classmethod
    def _check_endpoint(cls, value: Any) -> str | None:
        return parse_http_url(value)

    @field_validator("kms_region", mode="before")
    @classmethod
    def _check_region(cls, value: Any) -> str:
        if not isinstance(value, str) or not _REGION.match(value):
            raise Invalid(f"must be an AWS Region name like us-west-2, got {shown(value)}")
        return value

    @field_validator("operator_token", mode="before")
    @classmethod
    def _check_secret(cls, value: Any) -> SecretStr | None:
        return parse_secret(value)

    @field_validator("integrity_key", mode="before")
    @classmethod
    def _check_integrity_key(cls, value: Any) -> SecretStr | None:
        key = parse_secret(value)
        if key is not None and len(key.get_secret_value()) < MIN_INTEGRITY_KEY_CHARS:
            raise Invalid(f"must be at least {MIN_INTEGRITY_KEY_CHARS} characters when set")
        return key

    @field_validator("check_interval", "restore_window", "live_store_grace", "data_key_ttl",
                     "kms_connect_timeout", "kms_read_timeout", "login_lockout",
                     "login_backoff", mode="before")
    @classmethod
    def _check_positive(cls, value: Any) -> float:
        return parse_seconds(value, allow_zero=False)

    @field_validator("query_timeout", "query_cpu_seconds", "schedule_min_period",
                     "event_check_interval", mode="before")
    @classmethod
    def _check_query_seconds(cls, value: Any) -> float:
        return parse_seconds(value, allow_zero=False)

    @field_validator("query_memory_mb", "query_max_rows", "query_max_result_bytes",
                     "query_max_running", "query_per_tenant", "event_records_per_minute",
                     mode="before")
    @classmethod
    def _check_query_counts(cls, value: Any, info: ValidationInfo) -> int:
        least = {"query_memory_mb": 64, "query_max_result_bytes": 1024}.get(
            str(info.field_name), 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise Invalid(f"must be a whole number >= {least}, got {shown(value)}")
        return value

    @model_validator(mode="after")
    def _integrity_key_shared(self) -> Settings:
        # Every process must tag and check rows with the same key: with a shared
        # PostgreSQL control plane a key made in one process's data_dir would not do.
        if self.tenant_backend == "postgresql" and self.integrity_key is None:
            raise Invalid(f"integrity_key ({ENV_VARS['integrity_key']}) must be set with a "
                          "PostgreSQL control plane: the same secret in every process")
        return self

    @model_validator(mode="after")
    def _per_tenant_within_total(self) -> Settings:
        if self.query_per_tenant > self.query_max_running:
            raise Invalid(f"query_per_tenant ({ENV_VARS['query_per_tenant']}) must be <= "
                          f"query_max_running ({ENV_VARS['query_max_running']})")
        return self

    @field_validator("outage_grace", "backup_interval", mode="before")
    @classmethod
    def _check_non_negative(cls, value: Any) -> float:
        return parse_seconds(value, allow_zero=True)

    @field_validator("live_store_grace")
    @classmethod
    def _within_restore_window(cls, value: float, info: ValidationInfo) -> float:
        # Live stores must be gone before the restore window lets the data be shredded.
        window = info.data.get("restore_window")
        if window is not None and value > window:
            raise Invalid(f"must be <= restore_window ({ENV_VARS['restore_window']}, "
                          f"{duration(window)}), got {duration(value)}")
        return value

    @field_validator("provider_account", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and re.fullmatch(r"\d{12}", value)):
            return value
        raise Invalid(f"must be a 12-digit AWS account id, got {shown(value)}")

    @field_validator("host", mode="before")
    @classmethod
    def _check_host(cls, value: Any) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise Invalid(f"must be a host name or IP address, got {shown(value)}")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _check_port(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise Invalid(f"must be an integer port from 0 to 65535, got {shown(value)}")
        return value

    @field_validator("dev", mode="before")
    @classmethod
    def _check_dev(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false, got {shown(value)}")
        return value

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _check_max_body(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise Invalid(f"must be a whole number of bytes > 0, got {shown(value)}")
        return value

    @field_validator("login_max_failures", "login_max_failures_per_client", mode="before")
    @classmethod
    def _check_failures(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Invalid(f"must be a whole number of failed sign-ins >= 1, got {shown(value)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        level = value.strip().upper() if isinstance(value, str) else value
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise Invalid(f"must be DEBUG, INFO, WARNING or ERROR, got {shown(value)}")
        return str(level)


_INTS = frozenset(name for name, f in Settings.model_fields.items() if f.annotation is int)
_FLOATS = frozenset(name for name, f in Settings.model_fields.items() if f.annotation is float)


def _from_env(name: str, raw: str) -> Any:
    """Env values are text: convert what parses, leave the rest for the field to reject."""
    text = raw.strip()
    try:
        if name in _FLOATS:
            return float(text)
        if name in _INTS:
            return int(text)
    except ValueError:
        return raw
    if name == "dev":
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else raw
    return raw


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for key in data:
        if key not in Settings.model_fields:
            close = difflib.get_close_matches(key, Settings.model_fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {path}: unknown setting {key!r}{hint}")
    return data


def load_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Overrides (None = not given) > env (default os.environ) > TOML file > defaults."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"load_settings() got unknown settings: {', '.join(unknown)}")
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    if config_file is not None:
        for key, value in _read_toml(Path(config_file)).items():
            values[key] = value
            where[key] = f"{key} ({ENV_VARS[key]}) in {config_file}"
    for key, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip() != "":  # empty = unset, as compose files often pass
            values[key] = _from_env(key, raw)
            where[key] = var
    for key, value in overrides.items():
        if value is not None:  # the command line's flags
            values[key] = value
            where[key] = f"--{key.replace('_', '-')}"
    try:
        return Settings(**values)
    except ValidationError as e:
        errors = e.errors(include_input=False, include_url=False)
        first = errors[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        label = where.get(name, f"{name} ({ENV_VARS[name]})" if name in ENV_VARS else name)
        ctx_error = (first.get("ctx") or {}).get("error")
        message = str(ctx_error) if isinstance(ctx_error, Invalid) else first["msg"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        if not first["loc"]:  # a rule across settings: its message names them
            raise ConfigError(f"{message}{more}") from None
        raise ConfigError(f"{label}: {message}{more}") from None
