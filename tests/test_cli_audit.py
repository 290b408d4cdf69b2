"""`cmek audit verify` and `cmek audit export` on a real database file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from cmek.audit import AuditTrail
from cmek.clock import ManualClock
from cmek.db import create_engine


def cmek(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmek.cli", *args], capture_output=True,
                          text=True, timeout=60)


def make_trail(path: Path) -> str:
    url = f"sqlite:///{path}"
    trail = AuditTrail(create_engine(url), ManualClock())
    for i in range(5):
        trail.append("acme", "kms_call", {"operation": "Decrypt", "request_id": f"r{i}"})
    trail.append("other", "kms_call", {"operation": "GenerateDataKey"})
    return url


def test_verify_intact_then_detects_an_edit(tmp_path: Path) -> None:
    db = tmp_path / "control.sqlite3"
    url = make_trail(db)
    ok = cmek("audit", "verify", "--tenant", "acme", "--database-url", url)
    assert ok.returncode == 0, ok.stderr
    assert "5 entries, intact" in ok.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_entries SET data = replace(data, 'r2', 'r9') "
                     "WHERE tenant = 'acme' AND seq = 3")
    broken = cmek("audit", "verify", "--tenant", "acme", "--database-url", url)
    assert broken.returncode == 1
    assert "entry 3" in broken.stdout
    assert "BROKEN" in broken.stdout
    other = cmek("audit", "verify", "--tenant", "other", "--database-url", url)
    assert other.returncode == 0


def test_export_writes_json_lines(tmp_path: Path) -> None:
    url = make_trail(tmp_path / "control.sqlite3")
    out = tmp_path / "acme.jsonl"
    run = cmek("audit", "export", "--tenant", "acme", "--database-url", url, "--out", str(out))
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
    assert lines[2]["data"]["request_id"] == "r2"
    assert all(e["tenant"] == "acme" for e in lines)


def test_missing_database_is_a_one_line_error(tmp_path: Path) -> None:
    run = cmek("audit", "verify", "--tenant", "acme", "--database-url",
               f"sqlite:///{tmp_path / 'nope.sqlite3'}")
    assert run.returncode == 2
    assert "no database" in run.stderr
    assert "Traceback" not in run.stderr
