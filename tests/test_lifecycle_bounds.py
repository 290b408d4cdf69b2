"""docs/lifecycle.md's time-to-lock table is what the monitor's budget rule gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmek.lifecycle.engine import Durations, Lifecycle

DOC = Path(__file__).resolve().parents[1] / "docs" / "lifecycle.md"


def rows() -> list[tuple[int, float, float]]:
    out = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| ([\d,]+) \| ([\d.]+) s \| ([\d.]+) s \|", line)
        if m:
            out.append((int(m.group(1).replace(",", "")), float(m.group(2)),
                        float(m.group(3))))
    return out


def test_doc_table_matches_the_budget_rule() -> None:
    table = rows()
    assert [n for n, _, _ in table] == [10, 100, 500, 1000, 5000, 10000]
    lifecycle = Lifecycle.__new__(Lifecycle)
    lifecycle.durations = Durations()
    for tenants, interval, bound in table:
        assert lifecycle.effective_interval(tenants) == pytest.approx(interval)
        assert interval * 1.1 + 1 == pytest.approx(bound)
