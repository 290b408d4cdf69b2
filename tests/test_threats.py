"""A provider insider with write access to the databases or the object store, or a thief
holding a copy of a backup: moving ciphertext between tenants, rows or backups never
yields plaintext. Every record is bound to its tenant, category, object id and epoch,
and every backup to its own id, so the platform refuses what was moved, with a code."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kmslocal_harness import KmsLocal
from tests.platform_harness import OPERATOR_TOKEN, PlatformProcess


@pytest.fixture(scope="module")
def platform(kmslocal: KmsLocal, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[PlatformProcess]:
    p = PlatformProcess(tmp_path_factory.mktemp("threats"), kmslocal,
                        extra_env={"CMEK_BACKUP_INTERVAL": "0"})
    p.start()
    yield p
    p.stop()


def tenant_with(platform: PlatformProcess, kms: KmsLocal, title: str) -> tuple[str, str]:
    tenant = platform.new_tenant(kms)
    token = platform.login(tenant)
    with platform.client(token) as c:
        for oid in ("x", "y"):
            r = c.put(f"/v1/tenants/{tenant}/objects/tables/{oid}",
                      json={"title": f"{title} {oid}"})
            assert r.status_code == 200, r.text
    return tenant, token


def db(platform: PlatformProcess, tenant: str) -> Path:
    return platform.data_dir / "tenants" / tenant / "tenant.sqlite3"


def sealed(platform: PlatformProcess, tenant: str, object_id: str) -> bytes:
    with sqlite3.connect(db(platform, tenant)) as conn:
        row = conn.execute("select sealed from objects where object_id = ?", (object_id,))
        return bytes(row.fetchone()[0])


def overwrite(platform: PlatformProcess, tenant: str, object_id: str, blob: bytes) -> None:
    with sqlite3.connect(db(platform, tenant)) as conn:
        conn.execute("update objects set sealed = ? where object_id = ?", (blob, object_id))


def test_a_row_moved_to_another_tenant_does_not_open(platform: PlatformProcess,
                                                     kmslocal: KmsLocal) -> None:
    a, _ = tenant_with(platform, kmslocal, "Alpha-only-marker")
    b, b_token = tenant_with(platform, kmslocal, "Bravo")
    overwrite(platform, b, "x", sealed(platform, a, "x"))
    with platform.client(b_token) as c:
        r = c.get(f"/v1/tenants/{b}/objects/tables/x")
        assert (r.status_code, r.json()["error"]) == (500, "decryption_failed")
        assert "Alpha" not in r.text
        assert c.get(f"/v1/tenants/{b}/objects/tables/y").json()["body"]["title"] == "Bravo y"


def test_a_row_moved_to_another_id_of_the_same_tenant_does_not_open(
    platform: PlatformProcess, kmslocal: KmsLocal
) -> None:
    a, token = tenant_with(platform, kmslocal, "Alpha")
    overwrite(platform, a, "y", sealed(platform, a, "x"))
    with platform.client(token) as c:
        r = c.get(f"/v1/tenants/{a}/objects/tables/y")
        assert (r.status_code, r.json()["error"]) == (500, "decryption_failed")
        assert "Alpha x" not in r.text


def test_a_backup_swapped_for_another_tenants_is_refused_and_loses_nothing(
    platform: PlatformProcess, kmslocal: KmsLocal
) -> None:
    a, a_token = tenant_with(platform, kmslocal, "Alpha-backup-marker")
    b, b_token = tenant_with(platform, kmslocal, "Bravo")
    with platform.client(a_token) as c:
        a_backup = c.post(f"/v1/tenants/{a}/backups").json()["backup_id"]
    with platform.client(b_token) as c:
        b_backup = c.post(f"/v1/tenants/{b}/backups").json()["backup_id"]
    objects = platform.data_dir / "objects" / "tenants"
    shutil.copyfile(objects / a / "backups" / a_backup, objects / b / "backups" / b_backup)
    with platform.client(OPERATOR_TOKEN) as op:
        r = op.post(f"/v1/tenants/{b}/backups/{b_backup}/restore")
    assert (r.status_code, r.json()["error"]) == (500, "decryption_failed")
    with platform.client(b_token) as c:
        listed = c.get(f"/v1/tenants/{b}/objects/tables").json()["objects"]
        assert sorted(o["title"] for o in listed) == ["Bravo x", "Bravo y"]
        assert "Alpha" not in c.get(f"/v1/tenants/{b}/search", params={"q": "alpha"}).text


def test_a_backup_renamed_within_a_tenant_is_refused(platform: PlatformProcess,
                                                     kmslocal: KmsLocal) -> None:
    a, token = tenant_with(platform, kmslocal, "Alpha")
    with platform.client(token) as c:
        first = c.post(f"/v1/tenants/{a}/backups").json()["backup_id"]
        c.put(f"/v1/tenants/{a}/objects/tables/z", json={"title": "After the first backup"})
        second = c.post(f"/v1/tenants/{a}/backups").json()["backup_id"]
    folder = platform.data_dir / "objects" / "tenants" / a / "backups"
    shutil.copyfile(folder / first, folder / second)  # an old backup passed off as new
    with platform.client(OPERATOR_TOKEN) as op:
        r = op.post(f"/v1/tenants/{a}/backups/{second}/restore")
    assert (r.status_code, r.json()["error"]) == (500, "decryption_failed")
