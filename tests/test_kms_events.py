"""Key events (EventBridge stand-in): what a tenant's key-event endpoint receives.

kmslocal only: on AWS these arrive through EventBridge rules, not a test receiver.
The session ``event_sink`` receives the customer account's events from the shared server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Target
from tests.kmslocal_harness import (
    CUSTOMER,
    EVENT_SECRET,
    PROVIDER,
    Delivery,
    EventSink,
    KmsLocal,
    about,
    event_name,
    has_events,
    header,
    write_config,
)

DAY = 86400


def _rid(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["RequestId"])


def _assert_api_event(
    delivery: Delivery, arn: str, operation: str, request_id: str
) -> None:
    headers, event = delivery
    assert header(headers) == EVENT_SECRET
    assert event["source"] == "aws.kms"
    assert event["detail-type"] == "AWS API Call via CloudTrail"
    assert event["account"] == "222222222222"
    assert event["resources"] == [arn]
    assert event["id"]
    detail = event["detail"]
    assert detail["eventName"] == operation
    assert detail["eventSource"] == "kms.amazonaws.com"
    assert detail["requestID"] == request_id
    assert "errorCode" not in detail


@pytest.fixture
def local(kms: Target) -> KmsLocal:
    return kms.require_local("key events are delivered to kmslocal's configured targets")


def test_state_changing_calls_deliver_events(
    kms: Target, local: KmsLocal, event_sink: EventSink
) -> None:
    key = kms.create_key()
    arn, c = key["Arn"], kms.customer
    rids: dict[str, str] = {}
    rids["RotateKeyOnDemand"] = _rid(c.rotate_key_on_demand(KeyId=arn))
    rids["PutKeyPolicy"] = _rid(
        c.put_key_policy(KeyId=arn, PolicyName="default", Policy=kms.provider_policy())
    )
    revoked = c.create_grant(KeyId=arn, GranteePrincipal=PROVIDER[0], Operations=["Decrypt"])
    rids["RevokeGrant"] = _rid(c.revoke_grant(KeyId=arn, GrantId=revoked["GrantId"]))
    retired = c.create_grant(
        KeyId=arn, GranteePrincipal=PROVIDER[0], RetiringPrincipal=CUSTOMER[0],
        Operations=["Decrypt"],
    )
    rids["RetireGrant"] = _rid(c.retire_grant(KeyId=arn, GrantId=retired["GrantId"]))
    rids["DisableKey"] = _rid(c.disable_key(KeyId=arn))
    rids["EnableKey"] = _rid(c.enable_key(KeyId=arn))
    rids["ScheduleKeyDeletion"] = _rid(c.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7))
    rids["CancelKeyDeletion"] = _rid(c.cancel_key_deletion(KeyId=arn))

    got = event_sink.collect(has_events(*rids), about(arn))
    by_name = {event_name(e): (h, e) for h, e in got}
    for operation, rid in rids.items():
        _assert_api_event(by_name[operation], arn, operation, rid)
    # CreateGrant is not among the events; every delivered event is a distinct event.
    assert "CreateGrant" not in by_name
    ids = [e["id"] for _, e in got]
    assert len(set(ids)) == len(ids) == len(rids)


def test_deletion_at_window_end_delivers_cmk_deletion(
    kms: Target, local: KmsLocal, event_sink: EventSink
) -> None:
    key = kms.create_key()
    kms.customer.schedule_key_deletion(KeyId=key["Arn"], PendingWindowInDays=7)
    local.advance(7 * DAY + 60)
    got = event_sink.collect(
        has_events("ScheduleKeyDeletion", "KMS CMK Deletion"), about(key["Arn"])
    )
    headers, event = next((h, e) for h, e in got if event_name(e) == "KMS CMK Deletion")
    assert header(headers) == EVENT_SECRET
    assert event["source"] == "aws.kms"
    assert event["account"] == "222222222222"
    assert event["resources"] == [key["Arn"]]
    assert event["detail"] == {"key-id": key["KeyId"]}
    with pytest.raises(ClientError) as caught:
        kms.customer.describe_key(KeyId=key["Arn"])
    assert caught.value.response["Error"]["Code"] == "NotFoundException"


@pytest.fixture
def private(local: KmsLocal, tmp_path: Path) -> Iterator[tuple[KmsLocal, EventSink]]:
    """A server of this test's own: rotation needs 91 days, more than the shared clock
    should jump."""
    sink = EventSink()
    server = KmsLocal(tmp_path / "data", write_config(tmp_path / "kmslocal.toml", sink.url))
    server.start()
    try:
        yield server, sink
    finally:
        server.stop()
        sink.close()


def test_automatic_rotation_delivers_cmk_rotation(
    private: tuple[KmsLocal, EventSink]
) -> None:
    server, sink = private
    customer = server.client(CUSTOMER)
    key = customer.create_key()["KeyMetadata"]
    customer.enable_key_rotation(KeyId=key["Arn"], RotationPeriodInDays=90)
    server.advance(91 * DAY)
    got = sink.collect(has_events("KMS CMK Rotation"), about(key["Arn"]))
    headers, event = next((h, e) for h, e in got if event_name(e) == "KMS CMK Rotation")
    assert header(headers) == EVENT_SECRET
    assert event["source"] == "aws.kms"
    assert event["account"] == "222222222222"
    assert event["resources"] == [key["Arn"]]
    assert event["detail"] == {"key-id": key["KeyId"]}
    rotations = customer.list_key_rotations(KeyId=key["Arn"])["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]


def test_failed_deliveries_are_retried(
    kms: Target, local: KmsLocal, event_sink: EventSink
) -> None:
    key = kms.create_key()
    event_sink.fail_next = 2  # two 503s; backoff 0.25 s then 0.5 s
    response = kms.customer.disable_key(KeyId=key["Arn"])
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert kms.customer.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyState"] == "Disabled"
    got = event_sink.collect(has_events("DisableKey"), about(key["Arn"]))
    _assert_api_event(got[-1], key["Arn"], "DisableKey", _rid(response))
    assert event_sink.fail_next == 0


def test_refused_calls_and_crypto_calls_deliver_no_event(
    kms: Target, local: KmsLocal, event_sink: EventSink
) -> None:
    key = kms.create_key(kms.provider_policy())
    arn = key["Arn"]
    kms.customer.encrypt(KeyId=arn, Plaintext=b"no event for me")
    kms.provider.encrypt(KeyId=arn, Plaintext=b"nor for me")
    with pytest.raises(ClientError):
        kms.provider.disable_key(KeyId=arn)  # not the provider's to disable
    kms.customer.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    with pytest.raises(ClientError) as caught:
        kms.customer.disable_key(KeyId=arn)  # pending deletion: refused for its state
    assert caught.value.response["Error"]["Code"] == "KMSInvalidStateException"
    kms.customer.cancel_key_deletion(KeyId=arn)  # the marker: delivered after the rest

    got = event_sink.collect(has_events("CancelKeyDeletion"), about(arn))
    names = [event_name(e) for _, e in got]
    assert "DisableKey" not in names
    assert "Encrypt" not in names
    assert names == ["ScheduleKeyDeletion", "CancelKeyDeletion"]
