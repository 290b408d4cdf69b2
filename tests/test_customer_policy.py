"""cmek.customer.policy and cmek.customer.lint: the provider statements, merging them, and
linting key policies."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmek.customer import policy as policy_module
from cmek.customer.lint import Finding, LintResult, lint
from cmek.customer.policy import (
    GRANT_SID,
    OWNER_SID,
    REFERENCE_STATEMENTS,
    InvalidAccount,
    PolicyError,
    merge,
    provider_statements,
    render,
    validate_account,
)
from cmek.customer.requirements import DESCRIBE_SID, REQUIRED_ACTIONS, USAGE_SID
from cmek.errors import CmekError, InvalidInput
from tests.conftest import REFERENCE_POLICY

PROVIDER = "111122223333"
OWNER = "444455556666"
STRANGER = "999988887777"
PROVIDER_ROOT = f"arn:aws:iam::{PROVIDER}:root"
OWNER_ROOT = f"arn:aws:iam::{OWNER}:root"

Doc = dict[str, Any]


def reference(account: str = PROVIDER) -> Doc:
    loaded: Doc = json.loads(REFERENCE_POLICY.read_text().replace("<ACCOUNT_ID>", account))
    return loaded


def aws_default(account: str = OWNER) -> Doc:
    """The policy AWS attaches to a key created without one."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": "kms:*", "Resource": "*",
        }],
    }


def complete() -> Doc:
    return render(PROVIDER, OWNER)


def stmt(doc: Doc, sid: str) -> Doc:
    found: Doc = next(s for s in doc["Statement"] if s.get("Sid") == sid)
    return found


def run(doc: Doc | str, owner: str | None = OWNER) -> LintResult:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return lint(text, PROVIDER, owner)


def codes(result: LintResult) -> list[str]:
    return [f.code for f in result.findings]


def only(result: LintResult, code: str) -> Finding:
    matching = [f for f in result.findings if f.code == code]
    assert len(matching) == 1, result.findings
    return matching[0]


# --------------------------------------------------------------------------- render


def test_render_is_the_reference_exactly() -> None:
    assert render(provider_account=PROVIDER) == reference()
    assert render(STRANGER) == reference(STRANGER)
    # same keys in the same order, so the JSON the customer pastes reads like the docs
    assert json.dumps(render(PROVIDER)) == json.dumps(reference())


def test_embedded_statements_are_the_reference_file() -> None:
    assert [dict(s) for s in REFERENCE_STATEMENTS] == reference("<ACCOUNT_ID>")["Statement"]


def test_the_package_does_not_read_the_reference_file() -> None:
    package = Path(policy_module.__file__).parent  # every module of cmek.customer
    sources = {path.name: path.read_text() for path in package.glob("*.py")}
    assert {"policy.py", "policy_doc.py", "policy_schema.py", "lint.py"} <= set(sources)
    for source in sources.values():
        assert REFERENCE_POLICY.name not in source
        assert "shared/reference" not in source
        assert "kmslocal" not in source


def test_provider_statements_with_tenant_restrict_only_the_usage_statement() -> None:
    plain = provider_statements(PROVIDER)
    scoped = provider_statements(PROVIDER, tenant="acme")
    assert [s["Sid"] for s in scoped] == [USAGE_SID, DESCRIBE_SID, GRANT_SID]
    # DescribeKey carries no encryption context, so it cannot sit under the condition.
    assert scoped[0] == {
        **plain[0],
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"],
        "Condition": {"StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}},
    }
    assert scoped[1] == {"Sid": DESCRIBE_SID, "Effect": "Allow",
                         "Principal": {"AWS": f"arn:aws:iam::{PROVIDER}:root"},
                         "Action": "kms:DescribeKey", "Resource": "*"}
    assert scoped[2] == plain[1] == reference()["Statement"][1]


def test_provider_statements_are_fresh_copies() -> None:
    first = provider_statements(PROVIDER)
    first[0]["Action"].append("kms:*")
    first[1]["Condition"]["Bool"]["kms:GrantIsForAWSResource"] = "false"
    assert provider_statements(PROVIDER) == reference()["Statement"]
    assert REFERENCE_STATEMENTS[0]["Principal"] == {"AWS": "arn:aws:iam::<ACCOUNT_ID>:root"}


def test_render_with_owner_is_a_complete_policy() -> None:
    doc = render(PROVIDER, owner_account=OWNER)
    assert doc["Version"] == "2012-10-17"
    assert doc["Id"] == "cmek-policy"
    assert doc["Statement"] == [
        {"Sid": OWNER_SID, "Effect": "Allow", "Principal": {"AWS": OWNER_ROOT},
         "Action": "kms:*", "Resource": "*"},
        *reference()["Statement"],
    ]


def test_render_with_owner_and_tenant() -> None:
    doc = render(PROVIDER, OWNER, tenant="acme")
    assert [s["Sid"] for s in doc["Statement"]] == [OWNER_SID, USAGE_SID, DESCRIBE_SID,
                                                    GRANT_SID]
    assert doc["Statement"][1]["Condition"] == {
        "StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}
    }
    assert doc["Statement"][3] == reference()["Statement"][1]
    assert "Condition" not in doc["Statement"][0]


@pytest.mark.parametrize(
    "bad", ["", "11112222333", "1111222233334", "11112222333a", " 111122223333",
            "111122223333\n", "١١١١٢٢٢٢٣٣٣٣", "arn:aws:iam::111122223333:root"],
)
def test_validate_account_refuses_anything_but_12_digits(bad: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_account(bad)
    assert caught.value.code == "invalid_account"
    assert isinstance(caught.value, CmekError)
    with pytest.raises(PolicyError, match="12 digits"):
        render(bad)


def test_validate_account_returns_a_good_one() -> None:
    assert validate_account("012345678901") == "012345678901"


def test_owner_must_not_be_the_provider() -> None:
    with pytest.raises(InvalidAccount):
        render(PROVIDER, owner_account=PROVIDER)
    with pytest.raises(InvalidAccount):
        lint(json.dumps(complete()), PROVIDER, PROVIDER)


@pytest.mark.parametrize("tenant", ["", "line\nbreak"])
def test_bad_tenant_is_refused(tenant: str) -> None:
    with pytest.raises(InvalidInput):
        provider_statements(PROVIDER, tenant=tenant)


# --------------------------------------------------------------------------- merge


def test_merge_keeps_other_statements_and_their_order() -> None:
    others = [
        {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": OWNER_ROOT},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Auditors", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{OWNER}:role/audit"},
         "Action": ["kms:DescribeKey", "kms:GetKeyPolicy"], "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:ScheduleKeyDeletion",
         "Resource": "*", "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}}},
    ]
    existing = {"Version": "2012-10-17", "Id": "mine", "Statement": copy.deepcopy(others)}
    before = copy.deepcopy(existing)
    merged = merge(existing, PROVIDER)
    assert merged["Statement"] == [*others, *reference()["Statement"]]
    assert merged["Id"] == "mine"
    assert list(merged) == ["Version", "Id", "Statement"]
    assert existing == before  # the input is not modified


def test_merge_is_idempotent() -> None:
    once = merge(aws_default(), PROVIDER, tenant="acme")
    assert merge(once, PROVIDER, tenant="acme") == once
    assert merge(merge(once, PROVIDER), PROVIDER) == merge(once, PROVIDER)


def test_merge_replaces_a_stale_provider_statement_in_place() -> None:
    stale = {"Sid": USAGE_SID, "Effect": "Allow", "Principal": {"AWS": f"{STRANGER}"},
             "Action": ["kms:Encrypt", "kms:ReEncrypt*"], "Resource": "*"}
    tail = {"Sid": "Tail", "Effect": "Allow", "Principal": {"AWS": OWNER_ROOT},
            "Action": "kms:DescribeKey", "Resource": "*"}
    existing = aws_default()
    existing["Statement"] += [stale, tail, copy.deepcopy(stale)]
    merged = merge(existing, PROVIDER)
    usage, grant = reference()["Statement"]
    assert merged["Statement"] == [aws_default()["Statement"][0], usage, tail, grant]


def test_merge_switches_tenant_restriction() -> None:
    scoped = merge(aws_default(), PROVIDER, tenant="acme")
    assert "Condition" in stmt(scoped, USAGE_SID)
    unscoped = merge(scoped, PROVIDER)
    assert unscoped == render(PROVIDER, OWNER) | {"Id": "key-default-1"}


def test_merge_normalizes_a_single_statement_object() -> None:
    existing = {"Version": "2012-10-17", "Statement": aws_default()["Statement"][0]}
    merged = merge(existing, PROVIDER)
    assert isinstance(merged["Statement"], list)
    assert merged["Statement"] == render(PROVIDER, OWNER)["Statement"]


def test_merging_into_aws_default_gives_the_complete_policy() -> None:
    merged = merge(aws_default(), PROVIDER)
    expected = render(PROVIDER, owner_account=OWNER)
    assert merged["Statement"] == expected["Statement"]
    assert merged["Version"] == expected["Version"]
    assert merged["Id"] == "key-default-1"  # the customer's document keeps its own Id
    assert merge(aws_default(), PROVIDER, "acme")["Statement"] == render(
        PROVIDER, OWNER, "acme")["Statement"]


@pytest.mark.parametrize(
    "existing",
    [[], "policy", None, {"Version": "2012-10-17"}, {"Statement": "x"},
     {"Statement": [{"Sid": "ok"}, "not an object"]}, {"Statement": 3}],
)
def test_merge_refuses_what_is_not_a_policy(existing: Any) -> None:
    with pytest.raises(PolicyError) as caught:
        merge(existing, PROVIDER)
    assert caught.value.code == "policy_invalid"


_OTHER_STATEMENT = st.fixed_dictionaries({
    "Sid": st.sampled_from(["A", "B", "C", USAGE_SID, GRANT_SID]),
    "Effect": st.sampled_from(["Allow", "Deny"]),
    "Principal": st.just({"AWS": OWNER_ROOT}),
    "Action": st.sampled_from(["kms:*", "kms:Decrypt", ["kms:Encrypt"]]),
    "Resource": st.just("*"),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(_OTHER_STATEMENT, max_size=6), st.sampled_from([None, "t1", "t2"]))
def test_merge_properties(statements: list[Doc], tenant: str | None) -> None:
    existing = {"Version": "2012-10-17", "Statement": statements}
    merged = merge(existing, PROVIDER, tenant)
    assert merge(merged, PROVIDER, tenant) == merged
    provider_sids = {USAGE_SID, GRANT_SID}
    # The owner administers the key when some Allow gives it kms:*; then statements of
    # the owner's that reuse a provider Sid are the customer's and are kept.
    owner_admin = any(s["Effect"] == "Allow" and s["Action"] == "kms:*" for s in statements)

    def customers(s: Doc) -> bool:
        return s["Sid"] not in provider_sids or owner_admin

    kept = [s for s in merged["Statement"] if PROVIDER not in json.dumps(s["Principal"])]
    assert kept == [s for s in statements if customers(s)]
    for new in provider_statements(PROVIDER, tenant):
        ours = [s for s in merged["Statement"] if PROVIDER in json.dumps(s["Principal"])
                and s["Sid"].startswith(new["Sid"])]
        assert ours == [{**new, "Sid": ours[0]["Sid"]}]
        clash = owner_admin and any(s["Sid"] == new["Sid"] for s in statements)
        assert ours[0]["Sid"] == (f"{new['Sid']} (provider {PROVIDER})" if clash else new["Sid"])


def test_merge_keeps_the_owners_key_user_statement_with_a_provider_sid() -> None:
    key_users = {"Sid": USAGE_SID, "Effect": "Allow",
                 "Principal": {"AWS": f"arn:aws:iam::{OWNER}:role/app"},
                 "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}
    existing = aws_default()
    existing["Statement"].append(key_users)
    merged = merge(existing, PROVIDER)
    assert key_users in merged["Statement"]
    usage = next(s for s in merged["Statement"] if s["Sid"] == f"{USAGE_SID} (provider {PROVIDER})")
    assert usage["Principal"] == {"AWS": f"arn:aws:iam::{PROVIDER}:root"}
    assert merge(merged, PROVIDER) == merged


# --------------------------------------------------------------------------- lint: passing


def test_complete_policy_lints_clean() -> None:
    result = run(complete())
    assert result.findings == []
    assert result.is_policy
    assert result.exit_code == 0
    assert run(complete(), owner=None).findings == []


def test_merged_default_policy_lints_clean() -> None:
    assert run(merge(aws_default(), PROVIDER)).findings == []


def test_tenant_scoped_policy_passes_with_an_informational_warning() -> None:
    result = run(render(PROVIDER, OWNER, tenant="acme"))
    finding = only(result, "tenant_restriction_other")
    assert (finding.severity, finding.statement) == ("warning", USAGE_SID)
    assert '"acme"' in finding.message
    assert codes(result) == ["tenant_restriction_other"]
    assert result.exit_code == 0


@pytest.mark.parametrize(
    "principal",
    [PROVIDER, PROVIDER_ROOT, f"arn:aws:iam::{PROVIDER}:role/cmek-platform",
     [f"arn:aws:iam::{PROVIDER}:user/ops", STRANGER]],
)
def test_any_principal_in_the_provider_account_counts(principal: Any) -> None:
    doc = complete()
    for sid in (USAGE_SID, GRANT_SID):
        stmt(doc, sid)["Principal"] = {"AWS": principal}
    assert "provider_action_missing" not in codes(run(doc))


def test_exact_generate_data_key_and_case_insensitive_actions_count() -> None:
    doc = complete()
    stmt(doc, USAGE_SID)["Action"] = ["KMS:encrypt", "kms:DECRYPT", "kms:GenerateDataKey",
                                      "kms:Describe?ey"]
    assert run(doc).findings == []


def test_grant_condition_accepts_json_true() -> None:
    doc = complete()
    stmt(doc, GRANT_SID)["Condition"] = {"Bool": {"kms:GrantIsForAWSResource": True}}
    assert run(doc).findings == []


def test_wildcard_principal_restricted_by_caller_account_is_fine() -> None:
    doc = complete()
    doc["Statement"].append({
        "Sid": "Via S3", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:CallerAccount": OWNER,
                                       "kms:ViaService": "s3.us-west-2.amazonaws.com"}},
    })
    assert run(doc).findings == []


def test_wildcard_principal_pinned_to_another_account_does_not_grant_the_provider() -> None:
    doc = complete()
    doc["Statement"] = [doc["Statement"][0], {
        "Sid": "Everyone in the owner account", "Effect": "Allow", "Principal": "*",
        "Action": list(REQUIRED_ACTIONS), "Resource": "*",
        "Condition": {"StringEquals": {"kms:CallerAccount": OWNER}},
    }]
    result = run(doc)
    assert codes(result) == ["provider_action_missing"] * 4


def test_deny_that_excludes_the_provider_is_not_reported() -> None:
    doc = complete()
    doc["Statement"].append({
        "Sid": "Only us", "Effect": "Deny", "Principal": "*", "Action": "kms:*",
        "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:CallerAccount": [OWNER, PROVIDER]}},
    })
    assert run(doc).findings == []


def test_console_key_users_of_the_owner_are_not_the_provider() -> None:
    doc = complete()
    doc["Statement"].insert(1, {
        "Sid": "Allow use of the key for key users", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{OWNER}:role/app"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
        "Resource": "*",
    })
    assert run(doc).findings == []
    assert run(doc, owner=None).findings == []  # the owner is inferred from who administers


def test_single_statement_object_is_linted() -> None:
    doc = {"Version": "2012-10-17", "Statement": complete()["Statement"][0]}
    result = run(doc)
    assert result.is_policy
    assert codes(result) == ["provider_action_missing"] * 4


# --------------------------------------------------------------------------- lint: failing


def _with(change: Callable[[Doc], None], base: Callable[[], Doc] = complete) -> Doc:
    doc = base()
    change(doc)
    return doc


def _append(statement: Any) -> Callable[[Doc], None]:
    return lambda doc: doc["Statement"].append(statement)


def _set(sid: str, key: str, value: Any) -> Callable[[Doc], None]:
    return lambda doc: stmt(doc, sid).__setitem__(key, value)


def _drop(sid: str, key: str) -> Callable[[Doc], None]:
    return lambda doc: stmt(doc, sid).pop(key)


def _set_top(key: str, value: Any) -> Callable[[Doc], None]:
    return lambda doc: doc.__setitem__(key, value)


# (document, owner, code, severity, statement label, exit code)
CASES: dict[str, tuple[Doc | str, str | None, str, str, str, int]] = {
    "not json": ("{'Statement': []}", OWNER, "not_json", "error", "-", 2),
    "truncated json": (json.dumps(complete())[:-3], OWNER, "not_json", "error", "-", 2),
    "NaN is not json": ('{"Statement": NaN}', OWNER, "not_json", "error", "-", 2),
    "json array": ("[1, 2]", OWNER, "not_a_policy", "error", "-", 2),
    "statements alone": (json.dumps(complete()["Statement"]), OWNER, "not_a_policy", "error",
                         "-", 2),
    "no Statement": ({"Version": "2012-10-17"}, OWNER, "not_a_policy", "error", "-", 2),
    "Version an object": (_with(_set_top("Version", {})), OWNER, "schema_invalid", "error",
                          "-", 1),
    "Version a list": (_with(_set_top("Version", ["2012-10-17"])), OWNER, "schema_invalid",
                       "error", "-", 1),
    "bad Version": (_with(_set_top("Version", "2020-01-01")), OWNER, "schema_invalid",
                    "error", "-", 1),
    "Statement a string": ({"Statement": "allow all"}, None, "schema_invalid", "error", "-", 1),
    "lower-case effect": (_with(_set(OWNER_SID, "Effect", "allow")), OWNER, "schema_invalid",
                          "error", OWNER_SID, 1),
    "statement not an object": (_with(_append("kms:*")), OWNER, "schema_invalid", "error",
                                "#3", 1),
    "no principal": (_with(_drop(GRANT_SID, "Principal")), OWNER, "schema_invalid", "error",
                     GRANT_SID, 1),
    "non-string action": (_with(_set(USAGE_SID, "Action", ["kms:Encrypt", 7])), OWNER,
                          "schema_invalid", "error", USAGE_SID, 1),
    "unknown operator": (_with(_set(GRANT_SID, "Condition", {"Boolean": {
        "kms:GrantIsForAWSResource": "true"}})), OWNER, "unknown_condition_operator", "error",
        GRANT_SID, 1),
    "missing decrypt": (_with(_set(USAGE_SID, "Action", [
        "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"])), OWNER,
        "provider_action_missing", "error", "-", 1),
    "describe under a tenant condition": (_with(_set(USAGE_SID, "Condition", {
        "StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}})), OWNER,
        "provider_action_conditioned", "error", USAGE_SID, 1),
    "admin action": (_with(_set(USAGE_SID, "Action", [
        *REFERENCE_STATEMENTS[0]["Action"], "kms:PutKeyPolicy"])), OWNER,
        "provider_overprivileged", "error", USAGE_SID, 1),
    "provider kms:*": (_with(_set(USAGE_SID, "Action", "kms:*")), OWNER,
                       "provider_overprivileged", "error", USAGE_SID, 1),
    "extra actions": (_with(_set(USAGE_SID, "Action", [
        *REFERENCE_STATEMENTS[0]["Action"], "kms:ReEncrypt*", "kms:ListGrants"])), OWNER,
        "provider_extra_actions", "warning", USAGE_SID, 0),
    "grant without condition": (_with(_drop(GRANT_SID, "Condition")), OWNER,
                                "grant_without_aws_resource_condition", "error", GRANT_SID, 1),
    "grant condition false": (_with(_set(GRANT_SID, "Condition", {"Bool": {
        "kms:GrantIsForAWSResource": "false"}})), OWNER,
        "grant_without_aws_resource_condition", "error", GRANT_SID, 1),
    "wildcard principal": (_with(_append({
        "Sid": "Anyone", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Action": "kms:DescribeKey", "Resource": "*"})), OWNER,
        "principal_wildcard_unrestricted", "error", "Anyone", 1),
    "wrong provider account": (_with(_set(USAGE_SID, "Principal", {
        "AWS": f"arn:aws:iam::{STRANGER}:root"})), OWNER, "provider_wrong_account", "error",
        USAGE_SID, 1),
    "not principal in allow": (_with(_append({
        "Effect": "Allow", "NotPrincipal": {"AWS": OWNER_ROOT}, "Action": "kms:DescribeKey",
        "Resource": "*"})), OWNER, "not_principal_in_allow", "error", "#3", 1),
    "not action in allow": (_with(_append({
        "Sid": "Ops", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OWNER}:role/ops"},
        "NotAction": "kms:ScheduleKeyDeletion", "Resource": "*"})), OWNER,
        "not_action_in_allow", "error", "Ops", 1),
    "no owner statement": (render(PROVIDER), OWNER, "owner_lockout_risk", "error", "-", 1),
    "no owner statement, owner unknown": (render(PROVIDER), None, "owner_lockout_risk",
                                          "error", "-", 1),
    "admin is another account": (render(PROVIDER, STRANGER), OWNER, "owner_lockout_risk",
                                 "error", "-", 1),
    "deny everyone decrypt": (_with(_append({
        "Sid": "No decrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
        "Resource": "*"})), OWNER, "deny_blocks_provider", "error", "No decrypt", 1),
    "conditional deny": (_with(_append({
        "Sid": "VPC only", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:*",
        "Resource": "*", "Condition": {"StringNotEquals": {"aws:SourceVpc": "vpc-1"}}})),
        OWNER, "deny_may_block_provider", "warning", "VPC only", 0),
    "tenant restriction": (render(PROVIDER, OWNER, tenant="other-tenant"), OWNER,
                           "tenant_restriction_other", "warning", USAGE_SID, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lint_finding(case: str) -> None:
    doc, owner, code, severity, label, exit_code = CASES[case]
    result = run(doc, owner)
    matching = [f for f in result.findings if f.code == code]
    assert matching, f"{case}: no {code} in {codes(result)}"
    assert {(f.severity, f.statement) for f in matching} == {(severity, label)}
    assert result.exit_code == exit_code
    assert result.is_policy == (exit_code != 2)


def test_every_code_has_a_failing_case() -> None:
    documented = Path(__file__).resolve().parents[1] / "docs/onboarding.md"
    table = [line.split("|")[1].strip().strip("`") for line in documented.read_text().splitlines()
             if line.startswith("| `")]
    assert sorted(table) == sorted({c[2] for c in CASES.values()})


@pytest.mark.parametrize("case", list(CASES))
def test_findings_are_one_line_with_a_fix(case: str) -> None:
    doc, owner, *_ = CASES[case]
    for finding in run(doc, owner).findings:
        for text in (finding.message, finding.fix, finding.statement):
            assert text.strip()
            assert "\n" not in text
            assert "\r" not in text
        assert finding.to_json() == {
            "code": finding.code, "severity": finding.severity,
            "statement": finding.statement, "message": finding.message, "fix": finding.fix,
        }


def test_not_json_findings() -> None:
    for text in ("", "nope", "{", '{"Statement": [}'):
        result = lint(text, PROVIDER)
        assert codes(result) == ["not_json"]
        assert result.exit_code == 2
        assert not result.is_policy


def test_json_that_is_not_an_object() -> None:
    for text in ("[]", '"Statement"', "null", "42", '[{"Statement": []}]'):
        result = lint(text, PROVIDER)
        assert codes(result) == ["not_a_policy"]
        assert result.exit_code == 2


def test_missing_actions_are_one_finding_each_and_named() -> None:
    doc = _with(_set(USAGE_SID, "Action", ["kms:Encrypt"]))
    missing = [f for f in run(doc).findings if f.code == "provider_action_missing"]
    assert [f.message.rsplit(" ", 1)[-1] for f in missing] == [
        "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    assert all(PROVIDER_ROOT in f.fix for f in missing)


def test_tenant_restricted_usage_still_grants() -> None:
    doc = render(PROVIDER, OWNER, tenant="acme")
    assert "provider_action_missing" not in codes(run(doc))


def test_overprivileged_names_the_admin_actions() -> None:
    doc = _with(_set(USAGE_SID, "Action", [*REQUIRED_ACTIONS, "kms:Schedule*",
                                           "kms:PutKeyPolicy"]))
    finding = only(run(doc), "provider_overprivileged")
    assert "kms:ScheduleKeyDeletion" in finding.message
    assert "kms:PutKeyPolicy" in finding.message
    assert "kms:DisableKey" not in finding.message


def test_provider_with_star_is_overprivileged_but_not_also_extra() -> None:
    result = run(_with(_set(USAGE_SID, "Action", "*")))
    assert "provider_overprivileged" in codes(result)
    assert "provider_extra_actions" not in codes(result)


def test_extra_actions_are_named() -> None:
    doc = _with(_set(USAGE_SID, "Action", [*REQUIRED_ACTIONS, "kms:ReEncrypt*",
                                           "kms:ListGrants", "kms:Encrpyt"]))
    finding = only(run(doc), "provider_extra_actions")
    for name in ("kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:ListGrants", "kms:Encrpyt"):
        assert name in finding.message


def test_grant_via_wildcard_needs_the_condition() -> None:
    doc = _with(_set(USAGE_SID, "Action", [*REQUIRED_ACTIONS, "kms:*Grant"]))
    finding = only(run(doc), "grant_without_aws_resource_condition")
    assert finding.statement == USAGE_SID
    assert "kms:CreateGrant" in finding.message


def test_wrong_account_by_actions_without_the_reference_sid() -> None:
    doc = complete()
    usage = stmt(doc, USAGE_SID)
    usage["Sid"] = "Vendor"
    usage["Principal"] = {"AWS": STRANGER}
    finding = only(run(doc), "provider_wrong_account")
    assert finding.statement == "Vendor"
    assert STRANGER in finding.message
    assert PROVIDER_ROOT in finding.fix


def test_wildcard_allow_without_restriction_also_reaches_the_provider() -> None:
    result = run(_with(_append({"Sid": "All", "Effect": "Allow", "Principal": "*",
                                "Action": "kms:*", "Resource": "*"})))
    assert [(f.statement, f.code) for f in result.findings] == [
        ("All", "grant_without_aws_resource_condition"),
        ("All", "principal_wildcard_unrestricted"),
        ("All", "provider_overprivileged"),
    ]


def test_not_principal_deny_that_lists_the_provider_does_not_block_it() -> None:
    guard = {"Sid": "Guard", "Effect": "Deny", "NotPrincipal": {"AWS": [OWNER_ROOT]},
             "Action": "kms:Decrypt", "Resource": "*"}
    assert "deny_blocks_provider" in codes(run(_with(_append(guard))))
    guard = {**guard, "NotPrincipal": {"AWS": [OWNER_ROOT, PROVIDER_ROOT]}}
    assert run(_with(_append(guard))).findings == []


def test_schema_problems_are_each_reported_and_checking_continues() -> None:
    doc = complete()
    doc["Version"] = "2012-10-18"
    doc["Statement"].append({"Sid": "Broken", "Effect": "Permit", "Action": [],
                             "Resource": "*"})
    doc["Statement"].append({"Sid": "Typo", "Effect": "Allow", "Principal": "*",
                             "Action": "kms:Decrypt", "Resource": "*",
                             "Condition": {"StringEqual": {"kms:CallerAccount": OWNER}}})
    result = run(doc)
    schema = [f for f in result.findings if f.code == "schema_invalid"]
    assert [f.statement for f in schema] == ["-", "Broken", "Broken", "Broken"]
    assert only(result, "unknown_condition_operator").statement == "Typo"
    assert "StringEqual" in only(result, "unknown_condition_operator").message


@pytest.mark.parametrize(
    "operator",
    ["StringEquals", "stringequals", "ForAnyValue:StringLike", "ForAllValues:StringEquals",
     "StringEqualsIfExists", "ArnLikeIfExists", "Null", "NumericLessThanEquals", "IpAddress",
     "DateGreaterThan", "BinaryEquals", "ForAnyValue:StringNotEqualsIgnoreCaseIfExists"],
)
def test_known_condition_operators(operator: str) -> None:
    doc = _with(_append({"Sid": "C", "Effect": "Allow", "Principal": {"AWS": OWNER_ROOT},
                         "Action": "kms:DescribeKey", "Resource": "*",
                         "Condition": {operator: {"aws:SomeKey": "x"}}}))
    assert run(doc).findings == []


@pytest.mark.parametrize("operator", ["StringEqual", "Equals", "ForSomeValues:StringLike",
                                      "NullIfExists", "IfExists", "Boolean"])
def test_unknown_condition_operators(operator: str) -> None:
    doc = _with(_append({"Sid": "C", "Effect": "Allow", "Principal": {"AWS": OWNER_ROOT},
                         "Action": "kms:DescribeKey", "Resource": "*",
                         "Condition": {operator: {"aws:SomeKey": "x"}}}))
    result = run(doc)
    assert [(f.statement, f.code) for f in result.findings] == [
        ("C", "unknown_condition_operator")]
    assert result.exit_code == 1


def test_findings_are_ordered_by_statement_then_code() -> None:
    doc = render(PROVIDER)
    doc["Statement"].insert(0, {"Sid": "Deny", "Effect": "Deny", "Principal": "*",
                                "Action": "kms:Encrypt", "Resource": "*"})
    doc["Statement"][2].pop("Condition")
    doc["Statement"][1]["Action"].append("kms:PutKeyPolicy")
    result = run(doc)
    assert [(f.statement, f.code) for f in result.findings] == [
        ("-", "owner_lockout_risk"),
        ("Deny", "deny_blocks_provider"),
        (USAGE_SID, "provider_overprivileged"),
        (GRANT_SID, "grant_without_aws_resource_condition"),
    ]
    assert run(doc).findings == result.findings


def test_control_characters_in_a_sid_do_not_break_lines() -> None:
    doc = _with(_append({"Sid": "two\nlines", "Effect": "Allow", "Principal": "*",
                         "Action": "kms:DescribeKey", "Resource": "*"}))
    finding = only(run(doc), "principal_wildcard_unrestricted")
    assert "\n" not in finding.statement


def test_lint_refuses_a_bad_account_argument() -> None:
    with pytest.raises(InvalidAccount):
        lint(json.dumps(complete()), "1234")
    with pytest.raises(InvalidAccount):
        lint(json.dumps(complete()), PROVIDER, "owner")


def test_not_action_is_understood() -> None:
    allow = {"Sid": "Vendor all but delete", "Effect": "Allow",
             "Principal": {"AWS": PROVIDER_ROOT}, "NotAction": "kms:ScheduleKeyDeletion",
             "Resource": "*"}
    result = run(_with(_append(allow)))
    assert only(result, "not_action_in_allow").statement == allow["Sid"]
    finding = only(result, "provider_overprivileged")
    assert "kms:PutKeyPolicy" in finding.message
    assert "kms:ScheduleKeyDeletion" not in finding.message
    deny = {"Sid": "Only decrypt", "Effect": "Deny", "Principal": "*",
            "NotAction": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}
    finding = only(run(_with(_append(deny))), "deny_blocks_provider")
    assert "kms:Encrypt" in finding.message
    assert "kms:GenerateDataKey" in finding.message
    assert "kms:Decrypt" not in finding.message


@pytest.mark.parametrize(
    ("condition", "restricted"),
    [
        ({"StringEquals": {"kms:CallerAccount": OWNER}}, True),
        ({"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}, True),
        ({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{OWNER}:role/*"}}, True),
        ({"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}, True),
        ({"StringEqualsIfExists": {"kms:ViaService": "s3.us-west-2.amazonaws.com"}}, False),
        ({"StringNotEquals": {"kms:CallerAccount": STRANGER}}, False),
        ({"StringLike": {"kms:CallerAccount": "*"}}, False),
        ({"StringEquals": {"kms:EncryptionContext:app": "x"}}, False),
    ],
)
def test_what_restricts_a_wildcard_principal(condition: Doc, restricted: bool) -> None:
    doc = _with(_append({"Sid": "Wide", "Effect": "Allow", "Principal": "*",
                         "Action": "kms:DescribeKey", "Resource": "*",
                         "Condition": condition}))
    assert ("principal_wildcard_unrestricted" in codes(run(doc))) is not restricted
