"""The usage log, read back through CloudTrail LookupEvents on the same endpoint.

The customer must see every use of their key, allowed or refused, with the encryption
context the caller sent and a request id that lines up with the caller's own logs, and
never a plaintext, data key or ciphertext.

On AWS, CloudTrail delivers records minutes after the call, so the tests that read
their own fresh records skip there; the request validation tests run on both targets.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from tests.conftest import Target
from tests.kmslocal_harness import PROVIDER

CONTEXT = {"cmek:tenant": "acme-trail", "cmek:category": "metadata", "cmek:epoch": "1"}


def _fresh(kms: Target) -> None:
    if kms.local is None:
        pytest.skip("CloudTrail delivery delay of minutes: fresh records are not readable yet")


def _request_id(response: dict[str, Any]) -> str:
    rid = response["ResponseMetadata"]["RequestId"]
    assert rid, response
    return str(rid)


def _refused(call: Any, **kwargs: Any) -> tuple[str, str]:
    """Make a call that must be refused; return its error code and request id."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"], _request_id(caught.value.response)


def _lookup(trail: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every LookupEvents result, following NextToken."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = trail.lookup_events(**kwargs, **({"NextToken": token} if token else {}))
        events += page["Events"]
        token = page.get("NextToken")
        if not token:
            return events


def _by_resource(trail: Any, arn: str, **kwargs: Any) -> list[dict[str, Any]]:
    return _lookup(
        trail, LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": arn}],
        **kwargs,
    )


def _by_name(trail: Any, name: str) -> list[dict[str, Any]]:
    page = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": name}], MaxResults=50
    )
    events: list[dict[str, Any]] = page["Events"]
    return events


def _records(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CloudTrailEvent records by requestID."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        record = json.loads(event["CloudTrailEvent"])
        if "requestID" in record:
            out[record["requestID"]] = record
    return out


def _provider_uses_key(kms: Target) -> tuple[dict[str, Any], str, str, str]:
    """A customer key the provider decrypts under (allowed) and tries to disable (refused).

    Returns the key metadata, the Decrypt request id, the DisableKey request id and the
    DisableKey error code.
    """
    key = kms.create_key(kms.provider_policy())
    blob = kms.customer.encrypt(
        KeyId=key["Arn"], Plaintext=b"trail test", EncryptionContext=CONTEXT
    )["CiphertextBlob"]
    decrypted = kms.provider.decrypt(
        CiphertextBlob=blob, KeyId=key["Arn"], EncryptionContext=CONTEXT
    )
    assert decrypted["Plaintext"] == b"trail test"
    code, disable_rid = _refused(kms.provider.disable_key, KeyId=key["Arn"])
    assert kms.customer.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyState"] == "Enabled"
    return key, _request_id(decrypted), disable_rid, code


def _time(record: dict[str, Any]) -> dt.datetime:
    assert record["eventTime"].endswith("Z"), record["eventTime"]
    return dt.datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00"))


def test_allowed_and_refused_calls_both_reach_the_key_owner(kms: Target) -> None:
    _fresh(kms)
    key, decrypt_rid, disable_rid, disable_code = _provider_uses_key(kms)
    events = _by_resource(kms.customer_trail, key["Arn"])
    records = _records(events)
    assert decrypt_rid in records, sorted(r["eventName"] for r in records.values())
    assert disable_rid in records, sorted(r["eventName"] for r in records.values())

    provider_arn = PROVIDER[0]
    for rid, name in ((decrypt_rid, "Decrypt"), (disable_rid, "DisableKey")):
        record = records[rid]
        assert record["eventName"] == name
        assert record["eventSource"] == "kms.amazonaws.com"
        assert record["requestID"] == rid
        assert record["userIdentity"]["arn"] == provider_arn
        assert record["userIdentity"]["accountId"] == kms.provider_account
        assert record["recipientAccountId"] == kms.customer_account
        assert any(r.get("ARN") == key["Arn"] for r in record["resources"]), record
        wrapper = next(e for e in events if json.loads(e["CloudTrailEvent"])["requestID"] == rid)
        assert abs((_time(record) - wrapper["EventTime"]).total_seconds()) < 1
        assert wrapper["EventName"] == name
        assert wrapper["EventSource"] == "kms.amazonaws.com"
        assert {"ResourceType": "AWS::KMS::Key", "ResourceName": key["Arn"]} in (
            wrapper["Resources"]
        )

    allowed, refused = records[decrypt_rid], records[disable_rid]
    assert allowed["requestParameters"]["encryptionContext"] == CONTEXT
    assert "errorCode" not in allowed
    assert "errorMessage" not in allowed
    assert refused["errorCode"] == disable_code
    assert refused["errorMessage"]


def test_provider_sees_its_own_calls_and_a_third_account_sees_none(kms: Target) -> None:
    _fresh(kms)
    key, decrypt_rid, disable_rid, _ = _provider_uses_key(kms)

    own_decrypts = _records(_by_name(kms.provider_trail, "Decrypt"))
    own_disables = _records(_by_name(kms.provider_trail, "DisableKey"))
    assert decrypt_rid in own_decrypts
    assert disable_rid in own_disables
    for record in (own_decrypts[decrypt_rid], own_disables[disable_rid]):
        assert record["recipientAccountId"] == kms.provider_account
        assert record["userIdentity"]["accountId"] == kms.provider_account
        assert record["userIdentity"]["arn"] == PROVIDER[0]
    assert own_decrypts[decrypt_rid]["requestParameters"]["encryptionContext"] == CONTEXT

    # The customer's own Encrypt stays in the customer's account.
    encrypt_rid = _request_id(kms.customer.encrypt(
        KeyId=key["Arn"], Plaintext=b"x", EncryptionContext=CONTEXT
    ))
    assert encrypt_rid in _records(_by_resource(kms.customer_trail, key["Arn"]))
    assert encrypt_rid not in _records(_by_name(kms.provider_trail, "Encrypt"))

    third = kms.client_for(kms.extra["third"], "cloudtrail")
    assert _by_resource(third, key["Arn"]) == []
    for name in ("Decrypt", "DisableKey", "Encrypt", "CreateKey"):
        seen = _records(_by_name(third, name))
        assert not {decrypt_rid, disable_rid, encrypt_rid} & set(seen)
        assert all(r["recipientAccountId"] == "333333333333" for r in seen.values())


def test_event_name_filter(kms: Target) -> None:
    _fresh(kms)
    key = kms.create_key()
    describe_rid = _request_id(kms.customer.describe_key(KeyId=key["Arn"]))
    policy_rid = _request_id(kms.customer.get_key_policy(KeyId=key["Arn"], PolicyName="default"))
    events = _by_name(kms.customer_trail, "DescribeKey")
    assert events
    assert all(e["EventName"] == "DescribeKey" for e in events)
    records = _records(events)
    assert all(r["eventName"] == "DescribeKey" for r in records.values())
    assert describe_rid in records
    assert policy_rid not in records
    assert policy_rid in _records(_by_name(kms.customer_trail, "GetKeyPolicy"))


def test_start_and_end_time_window(kms: Target) -> None:
    _fresh(kms)
    local = kms.require_local("the dev clock puts an hour between two records")
    key = kms.create_key()
    first = _request_id(kms.customer.describe_key(KeyId=key["Arn"]))
    local.advance(3600)
    second = _request_id(kms.customer.get_key_policy(KeyId=key["Arn"], PolicyName="default"))
    records = _records(_by_resource(kms.customer_trail, key["Arn"]))
    t1, t2 = _time(records[first]), _time(records[second])
    assert t2 - t1 >= dt.timedelta(seconds=3599)
    second_ = dt.timedelta(seconds=1)

    def window(start: dt.datetime, end: dt.datetime) -> set[str]:
        return set(_records(_by_resource(
            kms.customer_trail, key["Arn"], StartTime=start, EndTime=end
        )))

    around_first = window(t1 - second_, t1 + second_)
    assert first in around_first
    assert second not in around_first
    around_second = window(t2 - second_, t2 + second_)
    assert second in around_second
    assert first not in around_second
    assert {first, second} <= window(t1 - second_, t2 + second_)
    assert window(t1 + 10 * second_, t2 - 10 * second_) == set()


def test_paging_returns_every_record_once_newest_first(kms: Target) -> None:
    _fresh(kms)
    key = kms.create_key()
    arn = key["Arn"]
    calls = [
        ("DescribeKey", lambda: kms.customer.describe_key(KeyId=arn)),
        ("GetKeyPolicy", lambda: kms.customer.get_key_policy(KeyId=arn, PolicyName="default")),
        ("ListResourceTags", lambda: kms.customer.list_resource_tags(KeyId=arn)),
        ("GetKeyRotationStatus", lambda: kms.customer.get_key_rotation_status(KeyId=arn)),
        ("Encrypt", lambda: kms.customer.encrypt(KeyId=arn, Plaintext=b"p")),
        ("GenerateDataKey",
         lambda: kms.customer.generate_data_key(KeyId=arn, KeySpec="AES_256")),
        ("ListGrants", lambda: kms.customer.list_grants(KeyId=arn)),
    ]
    rids = [_request_id(call()) for _, call in calls]

    paged: list[dict[str, Any]] = []
    pages = 0
    token: str | None = None
    attrs = [{"AttributeKey": "ResourceName", "AttributeValue": arn}]
    while True:
        page = kms.customer_trail.lookup_events(
            LookupAttributes=attrs, MaxResults=3, **({"NextToken": token} if token else {})
        )
        assert len(page["Events"]) <= 3
        paged += page["Events"]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
        assert pages < 20, "paging does not end"
    assert pages == 3  # 8 records: 3 + 3 + 2

    ids = [e["EventId"] for e in paged]
    assert len(ids) == len(set(ids)) == 8
    whole = kms.customer_trail.lookup_events(LookupAttributes=attrs, MaxResults=50)
    assert [e["EventId"] for e in whole["Events"]] == ids
    assert "NextToken" not in whole

    # Newest first: the calls in reverse, then the key's creation.
    assert [e["EventName"] for e in paged] == [n for n, _ in reversed(calls)] + ["CreateKey"]
    records = [json.loads(e["CloudTrailEvent"]) for e in paged]
    assert [r["requestID"] for r in records[:-1]] == list(reversed(rids))
    times = [e["EventTime"] for e in paged]
    assert times == sorted(times, reverse=True)


def test_two_lookup_attributes_are_refused(kms: Target) -> None:
    with pytest.raises(ClientError) as caught:
        kms.customer_trail.lookup_events(LookupAttributes=[
            {"AttributeKey": "EventName", "AttributeValue": "Decrypt"},
            {"AttributeKey": "EventSource", "AttributeValue": "kms.amazonaws.com"},
        ])
    assert caught.value.response["Error"]["Code"] == "InvalidLookupAttributesException"


def test_max_results_above_50_is_refused(kms: Target) -> None:
    with pytest.raises((ParamValidationError, ClientError)) as caught:
        kms.customer_trail.lookup_events(MaxResults=51)
    if isinstance(caught.value, ClientError):
        assert caught.value.response["Error"]["Code"] == "InvalidMaxResultsException"


def test_start_after_end_is_refused(kms: Target) -> None:
    end = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    with pytest.raises(ClientError) as caught:
        kms.customer_trail.lookup_events(StartTime=end + dt.timedelta(hours=1), EndTime=end)
    assert caught.value.response["Error"]["Code"] == "InvalidTimeRangeException"


def test_records_never_carry_plaintext_data_keys_or_ciphertext(kms: Target) -> None:
    _fresh(kms)
    key = kms.create_key(kms.provider_policy())
    secret_text = f"top-secret-plaintext-{uuid.uuid4()}".encode()
    encrypted = kms.customer.encrypt(
        KeyId=key["Arn"], Plaintext=secret_text, EncryptionContext=CONTEXT
    )
    data_key = kms.provider.generate_data_key(
        KeyId=key["Arn"], KeySpec="AES_256", EncryptionContext=CONTEXT
    )
    decrypted = kms.provider.decrypt(
        CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext=CONTEXT
    )
    assert decrypted["Plaintext"] == secret_text
    rids = {
        _request_id(encrypted): "Encrypt", _request_id(data_key): "GenerateDataKey",
        _request_id(decrypted): "Decrypt",
    }
    forbidden = {
        "plaintext": secret_text.decode(),
        "plaintext (base64)": base64.b64encode(secret_text).decode(),
        "data key (base64)": base64.b64encode(data_key["Plaintext"]).decode(),
        "data key (hex)": data_key["Plaintext"].hex(),
        "ciphertext (base64)": base64.b64encode(encrypted["CiphertextBlob"]).decode(),
        "data key ciphertext (base64)": base64.b64encode(data_key["CiphertextBlob"]).decode(),
    }
    for trail in (kms.customer_trail, kms.provider_trail):
        events = _by_resource(trail, key["Arn"])
        found = {}
        for event in events:
            record = json.loads(event["CloudTrailEvent"])
            if record.get("requestID") in rids:
                found[record["requestID"]] = event["CloudTrailEvent"]
        expected = set(rids) if trail is kms.customer_trail else {
            r for r, name in rids.items() if name != "Encrypt"
        }
        assert set(found) == expected
        for rid, text in found.items():
            for what, value in forbidden.items():
                assert value not in text, f"{rids[rid]} record carries the {what}"
        customer_copy = _records(events).get(_request_id(decrypted))
        if customer_copy is not None:
            assert customer_copy["requestParameters"]["encryptionContext"] == CONTEXT


def test_refused_cross_account_grant_reaches_the_key_owner(kms: Target) -> None:
    """A refusal on a key the provider may name (CreateGrant works across accounts)."""
    _fresh(kms)
    key = kms.create_key(kms.provider_policy())
    code, rid = _refused(
        kms.provider.create_grant, KeyId=key["Arn"], GranteePrincipal=kms.provider_root(),
        Operations=["Decrypt"],
    )
    assert code == "AccessDeniedException"
    records = _records(_by_resource(kms.customer_trail, key["Arn"]))
    assert rid in records
    record = records[rid]
    assert record["eventName"] == "CreateGrant"
    assert record["errorCode"] == "AccessDeniedException"
    assert record["errorMessage"]
    assert record["userIdentity"]["accountId"] == kms.provider_account
    assert record["recipientAccountId"] == kms.customer_account
    assert any(r.get("ARN") == key["Arn"] for r in record["resources"])
