"""`cmek policy lint` and `cmek key verify` follow one model of what the provider needs
(cmek.customer.requirements), so they cannot disagree: over generated key policies, lint
finds no error exactly when verify passes against kmslocal, which enforces the policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cmek.customer.keys import verify_key
from cmek.customer.lint import lint
from cmek.customer.policy import merge, render
from cmek.kms import BotoKms, KmsSettings
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal

PROVIDER_ACCOUNT, OWNER_ACCOUNT = "111111111111", "222222222222"
TENANT = "acme"
ROOT = f"arn:aws:iam::{PROVIDER_ACCOUNT}:root"
USE = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
CONDITIONS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "tenant": {"StringEquals": {"kms:EncryptionContext:cmek:tenant": TENANT}},
    "other tenant": {"StringEquals": {"kms:EncryptionContext:cmek:tenant": "globex"}},
    "tenant like": {"StringLike": {"kms:EncryptionContext:cmek:tenant": "ac*"}},
    "not other tenant": {"StringNotEquals": {"kms:EncryptionContext:cmek:tenant": "globex"}},
    "tenant if exists": {"StringEqualsIfExists": {"kms:EncryptionContext:cmek:tenant": TENANT}},
    "category": {"StringEquals": {"kms:EncryptionContext:cmek:category": "metadata"}},
}


def statement(sid: str, effect: str, actions: list[str],
              condition: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"Sid": sid, "Effect": effect, "Principal": {"AWS": ROOT},
                           "Action": actions, "Resource": "*"}
    if condition is not None:
        out["Condition"] = condition
    return out


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    """The owner's statement, then provider statements built from the pieces that decide
    whether the provider's calls work: which actions, under which condition, and a Deny."""
    statements = [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                   "Principal": {"AWS": f"arn:aws:iam::{OWNER_ACCOUNT}:root"},
                   "Action": "kms:*", "Resource": "*"}]
    # half the time the whole reference set, so that policies that work are common too
    usage = draw(st.one_of(st.just(USE), st.lists(st.sampled_from(USE), unique=True)))
    if usage:
        statements.append(statement("Allow use of the key", "Allow", usage,
                                    CONDITIONS[draw(st.sampled_from(list(CONDITIONS)))]))
    describe = draw(st.sampled_from(["absent", "none", "tenant"]))
    if describe != "absent":
        statements.append(statement("Allow description of the key", "Allow",
                                    ["kms:DescribeKey"], CONDITIONS[describe]))
    denied = draw(st.one_of(st.just("none"), st.sampled_from(["none", *USE])))
    if denied != "none":
        statements.append(statement("No", "Deny", [denied], None))
    return {"Version": "2012-10-17", "Statement": statements}


@pytest.fixture(scope="module")
def provider_kms(kmslocal: KmsLocal) -> BotoKms:
    return BotoKms(KmsSettings(region=REGION, endpoint_url=kmslocal.url,
                               access_key_id=PROVIDER[1], secret_access_key=PROVIDER[2],
                               max_attempts=1))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies())
def test_lint_clean_exactly_when_verify_passes(kmslocal: KmsLocal, provider_kms: BotoKms,
                                               policy: dict[str, Any]) -> None:
    arn = kmslocal.client(CUSTOMER).create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    report = verify_key(provider_kms, arn, region=REGION, tenant=TENANT,
                        provider_account=PROVIDER_ACCOUNT)
    found = lint(json.dumps(policy), PROVIDER_ACCOUNT, OWNER_ACCOUNT, TENANT)
    errors = [f.code for f in found.findings if f.severity == "error"]
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    event(f"verify passes: {report.ok}")
    assert (found.exit_code == 0) == report.ok, (json.dumps(policy), errors, failed)


def test_following_lints_fix_makes_verify_pass(kmslocal: KmsLocal, provider_kms: BotoKms,
                                               tmp_path: Path) -> None:
    """The case that once misled a customer: DescribeKey added, as lint said, to the
    statement that carries the tenant condition. Lint now says where it must go instead,
    and doing exactly that makes verify pass."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{OWNER_ACCOUNT}:root"}, "Action": "kms:*",
         "Resource": "*"},
        statement("Allow use of the key", "Allow", USE, CONDITIONS["tenant"])]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    cli = subprocess.run([sys.executable, "-m", "cmek.cli", "policy", "lint", str(path),
                          "--provider-account", PROVIDER_ACCOUNT, "--tenant", TENANT],
                         capture_output=True, text=True, check=False)
    assert cli.returncode == 1, cli.stdout
    assert "provider_action_conditioned" in cli.stdout
    assert "Allow description of the key" in cli.stdout
    policy["Statement"][1]["Action"] = USE[:3]
    policy["Statement"].append(statement("Allow description of the key", "Allow",
                                         ["kms:DescribeKey"], None))
    assert lint(json.dumps(policy), PROVIDER_ACCOUNT, OWNER_ACCOUNT, TENANT).exit_code == 0
    arn = kmslocal.client(CUSTOMER).create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    assert verify_key(provider_kms, arn, region=REGION, tenant=TENANT,
                      provider_account=PROVIDER_ACCOUNT).ok


@pytest.mark.parametrize("tenant", [None, TENANT])
def test_rendered_and_merged_policies_pass_both(kmslocal: KmsLocal, provider_kms: BotoKms,
                                                tenant: str | None) -> None:
    rendered = render(PROVIDER_ACCOUNT, OWNER_ACCOUNT, tenant)
    default = {"Version": "2012-10-17", "Statement": rendered["Statement"][:1]}
    for policy in (rendered, merge(default, PROVIDER_ACCOUNT, tenant)):
        assert lint(json.dumps(policy), PROVIDER_ACCOUNT, OWNER_ACCOUNT, tenant).exit_code == 0
        arn = kmslocal.client(CUSTOMER).create_key(
            Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
        assert verify_key(provider_kms, arn, region=REGION, tenant=tenant,
                          provider_account=PROVIDER_ACCOUNT).ok
