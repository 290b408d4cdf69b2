"""Unit tests for kmslocal.policy: parsing, validation and IAM evaluation semantics."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kmslocal.exceptions import KMSError
from kmslocal.policy import Decision, Policy, Request, default_key_policy, parse_policy
from tests.conftest import REFERENCE_POLICY

ACCOUNT = "111111111111"
OTHER = "222222222222"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/cmek-platform"
OTHER_ROLE = f"arn:aws:iam::{OTHER}:role/intruder"
REFERENCE_TEXT = REFERENCE_POLICY.read_text()


def req(
    action: str,
    principal: str = ROLE,
    account: str | None = None,
    context: Mapping[str, Sequence[str]] | None = None,
) -> Request:
    if account is None:
        account = principal.split(":")[4]
    return Request(
        principal_arn=principal,
        principal_account=account,
        action=action,
        context=context or {},
    )


def policy_of(*statements: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))


def allow(**extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }
    statement.update(extra)
    return statement


@pytest.fixture
def provider() -> Policy:
    return parse_policy(REFERENCE_TEXT.replace("<ACCOUNT_ID>", ACCOUNT))


# --------------------------------------------------------------------------- reference policy


def test_provider_policy_allows_decrypt_for_account_principals(provider: Policy) -> None:
    assert provider.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    assert provider.evaluate(req("kms:GenerateDataKeyWithoutPlaintext")) is Decision.ALLOW
    assert provider.evaluate(req("kms:decrypt")) is Decision.ALLOW  # actions are case-insensitive


def test_provider_policy_does_not_cover_unlisted_actions(provider: Policy) -> None:
    assert provider.evaluate(req("kms:PutKeyPolicy")) is Decision.NONE
    assert provider.evaluate(req("kms:ScheduleKeyDeletion")) is Decision.NONE


def test_provider_policy_create_grant_requires_aws_resource(provider: Policy) -> None:
    no = {"kms:GrantIsForAWSResource": ["false"]}
    yes = {"kms:GrantIsForAWSResource": ["true"]}
    assert provider.evaluate(req("kms:CreateGrant", context=no)) is Decision.NONE
    assert provider.evaluate(req("kms:CreateGrant", context={})) is Decision.NONE
    assert provider.evaluate(req("kms:CreateGrant", context=yes)) is Decision.ALLOW
    # Bool compares case-insensitively, and context keys match in any case.
    upper = {"KMS:GRANTISFORAWSRESOURCE": ["TRUE"]}
    assert provider.evaluate(req("kms:CreateGrant", context=upper)) is Decision.ALLOW


def test_provider_policy_refuses_other_account(provider: Policy) -> None:
    assert provider.evaluate(req("kms:Decrypt", principal=OTHER_ROLE)) is Decision.NONE


# --------------------------------------------------------------------------- principals


def test_role_arn_principal_matches_only_that_role() -> None:
    policy = policy_of(allow(Principal={"AWS": [ROLE]}, Action="kms:Decrypt"))
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    other_role_same_account = f"arn:aws:iam::{ACCOUNT}:role/someone-else"
    assert policy.evaluate(req("kms:Decrypt", principal=other_role_same_account)) is Decision.NONE
    assert policy.evaluate(req("kms:Decrypt", principal=ROOT)) is Decision.NONE


def test_role_arn_principal_matches_its_sessions() -> None:
    policy = policy_of(
        allow(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/path/cmek-app"}, Action="kms:*")
    )
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/cmek-app/session-1"
    other = f"arn:aws:sts::{ACCOUNT}:assumed-role/cmek-app-2/session-1"
    assert policy.evaluate(req("kms:Decrypt", principal=session)) is Decision.ALLOW
    assert policy.evaluate(req("kms:Decrypt", principal=other)) is Decision.NONE


def test_bare_account_id_means_account_root() -> None:
    policy = policy_of(allow(Principal={"AWS": ACCOUNT}))
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    assert policy.evaluate(req("kms:Decrypt", principal=OTHER_ROLE)) is Decision.NONE


def test_star_principal_with_caller_account_condition() -> None:
    policy = policy_of(
        allow(
            Principal="*",
            Action=["kms:Decrypt"],
            Condition={"StringEquals": {"kms:CallerAccount": ACCOUNT}},
        )
    )
    mine = req("kms:Decrypt", context={"kms:CallerAccount": [ACCOUNT]})
    theirs = req("kms:Decrypt", principal=OTHER_ROLE, context={"kms:CallerAccount": [OTHER]})
    assert policy.evaluate(mine) is Decision.ALLOW
    assert policy.evaluate(theirs) is Decision.NONE
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE  # key absent: positive op fails


def test_aws_star_principal_matches_everyone() -> None:
    policy = policy_of(allow(Principal={"AWS": "*"}))
    assert policy.evaluate(req("kms:Decrypt", principal=OTHER_ROLE)) is Decision.ALLOW


def test_service_principal_never_matches_a_caller() -> None:
    policy = policy_of(allow(Principal={"Service": "logs.amazonaws.com"}))
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE


# --------------------------------------------------------------------------- effects


def test_explicit_deny_wins_over_allow() -> None:
    policy = policy_of(
        allow(),
        {"Effect": "Deny", "Principal": {"AWS": ROLE}, "Action": "kms:Decrypt", "Resource": "*"},
    )
    assert policy.evaluate(req("kms:Decrypt")) is Decision.DENY
    assert policy.evaluate(req("kms:Encrypt")) is Decision.ALLOW
    other = f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert policy.evaluate(req("kms:Decrypt", principal=other)) is Decision.ALLOW


def test_not_action_in_allow() -> None:
    statement = allow(NotAction=["kms:ScheduleKeyDeletion", "kms:Disable*"])
    del statement["Action"]
    policy = policy_of(statement)
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    assert policy.evaluate(req("kms:ScheduleKeyDeletion")) is Decision.NONE
    assert policy.evaluate(req("kms:disablekey")) is Decision.NONE


def test_not_principal_in_deny() -> None:
    policy = policy_of(
        allow(),
        {
            "Effect": "Deny",
            "NotPrincipal": {"AWS": [ROLE]},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    alice = f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert policy.evaluate(req("kms:Decrypt", principal=alice)) is Decision.DENY
    assert policy.evaluate(req("kms:Encrypt", principal=alice)) is Decision.ALLOW


def test_resource_other_than_star_never_matches() -> None:
    policy = policy_of(allow(Resource="arn:aws:kms:us-east-1:111111111111:key/other"))
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE
    listed = policy_of(allow(Resource=["arn:aws:kms:us-east-1:111111111111:key/x", "*"]))
    assert listed.evaluate(req("kms:Decrypt")) is Decision.ALLOW


def test_non_kms_action_prefix_never_matches() -> None:
    policy = policy_of(allow(Action=["s3:*", "iam:PassRole"]))
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE
    assert policy_of(allow(Action="*")).evaluate(req("kms:Decrypt")) is Decision.ALLOW


# --------------------------------------------------------------------------- conditions


def test_string_like_wildcards_and_literal_brackets() -> None:
    policy = policy_of(
        allow(
            Condition={
                "StringLike": {"kms:EncryptionContext:path": ["tenants/[a]/*", "db-??"]},
            }
        )
    )

    def ctx(value: str) -> Request:
        return req("kms:Decrypt", context={"kms:EncryptionContext:path": [value]})

    assert policy.evaluate(ctx("tenants/[a]/x/y")) is Decision.ALLOW
    assert policy.evaluate(ctx("tenants/a/x")) is Decision.NONE  # "[" is literal, not a class
    assert policy.evaluate(ctx("db-01")) is Decision.ALLOW
    assert policy.evaluate(ctx("db-1")) is Decision.NONE
    assert policy.evaluate(ctx("DB-01")) is Decision.NONE  # StringLike is case-sensitive


def test_encryption_context_key_matched_case_insensitively() -> None:
    policy = policy_of(
        allow(Condition={"StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}})
    )
    upper = {"KMS:EncryptionContext:CMEK:Tenant": ["acme"]}
    assert policy.evaluate(req("kms:Decrypt", context=upper)) is Decision.ALLOW
    wrong_value = {"kms:encryptioncontext:cmek:tenant": ["ACME"]}
    assert policy.evaluate(req("kms:Decrypt", context=wrong_value)) is Decision.NONE


def test_for_all_values_over_encryption_context_keys() -> None:
    policy = policy_of(
        allow(
            Condition={
                "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["tenant", "purpose"]}
            }
        )
    )

    def keys(*values: str) -> Request:
        return req("kms:Decrypt", context={"kms:EncryptionContextKeys": list(values)})

    assert policy.evaluate(keys("tenant")) is Decision.ALLOW
    assert policy.evaluate(keys("tenant", "purpose")) is Decision.ALLOW
    assert policy.evaluate(keys("tenant", "other")) is Decision.NONE
    assert policy.evaluate(keys()) is Decision.ALLOW  # empty set: vacuously true
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW  # absent key: true


def test_for_any_value_over_encryption_context_keys() -> None:
    policy = policy_of(
        allow(Condition={"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "tenant"}})
    )

    def keys(*values: str) -> Request:
        return req("kms:Decrypt", context={"kms:EncryptionContextKeys": list(values)})

    assert policy.evaluate(keys("purpose", "tenant")) is Decision.ALLOW
    assert policy.evaluate(keys("purpose")) is Decision.NONE
    assert policy.evaluate(keys()) is Decision.NONE
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE  # absent key: false


def test_for_any_value_negated() -> None:
    policy = policy_of(
        allow(Condition={"ForAnyValue:StringNotLike": {"kms:EncryptionContextKeys": "aws:*"}})
    )
    ctx = {"kms:EncryptionContextKeys": ["aws:x", "tenant"]}
    assert policy.evaluate(req("kms:Decrypt", context=ctx)) is Decision.ALLOW
    only_aws = {"kms:EncryptionContextKeys": ["aws:x"]}
    assert policy.evaluate(req("kms:Decrypt", context=only_aws)) is Decision.NONE
    # ForAnyValue needs at least one value, even with a negated operator.
    assert policy.evaluate(req("kms:Decrypt")) is Decision.NONE


def test_null_condition() -> None:
    must_have = policy_of(allow(Condition={"Null": {"kms:EncryptionContext:tenant": "false"}}))
    must_lack = policy_of(allow(Condition={"Null": {"kms:EncryptionContext:tenant": True}}))
    present = req("kms:Decrypt", context={"kms:EncryptionContext:tenant": ["acme"]})
    absent = req("kms:Decrypt")
    assert must_have.evaluate(present) is Decision.ALLOW
    assert must_have.evaluate(absent) is Decision.NONE
    assert must_lack.evaluate(present) is Decision.NONE
    assert must_lack.evaluate(absent) is Decision.ALLOW


def test_if_exists() -> None:
    policy = policy_of(
        allow(Condition={"StringEqualsIfExists": {"kms:EncryptionContext:tenant": "acme"}})
    )
    assert policy.evaluate(req("kms:Decrypt")) is Decision.ALLOW
    acme = req("kms:Decrypt", context={"kms:EncryptionContext:tenant": ["acme"]})
    evil = req("kms:Decrypt", context={"kms:EncryptionContext:tenant": ["evil"]})
    assert policy.evaluate(acme) is Decision.ALLOW
    assert policy.evaluate(evil) is Decision.NONE


def test_string_not_equals_with_absent_key_is_true() -> None:
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:*",
        "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:CallerAccount": [ACCOUNT]}},
    }
    policy = policy_of(allow(Principal="*"), deny)
    assert policy.evaluate(req("kms:Decrypt")) is Decision.DENY  # absent: negated op is true
    mine = req("kms:Decrypt", context={"kms:CallerAccount": [ACCOUNT]})
    theirs = req("kms:Decrypt", context={"kms:CallerAccount": [OTHER]})
    assert policy.evaluate(mine) is Decision.ALLOW
    assert policy.evaluate(theirs) is Decision.DENY


def test_conditions_and_across_keys_or_across_values() -> None:
    policy = policy_of(
        allow(
            Condition={
                "StringEquals": {
                    "kms:CallerAccount": ACCOUNT,
                    "kms:EncryptionContext:tenant": ["a", "b"],
                },
                "Bool": {"kms:GrantIsForAWSResource": False},
            }
        )
    )
    base = {"kms:CallerAccount": [ACCOUNT], "kms:GrantIsForAWSResource": ["false"]}
    assert (
        policy.evaluate(req("kms:Decrypt", context={**base, "kms:EncryptionContext:tenant": ["b"]}))
        is Decision.ALLOW
    )
    assert (
        policy.evaluate(req("kms:Decrypt", context={**base, "kms:EncryptionContext:tenant": ["c"]}))
        is Decision.NONE
    )
    no_bool = {"kms:CallerAccount": [ACCOUNT], "kms:EncryptionContext:tenant": ["a"]}
    assert policy.evaluate(req("kms:Decrypt", context=no_bool)) is Decision.NONE


def test_arn_like_on_caller_principal() -> None:
    policy = policy_of(
        allow(
            Principal="*",
            Condition={"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/cmek-*"}},
        )
    )
    hit = req("kms:Decrypt", context={"aws:PrincipalArn": [ROLE]})
    miss = req("kms:Decrypt", context={"aws:PrincipalArn": [OTHER_ROLE]})
    assert policy.evaluate(hit) is Decision.ALLOW
    assert policy.evaluate(miss) is Decision.NONE


# --------------------------------------------------------------------------- malformed


def _good_statement() -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}


def _doc(statement: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _without(key: str) -> dict[str, Any]:
    statement = _good_statement()
    del statement[key]
    return statement


MALFORMED: dict[str, str] = {
    "not-json": "{not json",
    "empty": "",
    "list-at-top": json.dumps([_good_statement()]),
    "string-at-top": json.dumps("policy"),
    "missing-statement": json.dumps({"Version": "2012-10-17"}),
    "empty-statement-list": json.dumps({"Statement": []}),
    "statement-not-object": json.dumps({"Statement": ["x"]}),
    "bad-version": json.dumps({"Version": "2020-01-01", "Statement": [_good_statement()]}),
    "version-not-string": json.dumps({"Version": [1], "Statement": [_good_statement()]}),
    "id-not-string": json.dumps({"Id": 5, "Statement": [_good_statement()]}),
    "missing-effect": _doc(_without("Effect")),
    "bad-effect": _doc({**_good_statement(), "Effect": "allow"}),
    "missing-principal": _doc(_without("Principal")),
    "both-principals": _doc({**_good_statement(), "NotPrincipal": {"AWS": ROOT}}),
    "bad-principal-arn": _doc({**_good_statement(), "Principal": {"AWS": "arn:aws:s3:::bucket"}}),
    "bad-principal-account": _doc({**_good_statement(), "Principal": {"AWS": "12345"}}),
    "bad-principal-type": _doc({**_good_statement(), "Principal": {"Users": ROOT}}),
    "bad-principal-string": _doc({**_good_statement(), "Principal": "everyone"}),
    "principal-list-of-numbers": _doc({**_good_statement(), "Principal": {"AWS": [1]}}),
    "missing-action": _doc(_without("Action")),
    "action-not-string": _doc({**_good_statement(), "Action": 7}),
    "action-empty-list": _doc({**_good_statement(), "Action": []}),
    "action-no-prefix": _doc({**_good_statement(), "Action": "Decrypt"}),
    "missing-resource": _doc(_without("Resource")),
    "unknown-operator": _doc({**_good_statement(), "Condition": {"StringSorta": {"k": "v"}}}),
    "null-if-exists": _doc({**_good_statement(), "Condition": {"NullIfExists": {"k": "true"}}}),
    "condition-not-object": _doc({**_good_statement(), "Condition": ["x"]}),
    "condition-value-object": _doc(
        {**_good_statement(), "Condition": {"StringEquals": {"k": {"nested": 1}}}}
    ),
    "condition-value-null": _doc({**_good_statement(), "Condition": {"StringEquals": {"k": None}}}),
    "unknown-element": _doc({**_good_statement(), "Effects": "Allow"}),
    "sid-not-string": _doc({**_good_statement(), "Sid": 3}),
    "nan-constant": '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", '
    '"Resource": "*", "Condition": {"StringEquals": {"k": NaN}}}]}',
    "deeply-nested": "[" * 20000 + "]" * 20000,
    "oversize": json.dumps(
        {"Id": "x" * 33000, "Version": "2012-10-17", "Statement": [_good_statement()]}
    ),
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_documents_raise_malformed_policy(text: str) -> None:
    with pytest.raises(KMSError) as caught:
        parse_policy(text)
    assert caught.value.code == "MalformedPolicyDocumentException"
    assert caught.value.message
    assert "\n" not in caught.value.message


def test_unknown_operator_message_names_the_operator() -> None:
    with pytest.raises(KMSError, match="StringSorta"):
        parse_policy(MALFORMED["unknown-operator"])


def test_bad_principal_message() -> None:
    with pytest.raises(KMSError, match="invalid principals"):
        parse_policy(MALFORMED["bad-principal-arn"])


def test_document_just_under_size_limit_is_accepted() -> None:
    base = json.dumps({"Id": "", "Statement": [_good_statement()]})
    padding = 32768 - len(base.encode())
    text = json.dumps({"Id": "x" * padding, "Statement": [_good_statement()]})
    assert len(text.encode()) == 32768
    assert parse_policy(text).evaluate(req("kms:Decrypt")) is Decision.ALLOW


def test_single_statement_object_and_operator_variants_accepted() -> None:
    text = json.dumps(
        {
            "Statement": {
                "Effect": "Allow",
                "Principal": {"AWS": [ROOT, ROLE], "Service": "logs.amazonaws.com"},
                "Action": "kms:Decrypt",
                "NotResource": "arn:aws:kms:us-east-1:111111111111:key/other",
                "Condition": {
                    "ForAllValues:StringLikeIfExists": {"kms:EncryptionContextKeys": "*"},
                    "StringNotEqualsIgnoreCase": {"kms:EncryptionContext:env": "PROD"},
                    "ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/blocked"},
                },
            }
        }
    )
    policy = parse_policy(text)
    assert len(policy.statements) == 1
    assert policy.document["Statement"]["Action"] == "kms:Decrypt"
    prod = req("kms:Decrypt", context={"kms:EncryptionContext:env": ["prod"]})
    dev = req("kms:Decrypt", context={"kms:EncryptionContext:env": ["dev"]})
    assert policy.evaluate(prod) is Decision.NONE
    assert policy.evaluate(dev) is Decision.ALLOW


# --------------------------------------------------------------------------- default policy


def test_default_key_policy_round_trips_and_delegates_to_account() -> None:
    text = default_key_policy(ACCOUNT)
    document = json.loads(text)
    assert document["Version"] == "2012-10-17"
    assert document["Id"] == "key-default-1"
    assert text == json.dumps(document, indent=2)
    (statement,) = document["Statement"]
    assert statement == {
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }
    policy = parse_policy(text)
    assert policy.document == document
    assert policy.evaluate(req("kms:PutKeyPolicy")) is Decision.ALLOW
    assert policy.evaluate(req("kms:PutKeyPolicy", principal=ROOT)) is Decision.ALLOW
    alice = f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert policy.evaluate(req("kms:PutKeyPolicy", principal=alice)) is Decision.ALLOW
    assert policy.evaluate(req("kms:PutKeyPolicy", principal=OTHER_ROLE)) is Decision.NONE
