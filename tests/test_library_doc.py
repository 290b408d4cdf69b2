"""docs/library.md's example runs as written, against a real kmslocal."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.kmslocal_harness import KmsLocal

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_library_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    server = KmsLocal(tmp_path / "kms", None, dev=False)
    server.start()
    try:
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
            env={"CMEK_KMS_ENDPOINT_URL": server.url, "PATH": "/usr/bin:/bin"},
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr
    assert "refused: key_revoked disabled" in run.stdout
    assert re.search(r"rewrapped \d+ of \d+ data keys", run.stdout)
    assert "GenerateDataKey" in run.stdout
