"""Key create (customer side) and key verify (provider side) against a real kmslocal.

The customer (account 222222222222) creates keys with its own boto3 client; the
provider (account 111111111111) verifies them through the KMS port (``BotoKms``), as
the platform does before it provisions a tenant with a key.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from cmek.customer import requirements
from cmek.customer.aws_errors import CredentialsInvalid, EndpointUnreachable
from cmek.customer.create import CreatedKey, KeyCreateFailed, create_key
from cmek.customer.keys import CHECKS, VerifyReport, verification_context, verify_key
from cmek.customer.policy import merge, provider_statements
from cmek.errors import CmekError
from cmek.kms import (
    BotoKms,
    CallerIdentity,
    Ciphertext,
    EncryptionContext,
    GeneratedDataKey,
    KeyDescription,
    KmsSettings,
    UnwrappedDataKey,
)
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal, free_port

PROVIDER_ACCOUNT = "111111111111"
CUSTOMER_ACCOUNT = "222222222222"
THIRD_ACCOUNT = "333333333333"
OWNER_SID = "Enable IAM User Permissions"
USE_SID = "Allow use of the key"
CRYPTO = ("generate_data_key", "decrypt", "encrypt")


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customer(kmslocal: KmsLocal) -> Any:
    return kmslocal.client(CUSTOMER)


@pytest.fixture(scope="module")
def provider(kmslocal: KmsLocal) -> BotoKms:
    return BotoKms(KmsSettings(
        region=REGION, endpoint_url=kmslocal.url, access_key_id=PROVIDER[1],
        secret_access_key=PROVIDER[2], max_attempts=1,
    ))


def default_policy() -> dict[str, Any]:
    """The key policy AWS attaches when CreateKey names none."""
    return {
        "Version": "2012-10-17", "Id": "key-default-1",
        "Statement": [{
            "Sid": OWNER_SID, "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{CUSTOMER_ACCOUNT}:root"},
            "Action": "kms:*", "Resource": "*",
        }],
    }


def provider_policy(
    account: str = PROVIDER_ACCOUNT, *extra: dict[str, Any], tenant: str | None = None
) -> dict[str, Any]:
    policy = merge(default_policy(), account, tenant=tenant)
    return {**policy, "Statement": [*policy["Statement"], *extra]}


def use_statement(policy: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in policy["Statement"] if s.get("Sid") == USE_SID)
    return found


def make_key(customer: Any, policy: dict[str, Any] | None = None, **kwargs: Any) -> str:
    if policy is None:
        policy = provider_policy()
    arn: str = customer.create_key(Policy=json.dumps(policy), **kwargs)["KeyMetadata"]["Arn"]
    return arn


def failed(report: VerifyReport) -> list[str]:
    return [c.name for c in report.checks if not c.ok]


def assert_findings_match(report: VerifyReport) -> None:
    findings = report.findings()
    assert [f["check"] for f in findings] == failed(report)
    for f, c in zip(findings, [c for c in report.checks if not c.ok], strict=True):
        assert f == {"check": c.name, "skipped": c.skipped, "detail": c.detail, "fix": c.fix}
        assert f["fix"]  # every failure says what to do
    assert all(c.fix == "" for c in report.checks if c.ok)
    assert report.ok is (not findings)


def verify(provider: BotoKms, arn: str, tenant: str | None = None) -> VerifyReport:
    report = verify_key(provider, arn, region=REGION, tenant=tenant,
                        provider_account=PROVIDER_ACCOUNT)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert_findings_match(report)
    json.dumps(report.to_json())  # serializable as the platform's response
    return report


def alias_name() -> str:
    return f"cmek-test-{uuid.uuid4().hex[:12]}"


# --- create_key -------------------------------------------------------------------------


def test_create_key_makes_the_exact_key_with_owner_and_provider_statements(
    customer: Any,
) -> None:
    name = alias_name()
    created = create_key(customer, PROVIDER_ACCOUNT, alias=name)

    assert isinstance(created, CreatedKey)
    assert created.alias == f"alias/{name}"
    meta = customer.describe_key(KeyId=created.key_arn)["KeyMetadata"]
    assert meta["KeyId"] == created.key_id
    assert meta["Arn"] == created.key_arn
    assert meta["AWSAccountId"] == CUSTOMER_ACCOUNT
    assert (meta["KeySpec"], meta["KeyUsage"], meta["Origin"], meta["MultiRegion"]) == (
        "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "AWS_KMS", False,
    )
    assert meta["KeyState"] == "Enabled"

    policy = json.loads(customer.get_key_policy(KeyId=created.key_id)["Policy"])
    assert policy == created.policy
    owner = [s for s in policy["Statement"] if s.get("Sid") == OWNER_SID]
    assert owner == default_policy()["Statement"]
    for statement in provider_statements(PROVIDER_ACCOUNT):
        assert statement in policy["Statement"]
    assert f"arn:aws:iam::{PROVIDER_ACCOUNT}:root" in json.dumps(use_statement(policy))

    by_alias = customer.describe_key(KeyId=f"alias/{name}")["KeyMetadata"]
    assert by_alias["KeyId"] == created.key_id
    aliases = customer.list_aliases(KeyId=created.key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == [f"alias/{name}"]
    assert created.to_json() == {
        "key_arn": created.key_arn, "key_id": created.key_id, "alias": f"alias/{name}",
        "policy": policy,
    }


def test_create_key_accepts_alias_prefix_tenant_and_no_alias(customer: Any) -> None:
    name = alias_name()
    created = create_key(customer, PROVIDER_ACCOUNT, alias=f"alias/{name}", tenant="acme",
                         description="acme's key")
    assert created.alias == f"alias/{name}"
    meta = customer.describe_key(KeyId=f"alias/{name}")["KeyMetadata"]
    assert meta["Description"] == "acme's key"
    policy = json.loads(customer.get_key_policy(KeyId=created.key_id)["Policy"])
    for statement in provider_statements(PROVIDER_ACCOUNT, tenant="acme"):
        assert statement in policy["Statement"]

    plain = create_key(customer, PROVIDER_ACCOUNT)
    assert plain.alias is None
    assert customer.list_aliases(KeyId=plain.key_id)["Aliases"] == []


def test_create_key_with_an_existing_alias_schedules_the_new_key_for_deletion(
    customer: Any,
) -> None:
    name = alias_name()
    first = create_key(customer, PROVIDER_ACCOUNT, alias=name)
    with pytest.raises(KeyCreateFailed) as info:
        create_key(customer, PROVIDER_ACCOUNT, alias=name)
    err = info.value
    assert err.code == "key_create_failed"
    assert err.step == "CreateAlias"
    assert err.aws_code == "AlreadyExistsException"
    assert "CreateAlias" in err.message
    assert "\n" not in err.message
    assert err.key_arn is not None
    assert err.key_arn != first.key_arn
    assert "scheduled for deletion" in err.message
    meta = customer.describe_key(KeyId=err.key_arn)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    # the alias still names the first key, which is untouched
    assert customer.describe_key(KeyId=f"alias/{name}")["KeyMetadata"]["KeyId"] == first.key_id
    assert customer.describe_key(KeyId=first.key_id)["KeyMetadata"]["KeyState"] == "Enabled"


class Sabotaged:
    """The customer's real client, with one call sent to kmslocal wrong (a real refusal)."""

    def __init__(self, inner: Any, *, put_policy: bool = False, deletion: bool = False) -> None:
        self.inner = inner
        self.put_policy = put_policy
        self.deletion = deletion

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_key_policy(self, **kwargs: Any) -> Any:
        if self.put_policy:
            kwargs["PolicyName"] = "not-default"
        return self.inner.put_key_policy(**kwargs)

    def schedule_key_deletion(self, **kwargs: Any) -> Any:
        if self.deletion:
            kwargs["KeyId"] = str(uuid.uuid4())
        return self.inner.schedule_key_deletion(**kwargs)


def sabotaged(inner: Any, **kwargs: bool) -> Any:
    return Sabotaged(inner, **kwargs)


def test_create_key_failing_put_key_policy_schedules_the_key_for_deletion(
    customer: Any,
) -> None:
    with pytest.raises(KeyCreateFailed) as info:
        create_key(sabotaged(customer, put_policy=True), PROVIDER_ACCOUNT, alias=alias_name())
    err = info.value
    assert (err.step, err.aws_code) == ("PutKeyPolicy", "NotFoundException")
    assert err.message.startswith("PutKeyPolicy failed: NotFoundException")
    assert err.key_arn is not None
    assert customer.describe_key(KeyId=err.key_arn)["KeyMetadata"]["KeyState"] == (
        "PendingDeletion"
    )
    assert customer.list_aliases(KeyId=err.key_arn)["Aliases"] == []


def test_create_key_says_when_the_cleanup_failed_too(customer: Any) -> None:
    with pytest.raises(KeyCreateFailed) as info:
        create_key(sabotaged(customer, put_policy=True, deletion=True), PROVIDER_ACCOUNT)
    err = info.value
    assert err.step == "PutKeyPolicy"
    assert err.key_arn is not None
    assert "could NOT be scheduled for deletion" in err.message
    assert "delete it by hand" in err.message
    assert "\n" not in err.message
    assert customer.describe_key(KeyId=err.key_arn)["KeyMetadata"]["KeyState"] == "Enabled"
    customer.schedule_key_deletion(KeyId=err.key_arn, PendingWindowInDays=7)


@pytest.mark.parametrize(
    ("account", "alias", "tenant", "code"),
    [("11111111111", None, None, "invalid_account"), ("abc", None, None, "invalid_account"),
     (PROVIDER_ACCOUNT, None, "", "invalid_input"),
     (PROVIDER_ACCOUNT, "bad alias!", None, "invalid_input"),
     (PROVIDER_ACCOUNT, "alias/aws/reserved", None, "invalid_input"),
     (PROVIDER_ACCOUNT, "", None, "invalid_input")],
)
def test_create_key_refuses_bad_input_before_creating_anything(
    account: str, alias: str | None, tenant: str | None, code: str
) -> None:
    # a client that cannot connect: the refusal must come before any call
    dead = boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name=REGION,
        aws_access_key_id=CUSTOMER[1], aws_secret_access_key=CUSTOMER[2],
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(CmekError) as info:
        create_key(dead, account, alias=alias, tenant=tenant)
    assert info.value.code == code


def test_create_key_with_bad_credentials_says_so(kmslocal: KmsLocal) -> None:
    bad = kmslocal.client((CUSTOMER[0], CUSTOMER[1], "not-the-secret"))
    with pytest.raises(CredentialsInvalid) as info:
        create_key(bad, PROVIDER_ACCOUNT)
    assert info.value.code == "credentials_invalid"
    assert info.value.step == "CreateKey"
    unknown = kmslocal.client(("arn:aws:iam::222222222222:user/nobody", "AKIANOBODY", "x"))
    with pytest.raises(CredentialsInvalid):
        create_key(unknown, PROVIDER_ACCOUNT)


def test_create_key_against_a_dead_endpoint_says_unreachable() -> None:
    dead = boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name=REGION,
        aws_access_key_id=CUSTOMER[1], aws_secret_access_key=CUSTOMER[2],
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(EndpointUnreachable) as info:
        create_key(dead, PROVIDER_ACCOUNT)
    assert info.value.code == "endpoint_unreachable"
    assert isinstance(info.value, CmekError)


# --- verify_key: a good key -------------------------------------------------------------


def test_verify_a_created_key_passes_every_check(customer: Any, provider: BotoKms) -> None:
    created = create_key(customer, PROVIDER_ACCOUNT, alias=alias_name())
    for tenant in (None, "acme"):
        report = verify(provider, created.key_arn, tenant)
        assert report.ok, report.findings()
        assert all(c.ok for c in report.checks)
        assert report.findings() == []
        assert report.tenant == tenant
        assert report.key_arn == created.key_arn
        assert report.to_json()["ok"] is True


# A kms:EncryptionContext condition on the usage statement also applies to DescribeKey,
# which carries no encryption context (AWS and kmslocal alike): with the tenant-restricted
# statements of cmek.customer.policy as they stand, DescribeKey is denied. verify still runs
# the cryptographic checks then, and says how to fix the policy.
DESCRIBE_CHECKS = ["reachable", "key_spec", "key_usage", "origin", "single_region", "enabled"]


def assert_only_describe_denied(report: VerifyReport) -> None:
    if report.ok:
        return
    assert failed(report) == DESCRIBE_CHECKS
    reachable = report.check("reachable")
    assert "kms:DescribeKey" in reachable.fix
    assert "kms:EncryptionContext:cmek:tenant" in reachable.fix


def test_verify_a_key_created_for_a_tenant(customer: Any, provider: BotoKms) -> None:
    created = create_key(customer, PROVIDER_ACCOUNT, tenant="acme")
    report = verify(provider, created.key_arn, "acme")
    assert all(c.ok for c in report.checks if c.name in CRYPTO)
    assert_only_describe_denied(report)


def tenant_split_policy(tenant: str) -> dict[str, Any]:
    """Tenant-restricted use, with DescribeKey in a statement of its own."""
    policy = copy.deepcopy(provider_policy())
    use = use_statement(policy)
    use["Action"] = [a for a in use["Action"] if a != "kms:DescribeKey"]
    use["Condition"] = {"StringEquals": {"kms:EncryptionContext:cmek:tenant": tenant}}
    policy["Statement"].append({
        "Sid": "Allow the provider to describe the key", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{PROVIDER_ACCOUNT}:root"},
        "Action": "kms:DescribeKey", "Resource": "*",
    })
    return policy


def test_verify_a_tenant_restricted_key_with_describe_apart(
    customer: Any, provider: BotoKms
) -> None:
    arn = make_key(customer, tenant_split_policy("acme"))
    assert verify(provider, arn, "acme").ok
    other = verify(provider, arn, "globex")
    assert failed(other) == list(CRYPTO)
    gen = other.check("generate_data_key")
    assert "kms:GenerateDataKey" in gen.detail
    assert "kms:EncryptionContext:cmek:tenant" in gen.fix
    assert '"globex"' in gen.fix


def test_verify_calls_carry_the_verification_context(
    kmslocal: KmsLocal, customer: Any, provider: BotoKms
) -> None:
    arn = make_key(customer)
    assert verify(provider, arn, "acme").ok
    trail = kmslocal.client(CUSTOMER, "cloudtrail")
    events = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": arn}]
    )["Events"]
    seen = {}
    for event in events:
        record = json.loads(event["CloudTrailEvent"])
        if record["eventName"] in ("GenerateDataKey", "Decrypt", "Encrypt"):
            seen[record["eventName"]] = record["requestParameters"]["encryptionContext"]
    expected = {"cmek:tenant": "acme", "cmek:category": "verification", "cmek:epoch": "0"}
    assert seen == dict.fromkeys(("GenerateDataKey", "Decrypt", "Encrypt"), expected)
    assert verification_context(None)["cmek:tenant"] == "verify"


class SpyKms:
    """The port, recording every plaintext buffer it hands out."""

    def __init__(self, inner: BotoKms) -> None:
        self.inner = inner
        self.buffers: list[bytearray] = []

    def generate_data_key(self, key_arn: str, context: EncryptionContext) -> GeneratedDataKey:
        out = self.inner.generate_data_key(key_arn, context)
        self.buffers.append(out.plaintext)
        return out

    def decrypt(self, key_arn: str, wrapped: bytes, context: EncryptionContext
                ) -> UnwrappedDataKey:
        out = self.inner.decrypt(key_arn, wrapped, context)
        self.buffers.append(out.plaintext)
        return out

    def encrypt(self, key_arn: str, plaintext: bytes, context: EncryptionContext) -> Ciphertext:
        return self.inner.encrypt(key_arn, plaintext, context)

    def re_encrypt(self, source_arn: str, wrapped: bytes, context: EncryptionContext,
                   dest_arn: str, dest_context: EncryptionContext) -> Ciphertext:
        raise AssertionError("verify never re-encrypts")

    def describe_key(self, key_arn: str) -> KeyDescription:
        return self.inner.describe_key(key_arn)

    def caller_identity(self) -> CallerIdentity:
        return self.inner.caller_identity()


def test_verify_zeroes_the_plaintext_data_keys(customer: Any, provider: BotoKms) -> None:
    spy = SpyKms(provider)
    report = verify_key(spy, make_key(customer), region=REGION)
    assert report.ok
    assert len(spy.buffers) == 2
    for buf in spy.buffers:
        assert len(buf) == 32
        assert buf == bytearray(32)


# --- verify_key: one failing case per check ---------------------------------------------


def test_malformed_arn_fails_arn_and_skips_the_rest(provider: BotoKms) -> None:
    for bad in ("not-an-arn", "alias/my-key", "1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:kms:us-west-2:222222222222:alias/my-key"):
        report = verify(provider, bad)
        assert not report.ok
        arn = report.check("arn")
        assert (arn.name, arn.ok) == ("arn", False)
        assert "arn:aws:kms:REGION:ACCOUNT:key/KEY_ID" in arn.fix
        assert report.check("caller").ok  # who is calling is known without a key
        for c in report.checks[2:]:
            assert not c.ok
            assert c.skipped
            assert c.detail.startswith("skipped: ")
        assert report.check("region").detail == "skipped: arn failed"
        assert len(report.findings()) == len(CHECKS) - 1


def test_key_in_another_region_fails_region(provider: BotoKms) -> None:
    arn = f"arn:aws:kms:us-east-1:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    report = verify(provider, arn)
    assert failed(report) == list(CHECKS[2:])
    region = report.check("region")
    assert "us-east-1" in region.detail
    assert REGION in region.detail
    assert REGION in region.fix
    assert report.check("reachable").detail == "skipped: region failed"


def test_key_that_does_not_exist_fails_reachable(provider: BotoKms) -> None:
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    report = verify(provider, arn)
    assert failed(report) == list(CHECKS[3:])
    reachable = report.check("reachable")
    assert reachable.detail == "key does not exist or the provider is not allowed to see it"
    assert all(report.check(name).detail == "skipped: reachable failed" for name in (
        "key_spec", "key_usage", "origin", "single_region", "enabled"))


@pytest.mark.parametrize(
    ("spec", "usage", "failing"),
    [("RSA_2048", "ENCRYPT_DECRYPT", ["key_spec"]),
     ("HMAC_256", "GENERATE_VERIFY_MAC", ["key_spec", "key_usage"])],
)
def test_wrong_key_spec_fails_with_a_fix(
    customer: Any, provider: BotoKms, spec: str, usage: str, failing: list[str]
) -> None:
    arn = make_key(customer, KeySpec=spec, KeyUsage=usage)
    report = verify(provider, arn)
    assert failed(report) == [*failing, *CRYPTO]
    key_spec = report.check("key_spec")
    assert spec in key_spec.detail
    assert "SYMMETRIC_DEFAULT" in key_spec.fix
    if "key_usage" in failing:
        assert "ENCRYPT_DECRYPT" in report.check("key_usage").fix
    for name in CRYPTO:
        c = next(c for c in report.checks if c.name == name)
        assert c.detail.startswith("skipped: ")


def test_multi_region_key_fails_single_region(customer: Any, provider: BotoKms) -> None:
    arn = make_key(customer, MultiRegion=True)
    report = verify(provider, arn)
    assert failed(report) == ["single_region"]
    single = report.check("single_region")
    assert "multi-Region" in single.detail
    assert "single-Region" in single.fix


def test_disabled_key_fails_enabled_with_the_fix(customer: Any, provider: BotoKms) -> None:
    arn = make_key(customer)
    customer.disable_key(KeyId=arn)
    report = verify(provider, arn)
    assert failed(report) == ["enabled", *CRYPTO]
    enabled = report.check("enabled")
    assert "Disabled" in enabled.detail
    assert "EnableKey" in enabled.fix
    assert "CancelKeyDeletion" not in enabled.fix
    assert report.check("generate_data_key").detail == "skipped: enabled failed"
    customer.enable_key(KeyId=arn)
    assert verify(provider, arn).ok


def test_key_pending_deletion_fails_enabled_with_the_fix(
    customer: Any, provider: BotoKms
) -> None:
    arn = make_key(customer)
    customer.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    report = verify(provider, arn)
    assert failed(report) == ["enabled", *CRYPTO]
    enabled = report.check("enabled")
    assert "PendingDeletion" in enabled.detail
    assert "CancelKeyDeletion then EnableKey" in enabled.fix


def test_policy_without_decrypt_fails_decrypt(customer: Any, provider: BotoKms) -> None:
    policy = copy.deepcopy(provider_policy())
    use = use_statement(policy)
    use["Action"] = [a for a in use["Action"] if a != "kms:Decrypt"]
    assert "kms:Decrypt" not in json.dumps(policy)
    report = verify(provider, make_key(customer, policy))
    assert failed(report) == ["decrypt"]
    decrypt = report.check("decrypt")
    assert "kms:Decrypt" in decrypt.detail
    assert "kms:Decrypt" in decrypt.fix
    assert USE_SID in decrypt.fix
    assert f"arn:aws:iam::{PROVIDER_ACCOUNT}:root" in decrypt.fix


def test_policy_naming_the_wrong_account_fails_reachable(
    customer: Any, provider: BotoKms
) -> None:
    report = verify(provider, make_key(customer, provider_policy(THIRD_ACCOUNT)))
    assert failed(report) == list(CHECKS[3:])
    reachable = report.check("reachable")
    assert "access denied" in reachable.detail
    assert reachable.fix == requirements.call("kms:DescribeKey").fix(PROVIDER_ACCOUNT, None)
    anonymous = verify_key(provider, make_key(customer, provider_policy(THIRD_ACCOUNT)),
                           region=REGION)
    assert "the provider account" in anonymous.check("reachable").fix


def test_explicit_deny_of_encrypt_fails_encrypt(customer: Any, provider: BotoKms) -> None:
    deny = {
        "Sid": "No encrypt for the provider", "Effect": "Deny",
        "Principal": {"AWS": f"arn:aws:iam::{PROVIDER_ACCOUNT}:root"},
        "Action": "kms:Encrypt", "Resource": "*",
    }
    report = verify(provider, make_key(customer, provider_policy(PROVIDER_ACCOUNT, deny)))
    assert failed(report) == ["encrypt"]
    encrypt = report.check("encrypt")
    assert "kms:Encrypt" in encrypt.detail
    assert "kms:Encrypt" in encrypt.fix
    assert "Deny" in encrypt.fix


def test_usage_restricted_to_another_tenant_fails_with_the_tenant_fix(
    customer: Any, provider: BotoKms
) -> None:
    arn = make_key(customer, provider_policy(tenant="other"))
    report = verify(provider, arn, "acme")
    assert failed(report) in (list(CRYPTO), [*DESCRIBE_CHECKS, *CRYPTO])
    gen = report.check("generate_data_key")
    assert (gen.name, gen.ok) == ("generate_data_key", False)
    assert "kms:GenerateDataKey" in gen.detail
    assert USE_SID in gen.fix
    assert "kms:EncryptionContext:cmek:tenant" in gen.fix
    assert '"acme"' in gen.fix
    assert report.check("decrypt").detail == "skipped: generate_data_key failed"
    assert "kms:Encrypt" in report.check("encrypt").detail
    assert "kms:EncryptionContext:cmek:tenant" in report.check("encrypt").fix
    # the tenant the statement names passes the cryptographic checks
    right = verify(provider, arn, "other")
    assert all(c.ok for c in right.checks if c.name in CRYPTO)
    assert_only_describe_denied(right)
    # without a tenant, the fix says that a tenant restriction needs one named
    untenanted = verify(provider, arn)
    assert not untenanted.check("generate_data_key").ok
    assert "--tenant" in untenanted.check("generate_data_key").fix


def test_findings_list_exactly_the_failed_checks(customer: Any, provider: BotoKms) -> None:
    policy = copy.deepcopy(provider_policy())
    use = use_statement(policy)
    use["Action"] = [a for a in use["Action"] if a != "kms:Decrypt"]
    arn = make_key(customer, policy, MultiRegion=True)
    report = verify(provider, arn)
    assert [f["check"] for f in report.findings()] == ["single_region", "decrypt"]
    assert set(report.findings()[0]) == {"check", "skipped", "detail", "fix"}
    body = report.to_json()
    assert body["ok"] is False
    assert [c["name"] for c in body["checks"] if not c["ok"]] == ["single_region", "decrypt"]


def test_unreachable_kms_fails_reachable() -> None:
    dead = BotoKms(KmsSettings(
        region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id=PROVIDER[1], secret_access_key=PROVIDER[2], max_attempts=1,
        connect_timeout=1,
    ))
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    report = verify_key(dead, arn, region=REGION)
    assert failed(report) == [c for c in CHECKS if c not in ("arn", "region")]
    assert report.check("caller").detail.startswith("cannot reach AWS")
    assert report.check("reachable").detail == "skipped: caller failed"
