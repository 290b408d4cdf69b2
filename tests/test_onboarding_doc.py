"""docs/onboarding.md's walkthrough runs as written against a real kmslocal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.kmslocal_harness import KmsLocal

DOC = Path(__file__).resolve().parents[1] / "docs" / "onboarding.md"


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
            env={"KMS_ENDPOINT": server.url, "PATH": f"{bindir}:/usr/bin:/bin",
                 "HOME": str(tmp_path)},
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    policy = json.loads((tmp_path / "policy.json").read_text())
    usage = next(s for s in policy["Statement"] if s["Sid"] == "Allow use of the key")
    assert usage["Condition"] == {"StringEquals": {"kms:EncryptionContext:cmek:tenant": "acme"}}
    assert "correct and least-privilege" in run.stdout
    assert "key verified" in run.stdout
    key_arn = re.search(r"KEY_ARN=(arn:aws:kms:us-west-2:222222222222:key/\S+)", run.stdout)
    assert key_arn is not None
    # the provider's dry run shows up in the customer's usage summary
    assert re.search(r"GenerateDataKey\s+verification\s+acme\s+1", run.stdout)
    assert os.path.exists(tmp_path / "policy.json")
