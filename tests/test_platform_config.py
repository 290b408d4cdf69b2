"""Platform settings: TOML < environment < CLI flags, one-line errors, secrets kept out of sight."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from cmek.errors import CmekError
from cmek.platform.config import ENV_VARS, ConfigError, Settings, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
TOKEN = "operator-token-4f9c2a7e51"
EVENT = "integrity-key-b83d10c6e2-0123456789abcdef"  # a secret setting, like the token
FIXED_VARS = [
    "CMEK_DATA_DIR", "CMEK_DATABASE_URL", "CMEK_OBJECT_STORE", "CMEK_S3_ENDPOINT_URL",
    "CMEK_KMS_REGION", "CMEK_KMS_ENDPOINT_URL", "CMEK_OPERATOR_TOKEN", "CMEK_INTEGRITY_KEY",
    "CMEK_CHECK_INTERVAL", "CMEK_OUTAGE_GRACE", "CMEK_RESTORE_WINDOW", "CMEK_LIVE_STORE_GRACE",
    "CMEK_DATA_KEY_TTL", "CMEK_BACKUP_INTERVAL",
]


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cmek.toml"
    path.write_text(text)
    return path


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert info.value.code == "config_invalid"
    assert isinstance(info.value, CmekError)
    return message


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    data = tmp_path.resolve() / "data"
    assert s.data_dir == data
    assert s.data_dir.is_absolute()
    assert s.database_url == f"sqlite:///{data}/control.sqlite3"
    assert s.object_store == f"file://{data}/objects"
    assert s.s3_endpoint_url is None
    assert s.kms_region == "us-west-2"
    assert s.kms_endpoint_url is None
    assert s.operator_token is None
    assert s.integrity_key is None
    assert s.check_interval == 5
    assert s.outage_grace == 300
    assert s.restore_window == 30 * 86400
    assert s.live_store_grace == 7 * 86400
    assert s.data_key_ttl == 300
    assert s.backup_interval == 86400
    assert (s.host, s.port, s.dev, s.max_body_bytes) == ("127.0.0.1", 8000, False, 1_048_576)
    assert s.tenant_backend == "sqlite"
    assert not data.exists()  # loading settings creates nothing


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(env={"CMEK_DATA_DIR": str(tmp_path)})
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


def test_toml_values(tmp_path: Path) -> None:
    path = toml(tmp_path, f"""
data_dir = "{tmp_path}/d"
database_url = "postgresql://cmek@db.internal:5432/cmek"
object_store = "s3://cmek-prod-objects/platform"
s3_endpoint_url = "http://127.0.0.1:9000"
kms_region = "eu-central-1"
kms_endpoint_url = "http://127.0.0.1:4599"
operator_token = "{TOKEN}"
integrity_key = "{EVENT}"
check_interval = 2.5
outage_grace = 0
restore_window = 864000
live_store_grace = 86400
data_key_ttl = 60
backup_interval = 0
host = "10.1.2.3"
port = 9000
dev = true
max_body_bytes = 4096
""")
    s = load_settings(path, env={})
    assert s.data_dir == (tmp_path / "d").resolve()
    assert s.database_url == "postgresql://cmek@db.internal:5432/cmek"
    assert s.tenant_backend == "postgresql"
    assert s.object_store == "s3://cmek-prod-objects/platform"
    assert s.s3_endpoint_url == "http://127.0.0.1:9000"
    assert s.kms_region == "eu-central-1"
    assert s.kms_endpoint_url == "http://127.0.0.1:4599"
    assert s.operator_token is not None
    assert s.operator_token.get_secret_value() == TOKEN
    assert s.integrity_key is not None
    assert s.integrity_key.get_secret_value() == EVENT
    assert (s.check_interval, s.outage_grace, s.restore_window) == (2.5, 0, 864000)
    assert (s.live_store_grace, s.data_key_ttl, s.backup_interval) == (86400, 60, 0)
    assert (s.host, s.port, s.dev, s.max_body_bytes) == ("10.1.2.3", 9000, True, 4096)


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, 'outage_grace = 10\nkms_region = "eu-west-1"\nport = 9000\n'
                          'check_interval = 1\n')
    s = load_settings(path, env={"CMEK_OUTAGE_GRACE": "20.5", "CMEK_KMS_REGION": "us-east-1",
                                 "CMEK_PORT": "9100", "CMEK_DEV": "true"})
    assert s.outage_grace == 20.5
    assert s.kms_region == "us-east-1"
    assert s.port == 9100
    assert s.dev is True
    assert s.check_interval == 1  # not in env: the file's value stays


def test_overrides_beat_env_and_none_is_ignored(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = 9000\n")
    env = {"CMEK_PORT": "9100", "CMEK_HOST": "::1", "CMEK_DATA_DIR": str(tmp_path)}
    s = load_settings(path, env=env, port=0, host=None, dev=None)
    assert s.port == 0
    assert s.host == "::1"
    assert s.dev is False
    assert load_settings(path, env=env, dev=True).dev is True


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMEK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CMEK_DATA_KEY_TTL", "42")
    s = load_settings()
    assert s.data_key_ttl == 42
    assert s.data_dir == tmp_path.resolve()


def test_empty_env_value_means_unset(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kms_endpoint_url = "http://127.0.0.1:4599"\n')
    s = load_settings(path, env={"CMEK_KMS_ENDPOINT_URL": "", "CMEK_OPERATOR_TOKEN": " "})
    assert s.kms_endpoint_url == "http://127.0.0.1:4599"
    assert s.operator_token is None


def test_derived_defaults_follow_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={"CMEK_DATA_DIR": "rel/dir"})
    data = tmp_path.resolve() / "rel" / "dir"
    assert s.data_dir == data
    assert s.database_url == f"sqlite:///{data}/control.sqlite3"
    assert s.object_store == f"file://{data}/objects"

    path = toml(tmp_path, f'data_dir = "{tmp_path}/from-file"\n')
    s = load_settings(path, env={})
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/from-file/control.sqlite3"
    assert s.object_store == f"file://{tmp_path.resolve()}/from-file/objects"

    s = load_settings(path, env={"CMEK_OBJECT_STORE": "s3://bucket"}, data_dir=tmp_path / "o")
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/o/control.sqlite3"
    assert s.object_store == "s3://bucket"  # given explicitly: not derived

    direct = Settings(data_dir=tmp_path / "direct")
    assert direct.database_url == f"sqlite:///{tmp_path.resolve()}/direct/control.sqlite3"


@pytest.mark.parametrize(
    ("var", "op"),
    [("CMEK_CHECK_INTERVAL", ">"), ("CMEK_OUTAGE_GRACE", ">="), ("CMEK_RESTORE_WINDOW", ">"),
     ("CMEK_LIVE_STORE_GRACE", ">"), ("CMEK_DATA_KEY_TTL", ">"), ("CMEK_BACKUP_INTERVAL", ">=")],
)
def test_non_numeric_duration_env(var: str, op: str) -> None:
    assert config_error(env={var: "abc"}) == f"{var}: must be a number of seconds {op} 0, got 'abc'"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CMEK_OUTAGE_GRACE": "-1"}, "CMEK_OUTAGE_GRACE: must be a number of seconds >= 0"),
        ({"CMEK_BACKUP_INTERVAL": "-0.5"}, "CMEK_BACKUP_INTERVAL: must be a number of seconds >="),
        ({"CMEK_CHECK_INTERVAL": "0"}, "CMEK_CHECK_INTERVAL: must be a number of seconds > 0"),
        ({"CMEK_DATA_KEY_TTL": "nan"}, "CMEK_DATA_KEY_TTL: must be a number of seconds > 0"),
        ({"CMEK_RESTORE_WINDOW": "inf"}, "CMEK_RESTORE_WINDOW: must be a number of seconds > 0"),
        ({"CMEK_DATABASE_URL": "mysql://root@db/cmek"},
         "CMEK_DATABASE_URL: must start with sqlite:///, postgresql:// or postgres://"),
        ({"CMEK_DATABASE_URL": "postgresql+psycopg://db/cmek"}, "CMEK_DATABASE_URL: must start"),
        ({"CMEK_DATABASE_URL": "sqlite://relative.db"}, "CMEK_DATABASE_URL: must start"),
        ({"CMEK_OBJECT_STORE": "http://example.com/bucket"},
         "CMEK_OBJECT_STORE: must be file:///absolute/folder or s3://bucket[/prefix]"),
        ({"CMEK_OBJECT_STORE": "file://relative/objects"}, "CMEK_OBJECT_STORE: must be file:///"),
        ({"CMEK_OBJECT_STORE": "s3://Bad_Bucket"}, "CMEK_OBJECT_STORE: must be file:///"),
        ({"CMEK_S3_ENDPOINT_URL": "minio:9000"}, "CMEK_S3_ENDPOINT_URL: must be an http://"),
        ({"CMEK_KMS_ENDPOINT_URL": "ftp://kms"}, "CMEK_KMS_ENDPOINT_URL: must be an http://"),
        # Data keys cross the KMS link: without TLS only a loopback endpoint is accepted.
        ({"CMEK_KMS_ENDPOINT_URL": "http://kms.example.com"},
         "CMEK_KMS_ENDPOINT_URL: plain http:// is allowed only to a loopback host"),
        ({"CMEK_KMS_ENDPOINT_URL": "http://10.0.0.5:4599"},
         "CMEK_KMS_ENDPOINT_URL: plain http:// is allowed only to a loopback host"),
        ({"CMEK_S3_ENDPOINT_URL": "http://minio.internal:9000"},
         "CMEK_S3_ENDPOINT_URL: plain http:// is allowed only to a loopback host"),
        ({"CMEK_KMS_REGION": "Oregon"}, "CMEK_KMS_REGION: must be an AWS Region name"),
        ({"CMEK_OPERATOR_TOKEN": "short"}, "CMEK_OPERATOR_TOKEN: must be at least 16 characters"),
        ({"CMEK_INTEGRITY_KEY": "0123456789abcdef0123456789abcde"},
         "CMEK_INTEGRITY_KEY: must be at least 32"),
        ({"CMEK_DATABASE_URL": "postgresql://cmek@db/cmek"},
         "integrity_key (CMEK_INTEGRITY_KEY) must be set with a PostgreSQL control plane"),
        ({"CMEK_WAREHOUSE_ALLOW": "10.0.0.0/8, not a host"}, "CMEK_WAREHOUSE_ALLOW: must be"),
        ({"CMEK_QUERY_PER_TENANT": "5", "CMEK_QUERY_MAX_RUNNING": "4"},
         "query_per_tenant (CMEK_QUERY_PER_TENANT) must be <= query_max_running"),
        ({"CMEK_QUERY_MEMORY_MB": "16"}, "CMEK_QUERY_MEMORY_MB: must be a whole number >= 64"),
        ({"CMEK_PORT": "http"}, "CMEK_PORT: must be an integer port from 0 to 65535, got 'http'"),
        ({"CMEK_PORT": "70000"}, "CMEK_PORT: must be an integer port"),
        ({"CMEK_DEV": "maybe"}, "CMEK_DEV: must be true or false, got 'maybe'"),
        ({"CMEK_MAX_BODY_BYTES": "0"}, "CMEK_MAX_BODY_BYTES: must be a whole number of bytes"),
        ({"CMEK_LIVE_STORE_GRACE": "864000", "CMEK_RESTORE_WINDOW": "86400"},
         "CMEK_LIVE_STORE_GRACE: must be <= restore_window (CMEK_RESTORE_WINDOW, 86400 s "
         "(1 d)), got 864000 s (10 d)"),
        ({"CMEK_RESTORE_WINDOW": "3600"},  # the default live_store_grace no longer fits
         "live_store_grace (CMEK_LIVE_STORE_GRACE): must be <= restore_window"),
    ],
)
def test_bad_env_values(env: dict[str, str], expected: str) -> None:
    assert config_error(env=env).startswith(expected)


@pytest.mark.parametrize("url", ["http://127.0.0.1:4599", "http://localhost:4599",
                                 "http://[::1]:4599", "https://kms.us-west-2.amazonaws.com"])
def test_tls_or_loopback_endpoints_are_accepted(url: str) -> None:
    assert load_settings(None, env={"CMEK_KMS_ENDPOINT_URL": url}).kms_endpoint_url == url


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(config_file=missing, env={}) == (
        f"cannot read config file {missing}: No such file or directory")
    assert config_error(config_file=tmp_path, env={}).startswith(
        f"cannot read config file {tmp_path}: ")


def test_invalid_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = \n")
    assert config_error(config_file=path, env={}).startswith(
        f"config file {path} is not valid TOML: ")


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = toml(tmp_path, "chek_interval = 5\n")
    assert config_error(config_file=path, env={}) == (
        f"config file {path}: unknown setting 'chek_interval' (did you mean 'check_interval'?)")
    path = toml(tmp_path, "[server]\nport = 1\n")
    assert "unknown setting 'server'" in config_error(config_file=path, env={})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('check_interval = "5"', "check_interval (CMEK_CHECK_INTERVAL) in {path}: "
                                 "must be a number of seconds > 0, got '5'"),
        ("outage_grace = -3", "outage_grace (CMEK_OUTAGE_GRACE) in {path}: "
                              "must be a number of seconds >= 0, got -3"),
        ("backup_interval = true", "backup_interval (CMEK_BACKUP_INTERVAL) in {path}: "
                                   "must be a number of seconds >= 0, got True"),
        ('port = "8000"', "port (CMEK_PORT) in {path}: "
                          "must be an integer port from 0 to 65535, got '8000'"),
        ('dev = "yes"', "dev (CMEK_DEV) in {path}: must be true or false, got 'yes'"),
        ("data_dir = 5", "data_dir (CMEK_DATA_DIR) in {path}: must be a folder path, got 5"),
        ("kms_region = 2", "kms_region (CMEK_KMS_REGION) in {path}: must be an AWS Region"),
        ("max_body_bytes = 1.5", "max_body_bytes (CMEK_MAX_BODY_BYTES) in {path}: must be"),
        ("live_store_grace = 3000000", "live_store_grace (CMEK_LIVE_STORE_GRACE) in {path}: "
                                       "must be <= restore_window"),
    ],
)
def test_bad_toml_values(tmp_path: Path, line: str, expected: str) -> None:
    path = toml(tmp_path, line + "\n")
    assert config_error(config_file=path, env={}).startswith(expected.format(path=path))


def test_bad_override_names_the_setting(tmp_path: Path) -> None:
    # an override is a command-line flag: the message names the flag, not the variable
    assert config_error(env={}, port=70000).startswith("--port: must be an integer port")
    with pytest.raises(TypeError, match="portt"):
        load_settings(env={}, portt=1)


def test_postgres_scheme_is_postgresql() -> None:
    s = load_settings(env={"CMEK_DATABASE_URL": "postgres://u@db/cmek",
                           "CMEK_INTEGRITY_KEY": EVENT})
    assert (s.database_url, s.tenant_backend) == ("postgresql://u@db/cmek", "postgresql")


def test_zero_is_allowed_where_documented() -> None:
    s = load_settings(env={"CMEK_OUTAGE_GRACE": "0", "CMEK_BACKUP_INTERVAL": "0"})
    assert (s.outage_grace, s.backup_interval) == (0, 0)


def test_secrets_stay_hidden(tmp_path: Path) -> None:
    s = load_settings(env={"CMEK_OPERATOR_TOKEN": TOKEN, "CMEK_INTEGRITY_KEY": EVENT,
                           "CMEK_DATABASE_URL": "postgresql://cmek:db-pass-91ab@db/cmek"})
    assert isinstance(s.operator_token, SecretStr)
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
        assert TOKEN not in text
        assert EVENT not in text
    for text in (repr(s), str(s)):
        assert "db-pass-91ab" not in text
        assert "postgresql://cmek:***@db/cmek" in text
    assert s.database_url == "postgresql://cmek:db-pass-91ab@db/cmek"


def test_secrets_not_in_error_messages(tmp_path: Path) -> None:
    short = "hunter2-short"
    message = config_error(env={"CMEK_OPERATOR_TOKEN": short})
    assert short not in message
    message = config_error(env={"CMEK_DATABASE_URL": "mysql://root:pw-7731x@db/cmek"})
    assert "pw-7731x" not in message
    path = toml(tmp_path, "integrity_key = 1234567890123456789\n")
    message = config_error(config_file=path, env={})
    assert message == f"integrity_key (CMEK_INTEGRITY_KEY) in {path}: must be a string, got int"
    assert "1234567890123456789" not in message
    with pytest.raises(ValidationError) as info:
        Settings(operator_token=short)
    assert short not in str(info.value)


def test_tenant_backend_follows_database_url(tmp_path: Path) -> None:
    sqlite = load_settings(env={"CMEK_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert sqlite.tenant_backend == "sqlite"
    pg = load_settings(env={"CMEK_DATABASE_URL": "postgresql://u@localhost/cmek",
                            "CMEK_INTEGRITY_KEY": EVENT})
    assert pg.tenant_backend == "postgresql"


def test_every_setting_has_an_env_var() -> None:
    assert set(ENV_VARS) == set(Settings.model_fields)
    assert set(FIXED_VARS) <= set(ENV_VARS.values())
    for var in FIXED_VARS:
        field = var.removeprefix("CMEK_").lower()
        assert ENV_VARS[field] == var


def test_docs_cover_every_variable_and_field() -> None:
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for var in ENV_VARS.values():
        assert re.search(rf"`{var}`", text), var
    for name in Settings.model_fields:
        assert any(row.startswith(f"| `{name}` |") for row in rows), name
    for var in FIXED_VARS:
        assert var in text
    assert "AWS_ACCESS_KEY_ID" in text
