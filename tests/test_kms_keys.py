"""Conformance: KMS key management (create, describe, list, states, deletion, aliases, tags,
cross-account resolution, rotation settings), driven through boto3 over HTTP.

Every test is written against AWS KMS behaviour; tests that need kmslocal's dev clock say so
with ``kms.require_local``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.conftest import Target, alias_name, error_code, eventually
from tests.kmslocal_harness import CUSTOMER

T = TypeVar("T")
DAY = dt.timedelta(days=1)


# --- helpers ----------------------------------------------------------------------------
def key_arn(kms: Target, key_id: str, account: str | None = None,
            region: str | None = None) -> str:
    return f"arn:aws:kms:{region or kms.region}:{account or kms.customer_account}:key/{key_id}"


def other_region(kms: Target) -> str:
    return "eu-west-1" if kms.region != "eu-west-1" else "us-east-1"


def state(kms: Target, key_id: str) -> str:
    return str(kms.customer.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def all_key_ids(client: Any) -> list[str]:
    ids: list[str] = []
    kwargs: dict[str, Any] = {"Limit": 1000}
    while True:
        page = client.list_keys(**kwargs)
        ids += [k["KeyId"] for k in page["Keys"]]
        if not page.get("Truncated"):
            return ids
        kwargs["Marker"] = page["NextMarker"]


def all_alias_names(client: Any) -> list[str]:
    names: list[str] = []
    kwargs: dict[str, Any] = {"Limit": 100}
    while True:
        page = client.list_aliases(**kwargs)
        names += [a["AliasName"] for a in page["Aliases"]]
        if not page.get("Truncated"):
            return names
        kwargs["Marker"] = page["NextMarker"]


def clock_now(kms: Target) -> dt.datetime:
    local = kms.require_local("the dev clock")
    return dt.datetime.fromisoformat(local.dev_call("GET", "/_kmslocal/clock")["now"])


def unvalidated_customer(kms: Target) -> Any:
    """A customer client without botocore's client-side checks, to reach the server's."""
    cfg = BotoConfig(parameter_validation=False, retries={"max_attempts": 1})
    if kms.local is not None:
        return kms.local.client(CUSTOMER, parameter_validation=False)
    session = boto3.Session(profile_name=os.environ["CMEK_CONFORMANCE_CUSTOMER_PROFILE"],
                            region_name=kms.region)
    return session.client("kms", config=cfg)


# --- CreateKey / DescribeKey / ListKeys ------------------------------------------------
def test_create_key_defaults(kms: Target) -> None:
    meta = kms.create_key(Description="conformance default key")
    key_id = meta["KeyId"]
    uuid.UUID(key_id)  # a plain key id is a UUID
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["Origin"] == "AWS_KMS"
    assert meta["MultiRegion"] is False
    assert meta["KeyState"] == "Enabled"
    assert meta["Enabled"] is True
    assert meta["KeyManager"] == "CUSTOMER"
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert meta["Arn"] == f"arn:aws:kms:{kms.region}:{kms.customer_account}:key/{key_id}"
    assert meta["AWSAccountId"] == kms.customer_account
    assert meta["Description"] == "conformance default key"
    assert "DeletionDate" not in meta
    assert isinstance(meta["CreationDate"], dt.datetime)


def test_create_key_without_description_is_empty(kms: Target) -> None:
    meta = kms.create_key()
    assert meta["Description"] == ""
    assert kms.customer.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["Description"] == ""


def test_describe_key_by_id_arn_alias_and_alias_arn(kms: Target) -> None:
    meta = kms.create_key(Description="describe me")
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    alias_arn = f"arn:aws:kms:{kms.region}:{kms.customer_account}:{alias}"
    for ref in (meta["KeyId"], meta["Arn"], alias, alias_arn):
        described = kms.customer.describe_key(KeyId=ref)["KeyMetadata"]
        assert described["KeyId"] == meta["KeyId"], ref
        assert described["Arn"] == meta["Arn"], ref
        assert described["Description"] == "describe me", ref
        assert described["KeyState"] == "Enabled", ref


def test_describe_unknown_key_is_not_found(kms: Target) -> None:
    assert error_code(lambda: kms.customer.describe_key(KeyId=str(uuid.uuid4()))) == (
        "NotFoundException"
    )
    assert error_code(lambda: kms.customer.describe_key(KeyId=alias_name())) == (
        "NotFoundException"
    )


def test_list_keys_shows_new_key_and_paginates(kms: Target) -> None:
    first = kms.create_key()
    second = kms.create_key()
    page = kms.customer.list_keys(Limit=1)
    assert len(page["Keys"]) == 1
    assert page["Truncated"] is True
    assert page["NextMarker"]
    seen: list[str] = [page["Keys"][0]["KeyId"]]
    arns: dict[str, str] = {page["Keys"][0]["KeyId"]: page["Keys"][0]["KeyArn"]}
    marker = page["NextMarker"]
    while True:
        page = kms.customer.list_keys(Limit=100, Marker=marker)
        assert len(page["Keys"]) <= 100
        seen += [k["KeyId"] for k in page["Keys"]]
        arns.update({k["KeyId"]: k["KeyArn"] for k in page["Keys"]})
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert len(seen) == len(set(seen)), "a key was listed on two pages"
    for meta in (first, second):
        assert meta["KeyId"] in seen
        assert arns[meta["KeyId"]] == meta["Arn"]


def test_list_keys_is_per_account(kms: Target) -> None:
    meta = kms.create_key()
    assert meta["KeyId"] not in all_key_ids(kms.provider)


@pytest.mark.parametrize(("spec", "usage"), [
    ("SYMMETRIC_DEFAULT", "SIGN_VERIFY"),
    ("SYMMETRIC_DEFAULT", "GENERATE_VERIFY_MAC"),
    ("HMAC_256", "ENCRYPT_DECRYPT"),
    ("RSA_2048", "GENERATE_VERIFY_MAC"),
])
def test_invalid_key_spec_usage_combination(kms: Target, spec: str, usage: str) -> None:
    before = set(all_key_ids(kms.customer))
    code = error_code(lambda: kms.create_key(KeySpec=spec, KeyUsage=usage))
    assert code == "ValidationException"
    assert set(all_key_ids(kms.customer)) <= before  # nothing was created


def test_rsa_sign_verify_key(kms: Target) -> None:
    meta = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    described = kms.customer.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    for m in (meta, described):
        assert m["KeySpec"] == "RSA_2048"
        assert m["KeyUsage"] == "SIGN_VERIFY"
        assert m["KeyState"] == "Enabled"
        assert "RSASSA_PSS_SHA_256" in m["SigningAlgorithms"]
        assert "EncryptionAlgorithms" not in m


def test_hmac_key(kms: Target) -> None:
    meta = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    described = kms.customer.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    for m in (meta, described):
        assert m["KeySpec"] == "HMAC_256"
        assert m["KeyUsage"] == "GENERATE_VERIFY_MAC"
        assert m["KeyState"] == "Enabled"
        assert m["MacAlgorithms"] == ["HMAC_SHA_256"]


def test_multi_region_key_has_mrk_id(kms: Target) -> None:
    meta = kms.create_key(MultiRegion=True)
    assert meta["KeyId"].startswith("mrk-")
    assert len(meta["KeyId"]) == 4 + 32
    assert meta["MultiRegion"] is True
    assert meta["Arn"] == key_arn(kms, meta["KeyId"])
    described = kms.customer.describe_key(KeyId=meta["Arn"])["KeyMetadata"]
    assert described["KeyId"] == meta["KeyId"]
    assert described["MultiRegion"] is True
    assert described["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"


def test_external_origin_key_is_pending_import(kms: Target) -> None:
    meta = kms.create_key(Origin="EXTERNAL")
    assert meta["Origin"] == "EXTERNAL"
    assert meta["KeyState"] == "PendingImport"
    assert meta["Enabled"] is False
    assert state(kms, meta["KeyId"]) == "PendingImport"
    assert error_code(lambda: kms.customer.enable_key(KeyId=meta["KeyId"])) == (
        "KMSInvalidStateException"
    )


# --- Enable / Disable / deletion -----------------------------------------------------
def test_disable_and_enable_key(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    kms.customer.disable_key(KeyId=key_id)
    meta = kms.customer.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled"
    assert meta["Enabled"] is False
    kms.customer.disable_key(KeyId=key_id)  # idempotent
    assert state(kms, key_id) == "Disabled"
    kms.customer.enable_key(KeyId=key_id)
    meta = kms.customer.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    assert meta["Enabled"] is True


def test_schedule_key_deletion_default_30_days(kms: Target) -> None:
    meta = kms.create_key()
    out = kms.customer.schedule_key_deletion(KeyId=meta["KeyId"])
    assert out["KeyId"] == meta["Arn"]
    assert out["KeyState"] == "PendingDeletion"
    assert out["PendingWindowInDays"] == 30
    assert abs(out["DeletionDate"] - meta["CreationDate"] - 30 * DAY) < dt.timedelta(hours=1)
    described = kms.customer.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert described["Enabled"] is False
    assert described["DeletionDate"] == out["DeletionDate"]


def test_schedule_key_deletion_explicit_7_days(kms: Target) -> None:
    meta = kms.create_key()
    out = kms.customer.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    assert out["PendingWindowInDays"] == 7
    assert out["KeyState"] == "PendingDeletion"
    assert abs(out["DeletionDate"] - meta["CreationDate"] - 7 * DAY) < dt.timedelta(hours=1)
    described = kms.customer.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert described["DeletionDate"] == out["DeletionDate"]


@pytest.mark.parametrize("days", [6, 31])
def test_schedule_key_deletion_window_out_of_range(kms: Target, days: int) -> None:
    key_id = kms.create_key()["KeyId"]
    code = error_code(lambda: kms.customer.schedule_key_deletion(
        KeyId=key_id, PendingWindowInDays=days))
    assert code == "ValidationException"
    assert state(kms, key_id) == "Enabled"


def test_cancel_key_deletion_leaves_key_disabled(kms: Target) -> None:
    meta = kms.create_key()
    key_id = meta["KeyId"]
    kms.customer.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    out = kms.customer.cancel_key_deletion(KeyId=key_id)
    assert out["KeyId"] == meta["Arn"]
    described = kms.customer.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "Disabled"
    assert "DeletionDate" not in described
    kms.customer.enable_key(KeyId=key_id)
    assert state(kms, key_id) == "Enabled"


def test_cancel_key_deletion_on_enabled_key_is_invalid_state(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    assert error_code(lambda: kms.customer.cancel_key_deletion(KeyId=key_id)) == (
        "KMSInvalidStateException"
    )
    assert state(kms, key_id) == "Enabled"


def test_state_changes_refused_while_pending_deletion(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    kms.customer.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    for call in (
        lambda: kms.customer.disable_key(KeyId=key_id),
        lambda: kms.customer.enable_key(KeyId=key_id),
        lambda: kms.customer.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7),
    ):
        assert error_code(call) == "KMSInvalidStateException"
    assert state(kms, key_id) == "PendingDeletion"


def test_key_is_deleted_at_deletion_date_not_before(kms: Target) -> None:
    local = kms.require_local("advances the clock past the deletion window")
    meta = kms.create_key()
    key_id = meta["KeyId"]
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=key_id)
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"before deletion")["CiphertextBlob"]
    deletion = kms.customer.schedule_key_deletion(
        KeyId=key_id, PendingWindowInDays=7)["DeletionDate"]

    # One second before the deletion date the key still exists, pending deletion.
    local.advance((deletion - clock_now(kms)).total_seconds() - 1)
    described = kms.customer.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert key_id in all_key_ids(kms.customer)
    assert alias in all_alias_names(kms.customer)

    local.advance(2)
    assert error_code(lambda: kms.customer.describe_key(KeyId=key_id)) == "NotFoundException"
    assert error_code(lambda: kms.customer.describe_key(KeyId=meta["Arn"])) == (
        "NotFoundException"
    )
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob)) in (
        "NotFoundException", "InvalidCiphertextException",
    )
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob, KeyId=key_id)) in (
        "NotFoundException", "InvalidCiphertextException",
    )
    assert alias not in all_alias_names(kms.customer)
    assert error_code(lambda: kms.customer.describe_key(KeyId=alias)) == "NotFoundException"
    assert key_id not in all_key_ids(kms.customer)
    # ... and it stays gone.
    local.advance(DAY.total_seconds())
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob)) in (
        "NotFoundException", "InvalidCiphertextException",
    )


# --- aliases -------------------------------------------------------------------------
def test_create_alias_and_list_by_key(kms: Target) -> None:
    meta = kms.create_key()
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    aliases = kms.customer.list_aliases(KeyId=meta["KeyId"])["Aliases"]
    assert [a["AliasName"] for a in aliases] == [alias]
    assert aliases[0]["TargetKeyId"] == meta["KeyId"]
    assert aliases[0]["AliasArn"] == f"arn:aws:kms:{kms.region}:{kms.customer_account}:{alias}"
    # the filter also takes the key's ARN, and excludes other keys' aliases
    other = kms.create_key()["KeyId"]
    kms.customer.create_alias(AliasName=alias_name(), TargetKeyId=other)
    by_arn = kms.customer.list_aliases(KeyId=meta["Arn"])["Aliases"]
    assert [a["AliasName"] for a in by_arn] == [alias]


def test_create_alias_duplicate_is_already_exists(kms: Target) -> None:
    first = kms.create_key()["KeyId"]
    second = kms.create_key()["KeyId"]
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=first)
    code = error_code(lambda: kms.customer.create_alias(AliasName=alias, TargetKeyId=second))
    assert code == "AlreadyExistsException"
    assert kms.customer.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == first


def test_alias_name_must_start_with_alias_prefix(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    name = f"conformance-{uuid.uuid4().hex[:12]}"
    code = error_code(lambda: kms.customer.create_alias(AliasName=name, TargetKeyId=key_id))
    assert code == "ValidationException"
    assert kms.customer.list_aliases(KeyId=key_id)["Aliases"] == []


def test_reserved_aws_alias_prefix_is_refused(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    name = f"alias/aws/conformance-{uuid.uuid4().hex[:12]}"
    code = error_code(lambda: kms.customer.create_alias(AliasName=name, TargetKeyId=key_id))
    assert code in ("AccessDeniedException", "NotAuthorizedException", "ValidationException")
    assert kms.customer.list_aliases(KeyId=key_id)["Aliases"] == []


def test_update_alias_retargets(kms: Target) -> None:
    first = kms.create_key()["KeyId"]
    second = kms.create_key()["KeyId"]
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=first)
    kms.customer.update_alias(AliasName=alias, TargetKeyId=second)
    assert kms.customer.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == second
    assert kms.customer.list_aliases(KeyId=first)["Aliases"] == []
    assert [a["AliasName"] for a in kms.customer.list_aliases(KeyId=second)["Aliases"]] == [
        alias
    ]
    blob = kms.customer.encrypt(KeyId=alias, Plaintext=b"x")["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=blob)["KeyId"] == key_arn(kms, second)


def test_update_unknown_alias_is_not_found(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    code = error_code(lambda: kms.customer.update_alias(AliasName=alias_name(),
                                                        TargetKeyId=key_id))
    assert code == "NotFoundException"


def test_delete_alias(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=key_id)
    kms.customer.delete_alias(AliasName=alias)
    assert kms.customer.list_aliases(KeyId=key_id)["Aliases"] == []
    assert error_code(lambda: kms.customer.describe_key(KeyId=alias)) == "NotFoundException"
    assert state(kms, key_id) == "Enabled"  # the key itself is untouched
    # the name is free again
    kms.customer.create_alias(AliasName=alias, TargetKeyId=key_id)
    assert kms.customer.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == key_id


def test_delete_unknown_alias_is_not_found(kms: Target) -> None:
    assert error_code(lambda: kms.customer.delete_alias(AliasName=alias_name())) == (
        "NotFoundException"
    )


# --- tags ----------------------------------------------------------------------------
def test_tag_list_untag(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    assert kms.customer.list_resource_tags(KeyId=key_id)["Tags"] == []
    kms.customer.tag_resource(KeyId=key_id, Tags=[
        {"TagKey": "tenant", "TagValue": "acme"}, {"TagKey": "env", "TagValue": "test"},
    ])
    tags = {t["TagKey"]: t["TagValue"] for t in
            kms.customer.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"tenant": "acme", "env": "test"}
    kms.customer.tag_resource(KeyId=key_id, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    tags = {t["TagKey"]: t["TagValue"] for t in
            kms.customer.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"tenant": "acme", "env": "prod"}
    kms.customer.untag_resource(KeyId=key_id, TagKeys=["tenant"])
    tags = {t["TagKey"]: t["TagValue"] for t in
            kms.customer.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"env": "prod"}


def test_create_key_with_tags(kms: Target) -> None:
    key_id = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "storage"}])["KeyId"]
    assert kms.customer.list_resource_tags(KeyId=key_id)["Tags"] == [
        {"TagKey": "team", "TagValue": "storage"}
    ]


def test_aws_tag_prefix_is_refused(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    code = error_code(lambda: kms.customer.tag_resource(
        KeyId=key_id, Tags=[{"TagKey": "aws:owner", "TagValue": "me"}]))
    assert code == "TagException"
    assert kms.customer.list_resource_tags(KeyId=key_id)["Tags"] == []


# --- cross-account resolution --------------------------------------------------------
def test_bare_key_id_resolves_in_callers_account(kms: Target) -> None:
    meta = kms.create_key(policy=kms.provider_policy())
    assert error_code(lambda: kms.provider.describe_key(KeyId=meta["KeyId"])) == (
        "NotFoundException"
    )
    described = kms.provider.describe_key(KeyId=meta["Arn"])["KeyMetadata"]
    assert described["KeyId"] == meta["KeyId"]
    assert described["Arn"] == meta["Arn"]
    assert described["AWSAccountId"] == kms.customer_account
    assert described["KeyState"] == "Enabled"


def test_cross_account_describe_needs_policy(kms: Target) -> None:
    meta = kms.create_key()  # default policy: the owner account only
    code = error_code(lambda: kms.provider.describe_key(KeyId=meta["Arn"]))
    assert code == "AccessDeniedException"


def test_arn_naming_wrong_account_is_not_found(kms: Target) -> None:
    meta = kms.create_key(policy=kms.provider_policy())
    wrong = key_arn(kms, meta["KeyId"], account=kms.provider_account)
    assert error_code(lambda: kms.provider.describe_key(KeyId=wrong)) == "NotFoundException"
    assert error_code(lambda: kms.customer.describe_key(KeyId=wrong)) == "NotFoundException"


def test_arn_in_another_region_is_not_found(kms: Target) -> None:
    meta = kms.create_key(policy=kms.provider_policy())
    elsewhere = key_arn(kms, meta["KeyId"], region=other_region(kms))
    assert error_code(lambda: kms.customer.describe_key(KeyId=elsewhere)) == (
        "NotFoundException"
    )
    assert error_code(lambda: kms.provider.describe_key(KeyId=elsewhere)) == (
        "NotFoundException"
    )


def test_admin_operations_are_not_cross_account(kms: Target) -> None:
    everything = {
        "Sid": "Provider may do anything", "Effect": "Allow",
        "Principal": {"AWS": kms.provider_root()}, "Action": "kms:*", "Resource": "*",
    }
    meta = kms.create_key(policy=kms.provider_policy(everything))
    arn = meta["Arn"]
    for call in (
        lambda: kms.provider.disable_key(KeyId=arn),
        lambda: kms.provider.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7),
        lambda: kms.provider.create_alias(AliasName=alias_name(), TargetKeyId=arn),
        lambda: kms.provider.tag_resource(KeyId=arn, Tags=[{"TagKey": "k", "TagValue": "v"}]),
        lambda: kms.provider.put_key_policy(KeyId=arn, PolicyName="default",
                                            Policy=kms.provider_policy()),
    ):
        assert error_code(call) in ("NotFoundException", "AccessDeniedException")
    assert state(kms, meta["KeyId"]) == "Enabled"
    assert kms.customer.list_resource_tags(KeyId=meta["KeyId"])["Tags"] == []
    policy = json.loads(kms.customer.get_key_policy(KeyId=meta["KeyId"],
                                                    PolicyName="default")["Policy"])
    assert any(s.get("Sid") == "Provider may do anything" for s in policy["Statement"])


# --- rotation settings ---------------------------------------------------------------
def test_enable_key_rotation_default_period(kms: Target) -> None:
    meta = kms.create_key()
    key_id = meta["KeyId"]
    status = kms.customer.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is False
    assert status["KeyId"] == meta["Arn"]
    kms.customer.enable_key_rotation(KeyId=key_id)
    status = kms.customer.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True
    assert status["KeyId"] == meta["Arn"]
    assert status["RotationPeriodInDays"] == 365
    assert abs(status["NextRotationDate"] - meta["CreationDate"] - 365 * DAY) < 2 * DAY


def test_enable_key_rotation_custom_period(kms: Target) -> None:
    meta = kms.create_key()
    kms.customer.enable_key_rotation(KeyId=meta["KeyId"], RotationPeriodInDays=90)
    status = kms.customer.get_key_rotation_status(KeyId=meta["KeyId"])
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90
    assert abs(status["NextRotationDate"] - meta["CreationDate"] - 90 * DAY) < 2 * DAY


def test_rotation_period_below_90_days_is_invalid(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    raw = unvalidated_customer(kms)  # botocore would refuse 89 before sending it
    code = error_code(lambda: raw.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=89))
    assert code == "ValidationException"
    assert kms.customer.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_disable_key_rotation(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    kms.customer.enable_key_rotation(KeyId=key_id)
    assert kms.customer.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    kms.customer.disable_key_rotation(KeyId=key_id)
    status = kms.customer.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is False
    assert "NextRotationDate" not in status


def test_rotation_on_disabled_key_is_disabled_exception(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    kms.customer.disable_key(KeyId=key_id)
    assert error_code(lambda: kms.customer.enable_key_rotation(KeyId=key_id)) == (
        "DisabledException"
    )
    assert error_code(lambda: kms.customer.rotate_key_on_demand(KeyId=key_id)) == (
        "DisabledException"
    )
    kms.customer.enable_key(KeyId=key_id)
    assert kms.customer.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_rotation_on_asymmetric_key_is_unsupported(kms: Target) -> None:
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyId"]
    for call in (
        lambda: kms.customer.enable_key_rotation(KeyId=key_id),
        lambda: kms.customer.rotate_key_on_demand(KeyId=key_id),
    ):
        assert error_code(call) == "UnsupportedOperationException"


def test_rotate_key_on_demand_lists_on_demand_rotation(kms: Target) -> None:
    meta = kms.create_key()
    key_id = meta["KeyId"]
    assert kms.customer.list_key_rotations(KeyId=key_id)["Rotations"] == []
    assert kms.customer.rotate_key_on_demand(KeyId=key_id)["KeyId"] == meta["Arn"]

    def rotated() -> list[dict[str, Any]]:
        rotations: list[dict[str, Any]] = kms.customer.list_key_rotations(
            KeyId=key_id)["Rotations"]
        assert len(rotations) == 1
        return rotations

    rotations = eventually(kms, rotated)
    assert rotations[0]["RotationType"] == "ON_DEMAND"
    assert rotations[0]["KeyId"] == meta["Arn"]
    assert rotations[0]["RotationDate"] >= meta["CreationDate"]
    # on-demand rotation does not switch on automatic rotation
    assert kms.customer.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
