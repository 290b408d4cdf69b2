"""docs/onboarding.md's walkthrough runs as written against a real kmslocal, and its
examples of output are what the commands print."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.kmslocal_harness import PROVIDER, REGION, KmsLocal
from tests.platform_harness import PROVIDER_ACCOUNT, customer_key, provider_policy

DOC = Path(__file__).resolve().parents[1] / "docs" / "onboarding.md"
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


def test_onboarding_walkthrough_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 4
    script = "set -euo pipefail\n" + "\n".join(blocks) + '\necho "KEY_ARN=$KEY_ARN"\n'
    server = KmsLocal(tmp_path / "kms", None, dev=False)
    server.start()
    try:
        bindir = str(Path(sys.executable).parent)
        run = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path,
            env={"CMEK_KMS_ENDPOINT_URL": server.url, "PATH": f"{bindir}:/usr/bin:/bin",
                 "HOME": str(tmp_path)},
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    policy = json.loads((tmp_path / "policy.json").read_text())
    usage = next(s for s in policy["Statement"] if s["Sid"] == "Allow use of the key")
    assert usage["Condition"] == {"StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}}
    # the statements the guide lists are the ones render printed, in order
    listed = re.search(r"prints a whole policy of (\w+) statements:\n\n(.*?)\n\n",
                       DOC.read_text(), re.S)
    assert listed is not None
    sids = re.findall(r"^- `([^`]+)`:", listed.group(2), re.M)
    assert sids == [s["Sid"] for s in policy["Statement"]]
    assert listed.group(1) == NUMBERS[len(sids)]
    assert "correct and least-privilege" in run.stdout
    assert "key verified" in run.stdout
    key_arn = re.search(r"KEY_ARN=(arn:aws:kms:us-west-2:222222222222:key/\S+)", run.stdout)
    assert key_arn is not None
    # the provider's dry run shows up in the customer's usage summary
    assert re.search(r"GenerateDataKey\s+verification\s+acme\s+1", run.stdout)
    assert os.path.exists(tmp_path / "policy.json")


def test_the_failure_example_is_what_verify_prints(tmp_path: Path) -> None:
    example = re.search(r"`(FAIL decrypt: [^`]*?) \.\.\.`", DOC.read_text())
    assert example is not None
    server = KmsLocal(tmp_path / "kms", None, dev=False)
    server.start()
    try:
        policy = json.loads(provider_policy())
        policy["Statement"][1]["Action"].remove("kms:Decrypt")
        arn = customer_key(server, json.dumps(policy))
        run = subprocess.run(
            [sys.executable, "-m", "cmek.cli", "key", "verify", "--key-arn", arn,
             "--provider-account", PROVIDER_ACCOUNT, "--endpoint-url", server.url],
            capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "AWS_REGION": REGION, "HOME": str(tmp_path),
                 "AWS_ACCESS_KEY_ID": PROVIDER[1], "AWS_SECRET_ACCESS_KEY": PROVIDER[2]})
    finally:
        server.stop()
    assert run.returncode == 1
    printed = [line for line in run.stdout.splitlines() if line.startswith("FAIL decrypt:")]
    assert printed
    assert printed[0].startswith(example.group(1))
    assert "fix:" in run.stdout
