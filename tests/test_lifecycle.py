"""The key lifecycle end to end: the customer changes its key in kmslocal, kmslocal
forwards the key event to the platform, and the platform locks, restores or destroys."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cmek
from cmek.kms import KeyRevoked, KmsError, KmsSettings
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal, write_config
from tests.platform_harness import (
    INTEGRITY_KEY,
    OPERATOR_TOKEN,
    PlatformProcess,
    customer_key,
    wait_until,
)

DAY = 86400


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KmsLocal, PlatformProcess]]:
    base = tmp_path_factory.mktemp("lifecycle")
    kms = KmsLocal(base / "kms", write_config(base / "kmslocal.toml", None))
    kms.start()
    platform = PlatformProcess(base / "platform", kms, key_events=True, extra_env={
        "CMEK_CHECK_INTERVAL": "3600", "CMEK_BACKUP_INTERVAL": "0",
        "CMEK_OUTAGE_GRACE": "300"})
    platform.start()
    yield kms, platform
    platform.stop()
    kms.stop()


def key_view(platform: PlatformProcess, tenant: str) -> dict[str, Any]:
    with platform.client(OPERATOR_TOKEN) as op:
        return dict(op.get(f"/v1/tenants/{tenant}/key").json())


def read_directly(kms: KmsLocal, platform: PlatformProcess, tenant: str) -> Any:
    """Open the tenant's stored object from its database file with a brand-new keyring,
    as another process (or a copy of the disks) would."""
    with sqlite3.connect(platform.data_dir / "tenants" / tenant / "tenant.sqlite3") as db:
        kind, oid, version, sealed = db.execute(
            "select kind, object_id, version, sealed from objects where object_id = 't1'"
        ).fetchone()
    keyring = cmek.connect(f"sqlite:///{platform.data_dir / 'control.sqlite3'}", KmsSettings(
        region="us-west-2", endpoint_url=kms.url, access_key_id=PROVIDER[1],
        secret_access_key=PROVIDER[2], max_attempts=1), integrity_key=INTEGRITY_KEY)
    return json.loads(keyring.open(tenant, "metadata", f"{kind}/{oid}/{version}", sealed))


def unreadable_everywhere(kms: KmsLocal, platform: PlatformProcess, tenant: str) -> None:
    """After a lock: no HTTP path serves the data, and neither do the stores read
    directly by a fresh process (KMS refuses to unwrap their data keys)."""
    with platform.client() as anon:
        login = anon.post(f"/v1/tenants/{tenant}/sessions",
                          json={"email": "admin@example.com", "password": "correct horse battery"})
    assert login.status_code == 423
    with pytest.raises(KmsError):
        read_directly(kms, platform, tenant)


def new_tenant(kms: KmsLocal, platform: PlatformProcess) -> tuple[str, str, str]:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kms)
    platform.provision(tenant, arn)
    token = platform.login(tenant)
    with platform.client(token) as c:
        r = c.put(f"/v1/tenants/{tenant}/objects/tables/t1", json={"title": "Before"})
        assert r.status_code == 200
    return tenant, arn, token


def test_disable_locks_everything_and_enable_restores(env: tuple[KmsLocal, PlatformProcess]
                                                      ) -> None:
    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with platform.client(token) as c:
        r = c.get(f"/v1/tenants/{tenant}/objects/tables/t1")
    assert r.status_code == 423
    assert r.json() == {"error": "tenant_key_unavailable", "key_state": "locked",
                        "reason": "disabled", "message": r.json()["message"]}
    assert "Before" not in r.text
    with platform.client() as anon:
        login = anon.post(f"/v1/tenants/{tenant}/sessions",
                          json={"email": "admin@example.com", "password": "correct horse battery"})
    assert login.status_code == 423
    view = key_view(platform, tenant)
    assert view["restore_deadline"] - view["live_store_deadline"] == pytest.approx(23 * DAY)
    with pytest.raises(KeyRevoked):  # the stores read directly, by a fresh process
        read_directly(kms, platform, tenant)
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "active")
    assert read_directly(kms, platform, tenant) == {"title": "Before"}
    assert key_view(platform, tenant)["reason"] == "restored:restart"
    with platform.client(token) as c:  # the old session was revoked at the lock
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 401
    with platform.client(platform.login(tenant)) as c:
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").json()["body"] == {
            "title": "Before"}


def test_schedule_deletion_then_cancel(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, arn, _ = new_tenant(kms, platform)
    out = kms.client(CUSTOMER).schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "pending_deletion"
                      and v)
    assert view["deletion_date"] == pytest.approx(out["DeletionDate"].timestamp(), abs=1)
    unreadable_everywhere(kms, platform, tenant)
    kms.client(CUSTOMER).cancel_key_deletion(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")  # now Disabled
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "active")
    with platform.client(platform.login(tenant)) as c:
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 200
    assert read_directly(kms, platform, tenant) == {"title": "Before"}


def test_provider_removed_from_policy_locks(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, arn, _ = new_tenant(kms, platform)
    owner_only = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
                  '{"AWS": "arn:aws:iam::222222222222:root"}, "Action": "kms:*", '
                  '"Resource": "*"}]}')
    kms.client(CUSTOMER).put_key_policy(KeyId=arn, PolicyName="default", Policy=owner_only)
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "locked" and v)
    assert view["reason"] == "access_denied"
    unreadable_everywhere(kms, platform, tenant)


def test_restore_after_eight_days_comes_from_the_backup(env: tuple[KmsLocal, PlatformProcess]
                                                        ) -> None:
    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    with platform.client(token) as c:
        assert c.post(f"/v1/tenants/{tenant}/backups").status_code == 201
        c.put(f"/v1/tenants/{tenant}/objects/tables/t2", json={"title": "After the backup"})
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with platform.client() as c:
        c.post("/_dev/clock", json={"advance_seconds": 8 * DAY})
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "active" and v)
    assert view["reason"] == "restored:from_backup"
    with platform.client(platform.login(tenant)) as c:
        ids = [o["id"] for o in c.get(f"/v1/tenants/{tenant}/objects/tables").json()["objects"]]
    assert ids == ["t1"]  # t2 came after the backup: reported lost in the audit trail


def test_deletion_at_the_window_end_destroys(env: tuple[KmsLocal, PlatformProcess],
                                             tmp_path: Path) -> None:
    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    with platform.client(token) as c:
        assert c.post(f"/v1/tenants/{tenant}/backups").status_code == 201
    kms.client(CUSTOMER).schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    wait_until(lambda: key_view(platform, tenant)["state"] == "pending_deletion")
    kms.advance(7 * DAY + 1)
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "destroyed" and v)
    assert view["reason"] == "key_deleted"
    objects = platform.data_dir / "objects" / "tenants" / tenant
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))
    with platform.client(OPERATOR_TOKEN) as op:
        again = op.post("/v1/tenants", json={"tenant_id": tenant, "kms_key_arn": customer_key(kms),
                                              "admin_email": "a@b.c", "admin_password": "x" * 10})
    assert again.status_code == 409  # the id stays reserved


def check_now(platform: PlatformProcess, tenant: str) -> dict[str, Any]:
    with platform.client(OPERATOR_TOKEN) as op:
        r = op.post(f"/v1/tenants/{tenant}/key/check")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_throttling_degrades_within_grace_and_locks_after(
    env: tuple[KmsLocal, PlatformProcess]
) -> None:
    kms, platform = env
    tenant, _, token = new_tenant(kms, platform)
    kms.dev_call("POST", "/_kmslocal/faults", {"operations": ["DescribeKey", "Decrypt"],
                                               "error": "ThrottlingException"})
    try:
        assert check_now(platform, tenant)["state"] == "degraded"
        with platform.client(token) as c:  # still served from the data-key cache
            assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 200
        with platform.client() as c:
            c.post("/_dev/clock", json={"advance_seconds": 120})
        assert check_now(platform, tenant)["state"] == "degraded"  # not a lock: grace holds
        with platform.client() as c:
            c.post("/_dev/clock", json={"advance_seconds": 181})
        view = check_now(platform, tenant)
        assert (view["state"], view["reason"]) == ("locked", "kms_unavailable")
        with platform.client(token) as c:
            assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 423
    finally:
        kms.dev_call("DELETE", "/_kmslocal/faults")
    view = check_now(platform, tenant)
    assert (view["state"], view["reason"]) == ("active", "restored:restart")


def test_short_throttling_never_locks(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, _, token = new_tenant(kms, platform)
    kms.dev_call("POST", "/_kmslocal/faults", {"operations": ["DescribeKey"],
                                               "error": "ThrottlingException"})
    try:
        assert check_now(platform, tenant)["state"] == "degraded"
    finally:
        kms.dev_call("DELETE", "/_kmslocal/faults")
    view = check_now(platform, tenant)
    assert (view["state"], view["reason"]) == ("active", "kms_recovered")
    with platform.client(token) as c:
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 200


def test_explicit_deny_on_decrypt_locks(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, arn, _ = new_tenant(kms, platform)
    policy = json.loads(kms.client(CUSTOMER).get_key_policy(KeyId=arn,
                                                            PolicyName="default")["Policy"])
    policy["Statement"].append({"Effect": "Deny", "Principal": {
        "AWS": "arn:aws:iam::111111111111:root"}, "Action": "kms:Decrypt", "Resource": "*"})
    kms.client(CUSTOMER).put_key_policy(KeyId=arn, PolicyName="default",
                                        Policy=json.dumps(policy))
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "locked" and v)
    assert view["reason"] == "access_denied"
    unreadable_everywhere(kms, platform, tenant)


def test_restore_window_over_destroys(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    with platform.client(token) as c:
        assert c.post(f"/v1/tenants/{tenant}/backups").status_code == 201
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with platform.client() as c:
        c.post("/_dev/clock", json={"advance_seconds": 30 * DAY + 1})
    view = check_now(platform, tenant)
    assert (view["state"], view["reason"]) == ("destroyed", "restore_window_over")
    kms.client(CUSTOMER).enable_key(KeyId=arn)  # too late: nothing comes back
    assert check_now(platform, tenant)["state"] == "destroyed"
    objects = platform.data_dir / "objects" / "tenants" / tenant
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))
    with sqlite3.connect(platform.data_dir / "control.sqlite3") as db:  # keys shredded
        assert db.execute("select count(*) from cmek_data_keys where tenant_id = ?",
                          (tenant,)).fetchone() == (0,)
        kinds = {k for (k,) in db.execute(
            "select kind from audit_entries where tenant = ?", (tenant,))}
    assert "crypto_shred_attestation" in kinds
    assert not (platform.data_dir / "tenants" / tenant).exists()  # its database went too
    assert not platform.warehouse_file(tenant).parent.exists()


def test_restore_after_one_day_is_a_restart(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    tenant, arn, _ = new_tenant(kms, platform)
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with platform.client() as c:
        c.post("/_dev/clock", json={"advance_seconds": DAY})
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "active" and v)
    assert view["reason"] == "restored:restart"
    with platform.client(platform.login(tenant)) as c:
        assert c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 200


def test_revoking_the_only_grant_locks(env: tuple[KmsLocal, PlatformProcess]) -> None:
    kms, platform = env
    owner_only = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
        "Action": "kms:*", "Resource": "*"}]})
    arn = customer_key(kms, owner_only)
    grant = kms.client(CUSTOMER).create_grant(
        KeyId=arn, GranteePrincipal="arn:aws:iam::111111111111:role/cmek-platform",
        Operations=["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"])
    tenant = f"t{uuid.uuid4().hex[:10]}"
    platform.provision(tenant, arn)
    with platform.client(platform.login(tenant)) as c:
        assert c.put(f"/v1/tenants/{tenant}/objects/tables/t1",
                     json={"title": "x"}).status_code == 200
    kms.client(CUSTOMER).revoke_grant(KeyId=arn, GrantId=grant["GrantId"])
    view = wait_until(lambda: (v := key_view(platform, tenant))["state"] == "locked" and v)
    assert view["reason"] == "access_denied"
    unreadable_everywhere(kms, platform, tenant)


def test_sixteen_clients_while_the_key_is_disabled(env: tuple[KmsLocal, PlatformProcess]
                                                   ) -> None:
    """No response started after the lock carries data; no acknowledged write is lost."""
    import threading

    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    acknowledged: dict[str, str] = {}
    after_lock: list[tuple[int, str]] = []
    locked_at: list[float] = []
    stop = threading.Event()
    guard = threading.Lock()

    def client(n: int) -> None:
        with platform.client(token) as c:
            for i in range(400):  # bounded; stopped earlier once the lock is seen
                if stop.is_set():
                    return
                oid, body = f"c{n}-{i}", f"value {n}/{i}"
                started = time.monotonic()
                put = c.put(f"/v1/tenants/{tenant}/objects/tables/{oid}", json={"v": body})
                got = c.get(f"/v1/tenants/{tenant}/objects/tables/{oid}")
                with guard:
                    if put.status_code == 200:
                        acknowledged[oid] = body
                    if locked_at and started > locked_at[0]:
                        after_lock.extend([(put.status_code, put.text),
                                           (got.status_code, got.text)])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acknowledged) >= 50)
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with guard:
        locked_at.append(time.monotonic())
    wait_until(lambda: len(after_lock) >= 32 or not any(t.is_alive() for t in threads))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert after_lock, "no request was made after the lock"
    assert {status for status, _ in after_lock} <= {423, 401}
    assert not any("value " in text for _, text in after_lock)
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "active")
    with platform.client(platform.login(tenant)) as c:
        for oid, body in acknowledged.items():
            r = c.get(f"/v1/tenants/{tenant}/objects/tables/{oid}")
            assert r.status_code == 200, oid
            assert r.json()["body"] == {"v": body}


def test_jobs_of_a_locked_tenant_fail_with_the_reason(env: tuple[KmsLocal, PlatformProcess],
                                                      tmp_path: Path) -> None:
    import duckdb

    kms, platform = env
    tenant, arn, token = new_tenant(kms, platform)
    with duckdb.connect(str(platform.warehouse_file(tenant))) as db:
        db.execute("create table t(n integer)")
    with platform.client(token) as c:
        c.put(f"/v1/tenants/{tenant}/connections/wh",
              json={"type": "duckdb", "config": {"path": "wh.duckdb"}})
        sid = c.post(f"/v1/tenants/{tenant}/schedules", json={
            "name": "n", "connection": "wh", "sql": "select count(*) from t",
            "every_seconds": 600}).json()["schedule_id"]
        c.post("/_dev/jobs/run")  # the platform learns the schedule's slot
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "locked")
    with platform.client() as c:
        c.post("/_dev/clock", json={"advance_seconds": 601})
        c.post("/_dev/jobs/run")
    kms.client(CUSTOMER).enable_key(KeyId=arn)
    wait_until(lambda: key_view(platform, tenant)["state"] == "active")
    with platform.client(platform.login(tenant)) as c:
        runs = c.get(f"/v1/tenants/{tenant}/schedules/{sid}/runs").json()["runs"]
    assert [(r["status"], r["error_code"]) for r in runs] == [
        ("failed", "tenant_key_unavailable")]
