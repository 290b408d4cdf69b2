"""The onboarding commands end to end through the `cmek` CLI against a real kmslocal:
the happy path's output, and one line on stderr with a non-zero exit for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REFERENCE_POLICY
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal, free_port

PROVIDER_ACCOUNT = "111111111111"


@pytest.fixture(scope="module")
def kms(dev_kms: KmsLocal) -> KmsLocal:
    return dev_kms


def cmek(*args: str, who: tuple[str, str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd or Path.cwd()),
           "AWS_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true"}
    if who is not None:
        env |= {"AWS_ACCESS_KEY_ID": who[1], "AWS_SECRET_ACCESS_KEY": who[2]}
    return subprocess.run([sys.executable, "-m", "cmek.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def one_line_error(run: subprocess.CompletedProcess[str], code: str) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("cmek: ")
    assert code in lines[0], lines[0]


def test_render_equals_the_reference_policy() -> None:
    run = cmek("policy", "render", "--provider-account", "111122223333")
    assert run.returncode == 0, run.stderr
    expected = json.loads(REFERENCE_POLICY.read_text().replace("<ACCOUNT_ID>", "111122223333"))
    assert json.loads(run.stdout) == expected


def test_merge_keeps_existing_statements(tmp_path: Path) -> None:
    existing = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "Audit", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::222222222222:role/audit"},
         "Action": "kms:DescribeKey", "Resource": "*"},
    ]}
    (tmp_path / "existing.json").write_text(json.dumps(existing))
    run = cmek("policy", "merge", str(tmp_path / "existing.json"), "--provider-account",
               PROVIDER_ACCOUNT)
    assert run.returncode == 0, run.stderr
    merged = json.loads(run.stdout)
    assert merged["Statement"][:2] == existing["Statement"]
    assert [s["Sid"] for s in merged["Statement"][2:]] == [
        "Allow use of the key", "Allow attachment of persistent resources"]
    (tmp_path / "merged.json").write_text(run.stdout)
    again = cmek("policy", "merge", str(tmp_path / "merged.json"), "--provider-account",
                 PROVIDER_ACCOUNT)
    assert json.loads(again.stdout) == merged


def test_lint_exit_codes_and_json(tmp_path: Path) -> None:
    good = cmek("policy", "render", "--provider-account", PROVIDER_ACCOUNT, "--owner-account",
                "222222222222").stdout
    (tmp_path / "good.json").write_text(good)
    ok = cmek("policy", "lint", str(tmp_path / "good.json"), "--provider-account",
              PROVIDER_ACCOUNT, "--owner-account", "222222222222", "--json")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["findings"] == []
    bad = json.loads(good)
    bad["Statement"][1]["Action"] = "kms:*"
    bad["Statement"][2]["Condition"] = {"StringEqual": {"kms:CallerAccount": "1"}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    run = cmek("policy", "lint", str(tmp_path / "bad.json"), "--provider-account",
               PROVIDER_ACCOUNT, "--json")
    assert run.returncode == 1
    codes = {f["code"] for f in json.loads(run.stdout)["findings"]}
    assert {"provider_overprivileged", "unknown_condition_operator"} <= codes
    (tmp_path / "garbage.json").write_text("{not json")
    assert cmek("policy", "lint", str(tmp_path / "garbage.json"), "--provider-account",
                PROVIDER_ACCOUNT).returncode == 2


def test_create_verify_and_usage_through_the_cli(kms: KmsLocal, tmp_path: Path) -> None:
    created = cmek("key", "create", "--provider-account", PROVIDER_ACCOUNT, "--tenant", "acme",
                   "--endpoint-url", kms.url, "--json", who=CUSTOMER, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    arn = json.loads(created.stdout)["key_arn"]
    verified = cmek("key", "verify", "--key-arn", arn, "--tenant", "acme", "--endpoint-url",
                    kms.url, "--provider-account", PROVIDER_ACCOUNT, "--json", who=PROVIDER,
                    cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    assert all(c["ok"] for c in json.loads(verified.stdout)["checks"])
    other = cmek("key", "verify", "--key-arn", arn, "--tenant", "other", "--endpoint-url",
                 kms.url, "--provider-account", PROVIDER_ACCOUNT, "--json", who=PROVIDER,
                 cwd=tmp_path)
    assert other.returncode == 1
    failed = {c["name"] for c in json.loads(other.stdout)["checks"] if not c["ok"]}
    assert "generate_data_key" in failed
    usage = cmek("usage", "--key-arn", arn, "--since", "1h", "--endpoint-url", kms.url,
                 "--json", who=CUSTOMER, cwd=tmp_path)
    assert usage.returncode == 0, usage.stderr
    calls = json.loads(usage.stdout)["calls"]
    assert any(c["operation"] == "GenerateDataKey" and c["tenant"] == "acme" for c in calls)
    refused = json.loads(usage.stdout)["refusals"]
    assert any(r["error_code"] == "AccessDeniedException" for r in refused)



@pytest.mark.parametrize(("args", "code"), [
    (["usage", "--key-arn", "not-an-arn"], "invalid_input"),
    (["usage", "--key-arn", "arn:aws:kms:us-west-2:222222222222:key/"
      "1234abcd-12ab-34cd-56ef-1234567890ab", "--since", "yesterday"], "invalid_input"),
    (["policy", "render", "--provider-account", "12345"], "invalid_account"),
    (["policy", "merge", "/nonexistent/policy.json", "--provider-account", "111111111111"],
     "file_unreadable"),
])
def test_bad_input_is_one_line(args: list[str], code: str, tmp_path: Path) -> None:
    one_line_error(cmek(*args, who=PROVIDER, cwd=tmp_path), code)


def test_verify_of_a_malformed_arn_is_one_line(tmp_path: Path) -> None:
    run = cmek("key", "verify", "--key-arn", "arn:aws:kms:us-west-2:nope", "--provider-account",
               PROVIDER_ACCOUNT, who=PROVIDER, cwd=tmp_path)
    one_line_error(run, "invalid_input")
    assert run.returncode == 2
    assert run.stdout == ""


def test_merge_of_a_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("Statement: yes")
    one_line_error(cmek("policy", "merge", str(tmp_path / "x.json"), "--provider-account",
                        PROVIDER_ACCOUNT), "not_json")


def test_verify_reports_a_missing_key_and_another_region(kms: KmsLocal, tmp_path: Path) -> None:
    missing = "arn:aws:kms:us-west-2:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    run = cmek("key", "verify", "--key-arn", missing, "--endpoint-url", kms.url, "--json",
               "--provider-account", PROVIDER_ACCOUNT, who=PROVIDER, cwd=tmp_path)
    assert run.returncode == 1
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert not checks["reachable"]["ok"]
    elsewhere = missing.replace("us-west-2", "eu-west-1")
    run = cmek("key", "verify", "--key-arn", elsewhere, "--endpoint-url", kms.url, "--json",
               "--provider-account", PROVIDER_ACCOUNT, who=PROVIDER, cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert run.returncode == 1
    assert not checks["region"]["ok"]


def test_wrong_credentials_and_unreachable_endpoint(kms: KmsLocal, tmp_path: Path) -> None:
    wrong = (CUSTOMER[0], CUSTOMER[1], "not-the-secret")
    run = cmek("key", "create", "--provider-account", PROVIDER_ACCOUNT, "--endpoint-url",
               kms.url, who=wrong, cwd=tmp_path)
    one_line_error(run, "credentials_invalid")
    dead = f"http://127.0.0.1:{free_port()}"
    run = cmek("key", "create", "--provider-account", PROVIDER_ACCOUNT, "--endpoint-url", dead,
               who=CUSTOMER, cwd=tmp_path)
    one_line_error(run, "endpoint_unreachable")
    run = cmek("usage", "--key-arn", "arn:aws:kms:us-west-2:222222222222:key/"
               "1234abcd-12ab-34cd-56ef-1234567890ab", "--endpoint-url", dead, who=CUSTOMER,
               cwd=tmp_path)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
