"""Counts behind docs/reliability.md, recorded by the reliability tests themselves.

A test calls ``record("faults", "injected")`` as it injects a fault and
``record("faults", "survived")`` once the system came through it. Counts stay in the
worker's memory; at the end of the session each worker appends one JSON line to the
file named by ``CMEK_RELIABILITY_OUT`` (unset: nothing is written).
``bench/reliability.py`` sums those lines into the table. A count is recorded only
after the assertion that backs it, so a failing test adds nothing to "survived".
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

OUT_VAR = "CMEK_RELIABILITY_OUT"
_counts: Counter[tuple[str, str]] = Counter()


def record(kind: str, metric: str, n: int = 1) -> None:
    _counts[(kind, metric)] += n


def flush() -> None:
    out = os.environ.get(OUT_VAR)
    if not out or not _counts:
        return
    line = json.dumps([[kind, metric, n] for (kind, metric), n in sorted(_counts.items())])
    with Path(out).open("a", encoding="utf-8") as f:  # one short append per worker
        f.write(line + "\n")
    _counts.clear()
