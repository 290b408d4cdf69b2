"""A sign-in that a lock overtakes: the password was checked while the key was usable,
the session is written after the lock revoked every token. It must not outlive the lock.
The interleaving is forced by running the lock inside the token write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmek.clock import SystemClock
from cmek.platform.control import ControlPlane
from cmek.platform.service import Platform, TenantKeyUnavailable
from tests.kmslocal_harness import CUSTOMER, KmsLocal
from tests.platform_harness import customer_key, in_process

PASSWORD = "correct horse battery"


@pytest.fixture
def platform(kmslocal: KmsLocal, tmp_path: Path) -> Iterator[Platform]:
    p = in_process(kmslocal, tmp_path, SystemClock())
    yield p
    p.close()


@pytest.mark.parametrize("kind", ["session", "api"])
def test_a_token_issued_as_a_lock_lands_never_outlives_it(
    platform: Platform, kmslocal: KmsLocal, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    platform.provision(tenant, arn, "admin@example.com", PASSWORD)
    caller = platform.authenticate(platform.login(tenant, "admin@example.com", PASSWORD)[0],
                                   tenant)
    issued: list[str] = []
    real_issue = ControlPlane.issue

    def issue_after_a_lock(self: ControlPlane, *args: Any) -> tuple[str, float | None]:
        kmslocal.client(CUSTOMER).disable_key(KeyId=arn)
        assert platform.lifecycle.check(tenant, "event").state.value == "locked"
        token, expires = real_issue(self, *args)
        issued.append(token)
        return token, expires

    monkeypatch.setattr(ControlPlane, "issue", issue_after_a_lock)
    def get_a_token() -> object:
        if kind == "session":
            return platform.login(tenant, "admin@example.com", PASSWORD)
        return platform.api_token(caller)

    with pytest.raises(TenantKeyUnavailable):
        get_a_token()
    monkeypatch.undo()
    kmslocal.client(CUSTOMER).enable_key(KeyId=arn)
    assert platform.lifecycle.check(tenant, "event").state.value == "active"
    assert platform.control.resolve(issued[0], platform.clock.now()) is None
