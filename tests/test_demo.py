"""`cmek demo` walks the whole key lifecycle and exits 0 only if every step behaved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_cmek_demo(tmp_path: Path) -> None:
    """On free ports of its own, in a temporary folder it deletes: kmslocal's root key
    does not stay behind."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CMEK_"))},
           "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "cmek.cli", "demo"], env=env,
                         capture_output=True, text=True, timeout=240)
    assert not list(tmp_path.glob("cmek-demo-*"))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "every step behaved"
    assert sum("locked in" in line for line in lines) == 2
    assert any("restored by from_backup" in line for line in lines)
    assert any("destroyed in" in line for line in lines)
