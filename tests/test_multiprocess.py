"""Three platform processes over one PostgreSQL control plane: one leader runs the
monitor and hands over when it dies; a lock reaches every process at once."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kmslocal_harness import CUSTOMER, KmsLocal, write_config
from tests.pg import create_database
from tests.platform_harness import PlatformProcess, customer_key


@pytest.fixture
def cluster(tmp_path: Path, pg_admin_url: str) -> Iterator[tuple[KmsLocal, list[PlatformProcess]]]:
    kms = KmsLocal(tmp_path / "kms", write_config(tmp_path / "kmslocal.toml", None))
    kms.start()
    env = {"CMEK_DATABASE_URL": create_database(pg_admin_url), "CMEK_CHECK_INTERVAL": "3600",
           "CMEK_BACKUP_INTERVAL": "0"}
    # events reach the first process, as behind a load balancer they reach one of them
    procs = [PlatformProcess(tmp_path / "platform", kms, extra_env=env, key_events=i == 0)
             for i in range(3)]
    for proc in procs:
        proc.start()
    yield kms, procs
    for proc in procs:
        proc.stop()
    kms.stop()


def leaders(procs: list[PlatformProcess]) -> list[int]:
    out = []
    for i, proc in enumerate(procs):
        if proc.process is None:
            continue
        with proc.client() as c:
            if c.get("/_dev/cluster").json()["leader"]:
                out.append(i)
    return out


def test_every_process_refuses_within_a_second(
    cluster: tuple[KmsLocal, list[PlatformProcess]]
) -> None:
    kms, procs = cluster
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kms)
    procs[0].provision(tenant, arn)
    token = procs[0].login(tenant)
    for proc in procs:  # every process has the tenant's keys cached
        with proc.client(token) as c:
            assert c.put(f"/v1/tenants/{tenant}/objects/tables/t1",
                         json={"title": "x"}).status_code == 200
    kms.client(CUSTOMER).disable_key(KeyId=arn)
    t0 = time.monotonic()
    refused: dict[int, float] = {}
    while len(refused) < 3 and time.monotonic() - t0 < 10:
        for i, proc in enumerate(procs):
            if i not in refused:
                with proc.client(token) as c:
                    if c.get(f"/v1/tenants/{tenant}/objects/tables/t1").status_code == 423:
                        refused[i] = time.monotonic() - t0
        time.sleep(0.01)  # probing the processes, bounded by the loop's deadline
    assert sorted(refused) == [0, 1, 2]
    assert max(refused.values()) < 1.0, refused


def test_the_monitor_has_one_leader_and_it_hands_over(
    cluster: tuple[KmsLocal, list[PlatformProcess]]
) -> None:
    _, procs = cluster
    deadline = time.monotonic() + 10
    while len(current := leaders(procs)) != 1:
        assert time.monotonic() < deadline, current
        time.sleep(0.05)
    leader = procs[current[0]]
    assert leader.process is not None
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    leader.process = None
    deadline = time.monotonic() + 15
    while len(after := leaders(procs)) != 1:
        assert time.monotonic() < deadline, "no process took over the monitor"
        time.sleep(0.1)
    assert after != current
