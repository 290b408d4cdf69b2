"""A key check that an event claimed but that failed is owed, not lost: the monitor looks
at the key again once the interval passes, whether or not the sender retries the event
(EventBridge drops an event answered 4xx, and a locked tenant's failure answers 423)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmek.clock import ManualClock
from cmek.lifecycle import Lifecycle
from cmek.platform.service import Platform
from tests.kmslocal_harness import CUSTOMER, KmsLocal
from tests.platform_harness import customer_key, in_process


class ControlPlaneHiccup(Exception):
    """Stands for any failure inside a check: the database, the network, a bug."""


@pytest.fixture
def platform(kmslocal: KmsLocal, tmp_path: Path) -> Iterator[Platform]:
    p = in_process(kmslocal, tmp_path, ManualClock(), CMEK_CHECK_INTERVAL="3600")
    yield p
    p.close()


def test_a_failed_event_check_is_owed(platform: Platform, kmslocal: KmsLocal,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    platform.provision(tenant, arn, "admin@example.com", "correct horse battery")
    secret = platform.events.issue_credential(tenant)["secret"]
    kmslocal.client(CUSTOMER).disable_key(KeyId=arn)
    real_check = Lifecycle.check
    failures = [ControlPlaneHiccup("the check failed")]

    def check_failing_once(self: Lifecycle, tenant_id: str, cause: str = "poll") -> Any:
        if failures:
            raise failures.pop()
        return real_check(self, tenant_id, cause)

    monkeypatch.setattr(Lifecycle, "check", check_failing_once)
    with pytest.raises(ControlPlaneHiccup):
        platform.events.receive(tenant, secret, {"source": "aws.kms", "resources": [arn]})
    assert platform.lifecycle.state(tenant).state.value == "active"
    assert platform.events.run_owed() == 0  # not before the interval has passed
    assert isinstance(platform.clock, ManualClock)
    platform.clock.advance(platform.settings.event_check_interval)
    assert platform.events.run_owed() == 1
    assert platform.lifecycle.state(tenant).state.value == "locked"
    assert platform.events.run_owed() == 0  # and it is owed no more
