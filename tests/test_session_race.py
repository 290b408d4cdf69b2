"""A sign-in that a lock overtakes: the password was checked while the key was usable,
the session is written after the lock revoked every token. It must not outlive the lock.
The interleaving is forced by running the lock inside the token write."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cmek.platform.access import TenantKeyUnavailable
from cmek.platform.control import ControlPlane
from cmek.platform.service import Platform
from tests.kmslocal_harness import CUSTOMER, KmsLocal
from tests.platform_harness import customer_key

PASSWORD = "correct horse battery"


@pytest.mark.parametrize("kind", ["session", "api"])
def test_a_token_issued_as_a_lock_lands_never_outlives_it(
    local_platform: Platform, kmslocal: KmsLocal, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    arn = customer_key(kmslocal)
    local_platform.provision(tenant, arn, "admin@example.com", PASSWORD)
    token = local_platform.sessions.login(tenant, "admin@example.com", PASSWORD)[0]
    caller = local_platform.sessions.authenticate(token, tenant)
    issued: list[str] = []
    real_issue = ControlPlane.issue

    def issue_after_a_lock(self: ControlPlane, *args: Any) -> tuple[str, float | None]:
        kmslocal.client(CUSTOMER).disable_key(KeyId=arn)
        assert local_platform.lifecycle.check(tenant, "event").state.value == "locked"
        token, expires = real_issue(self, *args)
        issued.append(token)
        return token, expires

    monkeypatch.setattr(ControlPlane, "issue", issue_after_a_lock)
    def get_a_token() -> object:
        if kind == "session":
            return local_platform.sessions.login(tenant, "admin@example.com", PASSWORD)
        return local_platform.sessions.api_token(caller)

    with pytest.raises(TenantKeyUnavailable):
        get_a_token()
    monkeypatch.undo()
    kmslocal.client(CUSTOMER).enable_key(KeyId=arn)
    assert local_platform.lifecycle.check(tenant, "event").state.value == "active"
    assert local_platform.control.resolve(issued[0], local_platform.clock.now()) is None
