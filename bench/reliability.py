"""Write docs/reliability.md from figures the suite itself produces.

Runs the reliability tests (faults, crashes, fuzzing, isolation, attacks, locks) with
``CMEK_RELIABILITY_OUT`` set, so each test's recorded counts land in one file, sums
them, reads the last soak's JSON (``make soak`` writes bench/results/soak.json), and
renders the table. Nobody types a number into docs/reliability.md.

    python bench/reliability.py [--counts FILE] [--soak FILE] [--out docs/reliability.md]

With ``--counts`` it renders from an existing counts file instead of running the tests.
Exits non-zero when the tests fail or a must-be-zero figure is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_faults.py", "tests/test_crash.py", "tests/test_fuzz_parsers.py",
         "tests/test_fuzz_api.py", "tests/test_isolation.py", "tests/test_web.py",
         "tests/test_tenant_attacks.py", "tests/test_lock_under_load.py"]
# (kind, metric, label, must be zero)
ROWS: list[tuple[str, str, str, bool]] = [
    ("faults", "injected", "KMS fault scenarios injected", False),
    ("faults", "survived", "KMS fault scenarios survived (every expectation held)", False),
    ("faults", "requests_checked", "requests under faults checked for tenant ownership", False),
    ("faults", "wrong_tenant_data", "responses under faults carrying another tenant's data",
     True),
    ("crashes", "injected", "SIGKILLs injected (provisioning, writes, backup, restore, rewrap,"
     " shred)", False),
    ("crashes", "recovered", "crashes recovered (completed or cleanly absent after restart)",
     False),
    ("crashes", "acknowledged_writes_checked", "acknowledged writes checked after a crash",
     False),
    ("crashes", "acknowledged_writes_lost", "acknowledged writes lost to a crash", True),
    ("fuzz", "parser_cases", "envelope and stream parser cases (hypothesis)", False),
    ("fuzz", "atheris_cases", "envelope and stream parser cases (atheris, coverage-guided)",
     False),
    ("fuzz", "api_cases", "HTTP API requests generated from the OpenAPI document", False),
    ("fuzz", "api_5xx", "HTTP API answers with a 5xx or a stack trace", True),
    ("isolation", "probes", "cross-tenant and auth probes tried", False),
    ("isolation", "leaks", "probes that returned another tenant's data or got in", True),
    ("isolation", "log_scan_values", "planted secrets searched for in logs and files", False),
    ("attacks", "refused", "attacks of a tenant admin or a database insider tried, each refused",
     False),
    ("locks", "cycles", "lock and restore cycles under 8 concurrent readers", False),
    ("locks", "requests", "requests sent during them", False),
    ("locks", "served", "served (2xx)", False),
    ("locks", "refused_key_unavailable", "refused 423 tenant_key_unavailable", False),
    ("locks", "refused_session_ended", "refused 401: a session the lock ended (signed in again)",
     False),
    ("locks", "refused_otherwise", "refused with any other code", True),
    ("locks", "answered_5xx", "answered 5xx", True),
    ("locks", "data_after_lock_observed",
     "requests started after the lock was observed that returned data", True),
]
SOAK_ROWS: list[tuple[str, str, bool]] = [
    ("requests", "requests sent", False),
    ("served", "served (2xx)", False),
    ("refused_423", "refused with 423 (key unavailable)", False),
    ("failed_other", "failed otherwise (by reason below)", False),
    ("internal_errors", "answered 500", True),
    ("connection_errors", "connection errors", True),
    ("data_after_lock", "responses carrying data after a lock", True),
    ("sessions_surviving_lock", "sessions that outlived a lock", True),
    ("wrong_tenant_data", "responses carrying another tenant's data", True),
    ("writes_acknowledged", "writes acknowledged", False),
    ("objects_verified", "objects read back and checked by SHA-256 at the end", False),
    ("writes_lost", "acknowledged writes lost or changed", True),
    ("search_misses", "acknowledged writes missing from search", True),
    ("key_disables", "keys disabled", False),
    ("deletions_scheduled", "key deletions scheduled (then cancelled)", False),
    ("faults_injected", "KMS faults injected", False),
]


def run_tests(counts: Path) -> int:
    env = {**os.environ, "CMEK_RELIABILITY_OUT": str(counts)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
           *[t for t in TESTS if (ROOT / t).exists()]]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def load_counts(path: Path) -> Counter[tuple[str, str]]:
    total: Counter[tuple[str, str]] = Counter()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            for kind, metric, n in json.loads(line):
                total[(kind, metric)] += int(n)
    return total


def render(counts: Counter[tuple[str, str]], soak: dict[str, Any] | None,
           tests_passed: bool) -> tuple[str, list[str]]:
    bad: list[str] = []
    lines = [
        "# Reliability figures",
        "",
        "Written by `make reliability` (bench/reliability.py), which runs the fault, crash,",
        "fuzz, isolation, attack and lock-under-load tests with their counters on and sums",
        "what they recorded; the soak figures come from the last `make soak`",
        "(bench/soak.py). Do not edit by hand.",
        "What each test shows is in [security.md](security.md).",
        "",
        f"Reliability tests: {'all passed' if tests_passed else 'FAILED'}.",
        "",
        "| area | figure | count | must be |",
        "|---|---|---|---|",
    ]
    for kind, metric, label, zero in ROWS:
        n = counts.get((kind, metric))
        shown = "not run" if n is None else f"{n:,}"
        if zero and n:
            bad.append(label)
        lines.append(f"| {kind} | {label} | {shown} | {'0' if zero else ''} |")
    lines += ["", "## Soak", ""]
    if soak is None:
        lines.append("No soak result yet: run `make soak`.")
    else:
        c = soak.get("counts", soak)
        lines += [
            f"{soak.get('minutes', '?'):g} minutes, {soak.get('clients', '?')} concurrent clients "
            f"across {soak.get('tenants', '?')} tenants, keys disabled and re-enabled every "
            f"{soak.get('flap_seconds', '?'):g} s, one key scheduled for deletion and cancelled, "
            "KMS faults injected (`make soak`).",
            "",
            "| figure | count | must be |",
            "|---|---|---|",
        ]
        for key, label, zero in SOAK_ROWS:
            n = c.get(key)
            if zero and n:
                bad.append(label)
            lines.append(f"| {label} | {'?' if n is None else f'{n:,}'} | {'0' if zero else ''} |")
        reasons = soak.get("failed_by_reason") or {}
        if reasons:
            lines += ["", "Failed otherwise, by operation, status and code: " + ", ".join(
                f"{why} {n:,}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
                + "."]
        rss = soak.get("memory", {})
        if rss:
            lines += ["", "| process | RSS at start | RSS at end | growth |", "|---|---|---|---|"]
            for proc, m in sorted(rss.items()):
                lines.append(f"| {proc} | {m['start_mib']:.1f} MiB | {m['end_mib']:.1f} MiB | "
                             f"{m['growth_mib']:+.1f} MiB |")
    return "\n".join(lines) + "\n", bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=Path, help="render from this counts file; do not run")
    ap.add_argument("--soak", type=Path, default=ROOT / "bench/results/soak.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/reliability.md")
    args = ap.parse_args()
    rc = 0
    if args.counts is None:
        with tempfile.TemporaryDirectory() as tmp:
            counts_file = Path(tmp) / "counts.jsonl"
            rc = run_tests(counts_file)
            counts = load_counts(counts_file)
    else:
        counts = load_counts(args.counts)
    soak = json.loads(args.soak.read_text()) if args.soak.exists() else None
    text, bad = render(counts, soak, rc == 0)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    for label in bad:
        print(f"reliability: must be 0 but is not: {label}", file=sys.stderr)
    return 1 if rc or bad else 0


if __name__ == "__main__":
    sys.exit(main())
