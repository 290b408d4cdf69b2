"""Conformance: key policies and grants, as the provider and the key owner see them.

Every test drives KMS through boto3 only and is written to hold against real AWS KMS too.
The provider (account 111111111111) always names the customer's key by its full key ARN,
as a cross-account caller must. Tests that need the extra principals kmslocal configures
(a second provider role, a second customer user, a third account) skip on AWS.

On AWS, key policy changes and revoked or retired grants are eventually consistent, so the
checks that follow such a change poll there (`settle`); kmslocal must apply them at once,
so against kmslocal they are checked exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Target
from tests.kmslocal_harness import CUSTOMER_OTHER, PROVIDER, PROVIDER_OTHER, THIRD

DENIED = "AccessDeniedException"
MALFORMED = "MalformedPolicyDocumentException"
OK = "ok"
PROVIDER_ROLE = PROVIDER[0]  # arn:aws:iam::111111111111:role/cmek-platform
THIRD_ACCOUNT = "333333333333"
USAGE = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
ACME = {"cmek:tenant": "acme", "cmek:dataset": "orders"}
OTHER = {"cmek:tenant": "other", "cmek:dataset": "orders"}


# --------------------------------------------------------------------------- helpers


def outcome(call: Callable[..., Any], **kwargs: Any) -> str:
    """``"ok"`` if the call succeeded, else the AWS error code it was refused with."""
    try:
        call(**kwargs)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return OK


def settle(kms: Target, want: str, call: Callable[..., Any], **kwargs: Any) -> str:
    """The outcome of a call made right after a policy or grant change.

    kmslocal is checked once (changes must apply at once); AWS is polled for a while,
    because AWS documents policy and grant changes as eventually consistent.
    """
    got = outcome(call, **kwargs)
    if kms.local is None:
        deadline = time.monotonic() + 120
        while got != want and time.monotonic() < deadline:
            time.sleep(5)
            got = outcome(call, **kwargs)
    return got


def raises(codes: str | tuple[str, ...], call: Callable[..., Any], **kwargs: Any) -> str:
    """Assert the call is refused with one of ``codes``; returns the code."""
    allowed = (codes,) if isinstance(codes, str) else codes
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    code = str(info.value.response["Error"]["Code"])
    assert code in allowed, f"{getattr(call, '__name__', call)}: {code} not in {allowed}"
    return code


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def owner_only(kms: Target) -> str:
    return document(kms.owner_statement())


def statement(
    principal: Any, actions: Any = None, effect: str = "Allow", **extra: Any
) -> dict[str, Any]:
    """A statement for ``principal`` (an ARN, an account root, or ``"*"``)."""
    stmt: dict[str, Any] = {
        "Effect": effect,
        "Principal": principal if principal == "*" else {"AWS": principal},
        "Resource": "*",
    }
    if "NotAction" not in extra:
        stmt["Action"] = USAGE if actions is None else actions
    stmt.update(extra)
    return stmt


def policy_text(kms: Target, key_id: str) -> str:
    return str(kms.customer.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])


def put_policy(kms: Target, key_id: str, text: str, **kwargs: Any) -> None:
    kms.customer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=text, **kwargs)


def customer_blob(kms: Target, key_arn: str, context: dict[str, str] | None = None) -> bytes:
    """Ciphertext the key owner made, for the provider to try to decrypt."""
    out = kms.customer.encrypt(
        KeyId=key_arn, Plaintext=b"tenant secret", EncryptionContext=context or {}
    )
    return bytes(out["CiphertextBlob"])


def provider_grantee(kms: Target) -> str:
    """The provider's role on kmslocal. On AWS the provider profile's identity is not known
    here, so grants there name the provider account, which covers all its principals."""
    return PROVIDER_ROLE if kms.local is not None else kms.provider_root()


def grant(kms: Target, key_arn: str, operations: list[str], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("GranteePrincipal", provider_grantee(kms))
    out: dict[str, Any] = kms.customer.create_grant(
        KeyId=key_arn, Operations=operations, **kwargs
    )
    return out


# --------------------------------------------------------------------------- reference policy


def test_provider_policy_allows_provider_crypto_and_describe(kms: Target) -> None:
    key = kms.create_key(kms.provider_policy())
    arn = key["Arn"]

    described = kms.provider.describe_key(KeyId=arn)["KeyMetadata"]
    assert described["Arn"] == arn
    assert described["AWSAccountId"] == kms.customer_account

    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"provider data", EncryptionContext=ACME)
    assert sealed["KeyId"] == arn
    opened = kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )
    assert opened["Plaintext"] == b"provider data"
    assert opened["KeyId"] == arn

    data_key = kms.provider.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ACME)
    assert len(data_key["Plaintext"]) == 32
    unwrapped = kms.provider.decrypt(
        CiphertextBlob=data_key["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )
    assert unwrapped["Plaintext"] == data_key["Plaintext"]

    no_plain = kms.provider.generate_data_key_without_plaintext(
        KeyId=arn, NumberOfBytes=16, EncryptionContext=ACME
    )
    assert "Plaintext" not in no_plain
    assert len(kms.provider.decrypt(
        CiphertextBlob=no_plain["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"]) == 16


def test_provider_cannot_administer_the_key(kms: Target) -> None:
    key = kms.create_key(kms.provider_policy())
    arn = key["Arn"]
    before = policy_text(kms, key["KeyId"])
    refusals = (DENIED, "NotFoundException")

    raises(refusals, kms.provider.disable_key, KeyId=arn)
    raises(refusals, kms.provider.put_key_policy, KeyId=arn, PolicyName="default",
           Policy=kms.provider_policy(kms.owner_statement()))
    raises(refusals, kms.provider.schedule_key_deletion, KeyId=arn, PendingWindowInDays=7)
    raises(refusals, kms.provider.get_key_policy, KeyId=arn, PolicyName="default")

    meta = kms.customer.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    assert meta["Enabled"] is True
    assert "DeletionDate" not in meta
    assert policy_text(kms, key["KeyId"]) == before


def test_provider_cannot_create_grant_for_itself(kms: Target) -> None:
    """kms:GrantIsForAWSResource is false when the provider calls CreateGrant directly."""
    key = kms.create_key(kms.provider_policy())
    raises(DENIED, kms.provider.create_grant, KeyId=key["Arn"],
           GranteePrincipal=provider_grantee(kms), Operations=["Decrypt", "Encrypt"])
    grants = kms.customer.list_grants(KeyId=key["KeyId"])["Grants"]
    assert grants == []


def test_provider_cannot_reencrypt(kms: Target) -> None:
    key = kms.create_key(kms.provider_policy())
    arn = key["Arn"]
    blob = kms.provider.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    raises(DENIED, kms.provider.re_encrypt, CiphertextBlob=blob["CiphertextBlob"],
           SourceKeyId=arn, SourceEncryptionContext=ACME, DestinationKeyId=arn,
           DestinationEncryptionContext=ACME)


# --------------------------------------------------------------------------- default policy


def test_default_key_policy_delegates_to_the_owner_account(kms: Target) -> None:
    key = kms.create_key()
    doc = json.loads(policy_text(kms, key["KeyId"]))
    statements = doc["Statement"]
    statements = statements if isinstance(statements, list) else [statements]
    owner = [
        s for s in statements
        if s.get("Effect") == "Allow" and s.get("Principal") == {"AWS": kms.customer_root()}
    ]
    assert len(owner) == 1
    assert owner[0]["Action"] in ("kms:*", ["kms:*"])
    assert owner[0]["Resource"] in ("*", ["*"])
    policies = kms.customer.list_key_policies(KeyId=key["KeyId"])["PolicyNames"]
    assert policies == ["default"]


def test_default_key_policy_denies_the_provider(kms: Target) -> None:
    key = kms.create_key()
    arn = key["Arn"]
    blob = customer_blob(kms, arn, ACME)
    raises(DENIED, kms.provider.describe_key, KeyId=arn)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn, EncryptionContext=ACME)
    raises(DENIED, kms.provider.generate_data_key, KeyId=arn, KeySpec="AES_256",
           EncryptionContext=ACME)
    raises(DENIED, kms.provider.generate_data_key_without_plaintext, KeyId=arn,
           KeySpec="AES_256", EncryptionContext=ACME)


# --------------------------------------------------------------- policies without the provider


def test_owner_only_policy_denies_provider(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    blob = customer_blob(kms, arn, ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn, EncryptionContext=ACME)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    # the owner itself is unaffected
    assert kms.customer.decrypt(
        CiphertextBlob=blob, EncryptionContext=ACME
    )["Plaintext"] == b"tenant secret"


def third_account_policy(kms: Target) -> str:
    return document(
        kms.owner_statement(),
        statement(f"arn:aws:iam::{THIRD_ACCOUNT}:root", Sid="Usage by the wrong account"),
    )


def test_usage_statement_for_wrong_account_denies_provider(kms: Target) -> None:
    key = kms.create_key(third_account_policy(kms))
    arn = key["Arn"]
    blob = customer_blob(kms, arn, ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn, EncryptionContext=ACME)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    raises(DENIED, kms.provider.describe_key, KeyId=arn)


def test_usage_statement_for_wrong_account_allows_that_account(kms: Target) -> None:
    third = kms.client_for(kms.extra["third"])
    key = kms.create_key(third_account_policy(kms))
    arn = key["Arn"]
    sealed = third.encrypt(KeyId=arn, Plaintext=b"third", EncryptionContext=ACME)
    assert third.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"third"
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)


# --------------------------------------------------------------------------- explicit deny


def test_explicit_deny_beats_the_provider_allow(kms: Target) -> None:
    deny = statement(kms.provider_root(), "kms:Decrypt", "Deny", Sid="No decrypt")
    key = kms.create_key(kms.provider_policy(deny))
    arn = key["Arn"]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)
    # Only Decrypt is denied; the provider's other allowed actions still work.
    assert kms.provider.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ACME)
    assert kms.provider.describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn
    # The deny names the provider account only: the owner still decrypts.
    assert kms.customer.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext=ACME
    )["Plaintext"] == b"x"


def test_conditional_deny_applies_to_other_tenants_only(kms: Target) -> None:
    deny = statement(
        kms.provider_root(), "kms:Decrypt", "Deny", Sid="Only acme may be decrypted",
        Condition={"StringNotEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}},
    )
    key = kms.create_key(kms.provider_policy(deny))
    arn = key["Arn"]
    acme = kms.provider.encrypt(KeyId=arn, Plaintext=b"acme", EncryptionContext=ACME)
    other = kms.provider.encrypt(KeyId=arn, Plaintext=b"other", EncryptionContext=OTHER)
    bare = kms.provider.encrypt(KeyId=arn, Plaintext=b"bare")

    assert kms.provider.decrypt(
        CiphertextBlob=acme["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"acme"
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=other["CiphertextBlob"], KeyId=arn,
           EncryptionContext=OTHER)
    # A negated operator matches when the key is absent, so no context is denied too.
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=bare["CiphertextBlob"], KeyId=arn)


# --------------------------------------------------------------------------- tenant restriction


def test_usage_restricted_to_one_tenant_context(kms: Target) -> None:
    usage = statement(
        kms.provider_root(), Sid="acme only",
        Condition={"StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}},
    )
    key = kms.create_key(document(kms.owner_statement(), usage))
    arn = key["Arn"]

    data_key = kms.provider.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ACME)
    assert len(data_key["Plaintext"]) == 32
    assert kms.provider.decrypt(
        CiphertextBlob=data_key["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == data_key["Plaintext"]

    raises(DENIED, kms.provider.generate_data_key, KeyId=arn, KeySpec="AES_256",
           EncryptionContext=OTHER)
    raises(DENIED, kms.provider.generate_data_key, KeyId=arn, KeySpec="AES_256")
    # Values are compared case-sensitively by StringEquals.
    raises(DENIED, kms.provider.generate_data_key, KeyId=arn, KeySpec="AES_256",
           EncryptionContext={"cmek:tenant": "ACME"})
    other_blob = customer_blob(kms, arn, OTHER)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=other_blob, KeyId=arn,
           EncryptionContext=OTHER)


# --------------------------------------------------------------------------- principals


def test_role_principal_allows_only_that_role(kms: Target) -> None:
    other = kms.client_for(kms.extra["provider_other"])
    key = kms.create_key(document(kms.owner_statement(), statement(PROVIDER_ROLE)))
    arn = key["Arn"]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"role", EncryptionContext=ACME)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"role"
    raises(DENIED, other.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)
    raises(DENIED, other.encrypt, KeyId=arn, Plaintext=b"x")


def caller_account_policy(kms: Target) -> str:
    return document(
        kms.owner_statement(),
        statement("*", Sid="Any principal of the provider account",
                  Condition={"StringEquals": {"kms:CallerAccount": kms.provider_account}}),
    )


def test_wildcard_principal_limited_by_caller_account(kms: Target) -> None:
    key = kms.create_key(caller_account_policy(kms))
    arn = key["Arn"]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"star", EncryptionContext=ACME)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"star"


def test_wildcard_principal_caller_account_excludes_other_accounts(kms: Target) -> None:
    third = kms.client_for(kms.extra["third"])
    other_role = kms.client_for(kms.extra["provider_other"])
    key = kms.create_key(caller_account_policy(kms))
    arn = key["Arn"]
    raises(DENIED, third.encrypt, KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    raises(DENIED, third.describe_key, KeyId=arn)
    # Every principal of the named account qualifies, not just the provider's main role.
    assert other_role.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)["KeyId"] == arn


def test_not_principal_deny_spares_only_the_named_principals(kms: Target) -> None:
    other = kms.client_for(kms.extra["provider_other"])
    fence = {
        "Sid": "Deny everyone but the platform role and the owner", "Effect": "Deny",
        "NotPrincipal": {"AWS": [PROVIDER_ROLE, kms.customer_root()]},
        "Action": "kms:*", "Resource": "*",
    }
    key = kms.create_key(kms.provider_policy(fence))
    arn = key["Arn"]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"fenced", EncryptionContext=ACME)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"fenced"
    # provider_other is in the allowed account but not spared by the NotPrincipal deny.
    raises(DENIED, other.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)
    raises(DENIED, other.describe_key, KeyId=arn)
    assert kms.customer.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Arn"] == arn


def test_not_action_allow_and_deny(kms: Target) -> None:
    allow_all_but_decrypt = statement(
        kms.provider_root(), Sid="Everything but decrypt", NotAction="kms:Decrypt"
    )
    key = kms.create_key(document(kms.owner_statement(), allow_all_but_decrypt))
    arn = key["Arn"]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=ACME)
    assert kms.provider.generate_data_key(KeyId=arn, KeySpec="AES_128", EncryptionContext=ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)

    deny_all_but = statement(
        kms.provider_root(), effect="Deny", Sid="Nothing but encrypt and describe",
        NotAction=["kms:Encrypt", "kms:DescribeKey"],
    )
    key2 = kms.create_key(kms.provider_policy(deny_all_but))
    arn2 = key2["Arn"]
    sealed2 = kms.provider.encrypt(KeyId=arn2, Plaintext=b"y", EncryptionContext=ACME)
    assert kms.provider.describe_key(KeyId=arn2)["KeyMetadata"]["Arn"] == arn2
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=sealed2["CiphertextBlob"], KeyId=arn2,
           EncryptionContext=ACME)
    raises(DENIED, kms.provider.generate_data_key, KeyId=arn2, KeySpec="AES_256",
           EncryptionContext=ACME)


# --------------------------------------------------------------------------- policy changes


def test_policy_change_takes_effect_at_once(kms: Target) -> None:
    key = kms.create_key(kms.provider_policy())
    arn = key["Arn"]
    blob = customer_blob(kms, arn, ACME)
    decrypt = {"CiphertextBlob": blob, "KeyId": arn, "EncryptionContext": ACME}
    assert outcome(kms.provider.decrypt, **decrypt) == OK

    put_policy(kms, key["KeyId"], owner_only(kms))
    assert settle(kms, DENIED, kms.provider.decrypt, **decrypt) == DENIED

    put_policy(kms, key["KeyId"], kms.provider_policy())
    assert settle(kms, OK, kms.provider.decrypt, **decrypt) == OK


# --------------------------------------------------------------------------- PutKeyPolicy refusals


def _not_json(kms: Target) -> str:
    return kms.provider_policy()[:-7] + " oops"


def _no_statement(kms: Target) -> str:
    return json.dumps({"Version": "2012-10-17", "Id": "no-statements"})


def _invalid_principal(kms: Target) -> str:
    return document(kms.owner_statement(), statement("not-a-principal"))


def _unknown_operator(kms: Target) -> str:
    return document(
        kms.owner_statement(),
        statement(kms.provider_root(),
                  Condition={"StringEqualz": {"kms:CallerAccount": kms.provider_account}}),
    )


@pytest.mark.parametrize(
    "bad", [_not_json, _no_statement, _invalid_principal, _unknown_operator],
    ids=["not-json", "no-statement", "invalid-principal", "unknown-operator"],
)
def test_put_key_policy_rejects_malformed_documents(
    kms: Target, bad: Callable[[Target], str]
) -> None:
    key = kms.create_key(kms.provider_policy())
    before = policy_text(kms, key["KeyId"])
    raises(MALFORMED, kms.customer.put_key_policy, KeyId=key["KeyId"], PolicyName="default",
           Policy=bad(kms))
    assert policy_text(kms, key["KeyId"]) == before
    raises(MALFORMED, kms.customer.create_key, Policy=bad(kms))


def lockout_policy(kms: Target) -> str:
    """The provider policy plus an owner statement that can read and delete, not re-policy."""
    keeper = statement(
        kms.customer_root(), ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:ScheduleKeyDeletion"],
        Sid="Owner may look and delete only",
    )
    return kms.provider_policy(keeper, owner=False)


def test_lockout_policy_refused_unless_bypassed(kms: Target) -> None:
    key = kms.create_key(kms.provider_policy())
    key_id = key["KeyId"]
    before = policy_text(kms, key_id)
    locked = lockout_policy(kms)

    raises(MALFORMED, kms.customer.put_key_policy, KeyId=key_id, PolicyName="default",
           Policy=locked)
    assert policy_text(kms, key_id) == before
    raises(MALFORMED, kms.customer.put_key_policy, KeyId=key_id, PolicyName="default",
           Policy=locked, BypassPolicyLockoutSafetyCheck=False)

    put_policy(kms, key_id, locked, BypassPolicyLockoutSafetyCheck=True)
    assert policy_text(kms, key_id) == locked
    # The safety check was right: the owner can no longer change the policy.
    assert settle(kms, DENIED, kms.customer.put_key_policy, KeyId=key_id, PolicyName="default",
                  Policy=kms.provider_policy()) == DENIED
    assert policy_text(kms, key_id) == locked
    # The provider's use is untouched.
    assert kms.provider.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == key_id


def test_create_key_with_lockout_policy_refused_unless_bypassed(kms: Target) -> None:
    locked = lockout_policy(kms)
    raises(MALFORMED, kms.customer.create_key, Policy=locked)
    raises(MALFORMED, kms.customer.create_key, Policy=kms.provider_policy(owner=False))
    key = kms.create_key(locked, BypassPolicyLockoutSafetyCheck=True)
    assert policy_text(kms, key["KeyId"]) == locked
    raises(DENIED, kms.customer.put_key_policy, KeyId=key["KeyId"], PolicyName="default",
           Policy=kms.provider_policy())


def test_get_key_policy_returns_exactly_the_text_put(kms: Target) -> None:
    created_text = "{\n  \"Statement\" :[ " + json.dumps(kms.owner_statement()) + " ] }"
    key = kms.create_key(created_text)
    assert policy_text(kms, key["KeyId"]) == created_text

    text = json.dumps(json.loads(kms.provider_policy()), indent=3, sort_keys=True)
    put_policy(kms, key["KeyId"], text)
    got = kms.customer.get_key_policy(KeyId=key["KeyId"], PolicyName="default")
    assert got["Policy"] == text
    assert got["PolicyName"] == "default"


# --------------------------------------------------------------------------- grants


def test_grant_allows_listed_operations_only(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    token = grant(kms, arn, ["Decrypt", "Encrypt", "GenerateDataKey"])["GrantToken"]
    tokens = [token]

    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"granted", EncryptionContext=ACME,
                                  GrantTokens=tokens)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME,
        GrantTokens=tokens,
    )["Plaintext"] == b"granted"
    data_key = kms.provider.generate_data_key(KeyId=arn, KeySpec="AES_256", GrantTokens=tokens)
    assert len(data_key["Plaintext"]) == 32
    assert kms.provider.decrypt(
        CiphertextBlob=data_key["CiphertextBlob"], KeyId=arn, GrantTokens=tokens
    )["Plaintext"] == data_key["Plaintext"]
    owner_blob = customer_blob(kms, arn)
    assert kms.provider.decrypt(
        CiphertextBlob=owner_blob, KeyId=arn, GrantTokens=tokens
    )["Plaintext"] == b"tenant secret"

    # Not in the grant's operations:
    raises(DENIED, kms.provider.generate_data_key_without_plaintext, KeyId=arn,
           KeySpec="AES_256", GrantTokens=tokens)
    raises(DENIED, kms.provider.describe_key, KeyId=arn, GrantTokens=tokens)
    raises(DENIED, kms.provider.re_encrypt, CiphertextBlob=sealed["CiphertextBlob"],
           SourceKeyId=arn, SourceEncryptionContext=ACME, DestinationKeyId=arn,
           GrantTokens=tokens)


def test_grant_encryption_context_subset(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    tokens = [grant(kms, arn, ["Encrypt", "Decrypt"],
                    Constraints={"EncryptionContextSubset": {"cmek:tenant": "acme"}})
              ["GrantToken"]]

    exact = {"cmek:tenant": "acme"}
    for context in (exact, ACME):
        sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"s", EncryptionContext=context,
                                      GrantTokens=tokens)
        assert kms.provider.decrypt(
            CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=context,
            GrantTokens=tokens,
        )["Plaintext"] == b"s"

    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"s", EncryptionContext=OTHER,
           GrantTokens=tokens)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"s", GrantTokens=tokens)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"s",
           EncryptionContext={"cmek:dataset": "orders"}, GrantTokens=tokens)
    other_blob = customer_blob(kms, arn, OTHER)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=other_blob, KeyId=arn,
           EncryptionContext=OTHER, GrantTokens=tokens)


def test_grant_encryption_context_equals(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    exact = {"cmek:tenant": "acme"}
    tokens = [grant(kms, arn, ["Encrypt", "Decrypt"],
                    Constraints={"EncryptionContextEquals": exact})["GrantToken"]]

    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"e", EncryptionContext=exact,
                                  GrantTokens=tokens)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=exact,
        GrantTokens=tokens,
    )["Plaintext"] == b"e"

    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"e", EncryptionContext=ACME,
           GrantTokens=tokens)  # a superset is not equal
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"e",
           EncryptionContext={"cmek:tenant": "other"}, GrantTokens=tokens)
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"e", GrantTokens=tokens)
    superset_blob = customer_blob(kms, arn, ACME)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=superset_blob, KeyId=arn,
           EncryptionContext=ACME, GrantTokens=tokens)


def test_grant_constraint_keys_ignore_case_values_do_not(kms: Target) -> None:
    """AWS: in a grant constraint the context key is not case sensitive, the value is."""
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    tokens = [grant(kms, arn, ["Encrypt"],
                    Constraints={"EncryptionContextSubset": {"cmek:tenant": "acme"}})
              ["GrantToken"]]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"c",
                                  EncryptionContext={"CMEK:Tenant": "acme"}, GrantTokens=tokens)
    assert sealed["KeyId"] == arn
    raises(DENIED, kms.provider.encrypt, KeyId=arn, Plaintext=b"c",
           EncryptionContext={"cmek:tenant": "ACME"}, GrantTokens=tokens)


def test_list_grants_shows_the_grant(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    grantee = provider_grantee(kms)
    created = grant(kms, key["Arn"], ["Decrypt", "GenerateDataKey"], Name="cmek-acme",
                    Constraints={"EncryptionContextSubset": {"cmek:tenant": "acme"}})
    grants = kms.customer.list_grants(KeyId=key["KeyId"])["Grants"]
    assert [g["GrantId"] for g in grants] == [created["GrantId"]]
    listed = grants[0]
    assert listed["KeyId"] == key["Arn"]
    assert listed["GranteePrincipal"] == grantee
    assert sorted(listed["Operations"]) == ["Decrypt", "GenerateDataKey"]
    assert listed["Constraints"] == {"EncryptionContextSubset": {"cmek:tenant": "acme"}}
    assert listed["IssuingAccount"] == kms.customer_root()
    assert listed["Name"] == "cmek-acme"
    assert "RetiringPrincipal" not in listed
    assert "CreationDate" in listed

    by_id = kms.customer.list_grants(KeyId=key["KeyId"], GrantId=created["GrantId"])["Grants"]
    assert [g["GrantId"] for g in by_id] == [created["GrantId"]]


def test_revoked_grant_no_longer_authorizes(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    created = grant(kms, arn, ["Decrypt"])
    blob = customer_blob(kms, arn, ACME)
    decrypt = {"CiphertextBlob": blob, "KeyId": arn, "EncryptionContext": ACME}
    assert outcome(kms.provider.decrypt, GrantTokens=[created["GrantToken"]], **decrypt) == OK

    kms.customer.revoke_grant(KeyId=key["KeyId"], GrantId=created["GrantId"])
    assert kms.customer.list_grants(KeyId=key["KeyId"])["Grants"] == []
    assert settle(kms, DENIED, kms.provider.decrypt, **decrypt) == DENIED


def test_revoke_unknown_grant_id(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    raises(("InvalidGrantIdException", "NotFoundException"), kms.customer.revoke_grant,
           KeyId=key["KeyId"], GrantId="0" * 64)


def test_retire_grant_by_retiring_principal(kms: Target) -> None:
    analyst_arn = kms.extra["customer_other"][0]
    analyst = kms.client_for(kms.extra["customer_other"])
    other_role = kms.client_for(kms.extra["provider_other"])
    assert analyst_arn == CUSTOMER_OTHER[0]
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    created = grant(kms, arn, ["Decrypt"], RetiringPrincipal=analyst_arn)
    blob = customer_blob(kms, arn, ACME)
    assert outcome(kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn, EncryptionContext=ACME,
                   GrantTokens=[created["GrantToken"]]) == OK

    retirable = analyst.list_retirable_grants(RetiringPrincipal=analyst_arn)["Grants"]
    mine = [g for g in retirable if g["GrantId"] == created["GrantId"]]
    assert len(mine) == 1
    assert mine[0]["RetiringPrincipal"] == analyst_arn
    assert mine[0]["KeyId"] == arn

    # Neither the grantee's colleague (not named in the grant) nor anyone else may retire it.
    raises(DENIED, other_role.retire_grant, KeyId=arn, GrantId=created["GrantId"])
    assert len(kms.customer.list_grants(KeyId=key["KeyId"])["Grants"]) == 1

    analyst.retire_grant(KeyId=arn, GrantId=created["GrantId"])
    assert kms.customer.list_grants(KeyId=key["KeyId"])["Grants"] == []
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn, EncryptionContext=ACME)


def test_retire_grant_by_grant_token(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    created = grant(kms, arn, ["Decrypt", "RetireGrant"])
    blob = customer_blob(kms, arn)
    assert outcome(kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn,
                   GrantTokens=[created["GrantToken"]]) == OK

    kms.provider.retire_grant(GrantToken=created["GrantToken"])
    assert kms.customer.list_grants(KeyId=key["KeyId"])["Grants"] == []
    assert settle(kms, DENIED, kms.provider.decrypt, CiphertextBlob=blob, KeyId=arn) == DENIED


def test_grant_constraints_may_include_describe_key_and_retire_grant(kms: Target) -> None:
    """AWS (CreateGrant, Constraints): grants with encryption context constraints can include
    DescribeKey and RetireGrant, but the constraint doesn't apply to those operations."""
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    created = grant(kms, arn, ["Decrypt", "DescribeKey", "RetireGrant"],
                    Constraints={"EncryptionContextSubset": {"cmek:tenant": "acme"}})
    tokens = [created["GrantToken"]]
    assert kms.provider.describe_key(KeyId=arn, GrantTokens=tokens)["KeyMetadata"]["Arn"] == arn
    acme_blob = customer_blob(kms, arn, ACME)
    assert outcome(kms.provider.decrypt, CiphertextBlob=acme_blob, KeyId=arn,
                   EncryptionContext=ACME, GrantTokens=tokens) == OK
    other_blob = customer_blob(kms, arn, OTHER)
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=other_blob, KeyId=arn,
           EncryptionContext=OTHER, GrantTokens=tokens)
    kms.provider.retire_grant(GrantToken=created["GrantToken"])
    assert kms.customer.list_grants(KeyId=key["KeyId"])["Grants"] == []


@pytest.mark.parametrize(
    "constraints", [None, {"EncryptionContextSubset": {"cmek:tenant": "acme"}}],
    ids=["unconstrained", "constrained"],
)
def test_grant_for_operation_the_key_cannot_do_is_refused(
    kms: Target, constraints: dict[str, Any] | None
) -> None:
    """A symmetric encryption key cannot Sign or GenerateMac, so such a grant is invalid."""
    key = kms.create_key(owner_only(kms))
    extra = {} if constraints is None else {"Constraints": constraints}
    for operations in (["Sign"], ["GenerateMac"], ["Decrypt", "Sign"]):
        raises("ValidationException", kms.customer.create_grant, KeyId=key["Arn"],
               GranteePrincipal=provider_grantee(kms), Operations=operations, **extra)
    assert kms.customer.list_grants(KeyId=key["KeyId"])["Grants"] == []


def test_explicit_deny_in_key_policy_overrides_a_grant(kms: Target) -> None:
    deny = statement(kms.provider_root(), "kms:Decrypt", "Deny", Sid="No decrypt at all")
    key = kms.create_key(document(kms.owner_statement(), deny))
    arn = key["Arn"]
    tokens = [grant(kms, arn, ["Encrypt", "Decrypt"])["GrantToken"]]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"d", EncryptionContext=ACME,
                                  GrantTokens=tokens)
    assert sealed["KeyId"] == arn  # the grant works where the policy does not deny
    raises(DENIED, kms.provider.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME, GrantTokens=tokens)


def test_grant_to_provider_account_root(kms: Target) -> None:
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    created = grant(kms, arn, ["Encrypt", "Decrypt"], GranteePrincipal=kms.provider_root())
    tokens = [created["GrantToken"]]
    sealed = kms.provider.encrypt(KeyId=arn, Plaintext=b"r", GrantTokens=tokens)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, GrantTokens=tokens
    )["Plaintext"] == b"r"
    listed = kms.customer.list_grants(KeyId=key["KeyId"])["Grants"]
    assert [g["GranteePrincipal"] for g in listed] == [kms.provider_root()]


def test_grant_to_account_root_covers_every_principal_of_that_account(kms: Target) -> None:
    other_role = kms.client_for(kms.extra["provider_other"])
    third = kms.client_for(kms.extra["third"])
    assert kms.extra["provider_other"] == PROVIDER_OTHER
    assert kms.extra["third"] == THIRD
    key = kms.create_key(owner_only(kms))
    arn = key["Arn"]
    grant(kms, arn, ["Encrypt", "Decrypt"], GranteePrincipal=kms.provider_root())
    sealed = other_role.encrypt(KeyId=arn, Plaintext=b"o", EncryptionContext=ACME)
    assert kms.provider.decrypt(
        CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn, EncryptionContext=ACME
    )["Plaintext"] == b"o"
    raises(DENIED, third.encrypt, KeyId=arn, Plaintext=b"t")
    raises(DENIED, third.decrypt, CiphertextBlob=sealed["CiphertextBlob"], KeyId=arn,
           EncryptionContext=ACME)
