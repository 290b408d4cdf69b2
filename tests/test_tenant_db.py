"""Each tenant's PostgreSQL role and schema: cluster-wide names that never collide, a
password that no statement carries, and nothing left once the tenant is destroyed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from cmek.clock import SystemClock
from cmek.kms import BotoKms, KmsSettings
from cmek.platform.config import load_settings
from cmek.platform.service import Platform
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal, write_config
from tests.pg import create_database
from tests.platform_harness import INTEGRITY_KEY, OPERATOR_TOKEN, PlatformProcess, customer_key

DAY = 86400


def roles(admin_url: str, *names: str) -> dict[str, str]:
    """role name -> its stored password verifier, for the roles that exist."""
    with psycopg.connect(admin_url) as conn:
        return {str(r[0]): str(r[1]) for r in conn.execute(
            "select rolname, rolpassword from pg_authid where rolname = any(%s)",
            (list(names),))}


def schemas(url: str, *names: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]) for r in conn.execute(
            "select schema_name from information_schema.schemata where schema_name = any(%s)",
            (list(names),))}


def role_of(url: str, tenant: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("select name from platform_tenant_databases where tenant_id = %s",
                           (tenant,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsLocal]:
    """A kmslocal of this module's own: its clock is moved past a deletion window."""
    base = tmp_path_factory.mktemp("kms")
    local = KmsLocal(base / "data", write_config(base / "kmslocal.toml", None))
    local.start()
    yield local
    local.stop()


def test_two_deployments_on_one_cluster_provision_the_same_tenant_id(
        kms: KmsLocal, pg_admin_url: str, tmp_path: Path) -> None:
    urls = [create_database(pg_admin_url) for _ in range(2)]
    procs = [PlatformProcess(tmp_path / f"p{i}", kms, extra_env={
        "CMEK_DATABASE_URL": url, "CMEK_BACKUP_INTERVAL": "0"}) for i, url in enumerate(urls)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.provision("acme", customer_key(kms))
            with proc.client(proc.login("acme")) as c:
                assert c.put("/v1/tenants/acme/objects/tables/t1",
                             json={"title": "t"}).status_code == 200
        names = [role_of(url, "acme") for url in urls]
        assert names[0] != names[1]
        assert all(n.startswith("cmek_") for n in names)
        log = "".join("".join(p.output) for p in procs)
        assert "ERROR" not in log
    finally:
        for proc in procs:
            proc.stop()


def test_no_statement_carries_the_role_password(kms: KmsLocal, pg_admin_url: str,
                                                tmp_path: Path) -> None:
    settings = load_settings(env={
        "CMEK_DATA_DIR": str(tmp_path / "data"), "CMEK_DATABASE_URL": create_database(
            pg_admin_url), "CMEK_INTEGRITY_KEY": INTEGRITY_KEY, "CMEK_KMS_ENDPOINT_URL": kms.url,
        "CMEK_BACKUP_INTERVAL": "0"})
    platform = Platform(settings, SystemClock(), BotoKms(KmsSettings(
        region=REGION, endpoint_url=kms.url, access_key_id=PROVIDER[1],
        secret_access_key=PROVIDER[2])))
    statements: list[str] = []

    @sa.event.listens_for(platform.engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    try:
        platform.provision("acme", customer_key(kms), "admin@example.com", "a password 123")
        name, password = platform.databases._role("acme")
    finally:
        platform.close()
    created = [s for s in statements if "CREATE ROLE" in s]
    assert len(created) == 1
    assert "SCRAM-SHA-256$" in created[0]  # the verifier libpq computed, not the password
    assert not [s for s in statements if password in s]
    assert roles(pg_admin_url, name)[name].startswith("SCRAM-SHA-256$")


def test_a_destroyed_tenants_role_and_schema_are_dropped(
        kms: KmsLocal, pg_admin_url: str, tmp_path: Path) -> None:
    url = create_database(pg_admin_url)
    proc = PlatformProcess(tmp_path / "p", kms, extra_env={
        "CMEK_DATABASE_URL": url, "CMEK_BACKUP_INTERVAL": "0", "CMEK_CHECK_INTERVAL": "3600"})
    proc.start()
    try:
        arn = customer_key(kms)
        proc.provision("doomed", arn)
        with proc.client(proc.login("doomed")) as c:
            assert c.put("/v1/tenants/doomed/objects/tables/t1",
                         json={"title": "t"}).status_code == 200
        name = role_of(url, "doomed")
        assert roles(pg_admin_url, name)
        assert schemas(url, name) == {name}
        kms.client(CUSTOMER).schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
        with proc.client(OPERATOR_TOKEN) as op:
            check = "/v1/tenants/doomed/key/check"
            assert op.post(check).json()["state"] == "pending_deletion"
            kms.advance(7 * DAY + 1)
            assert op.post(check).json()["state"] == "destroyed"
        assert roles(pg_admin_url, name) == {}
        assert schemas(url, name) == set()
    finally:
        proc.stop()
