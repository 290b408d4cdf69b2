"""docs/security.md links each guarantee to a test: every link must name a real test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_linked_test_exists() -> None:
    text = (ROOT / "docs/security.md").read_text(encoding="utf-8")
    links = re.findall(r"\[(test_\w+\.py)(?:::(\w+))?\]\(\.\./tests/(test_\w+\.py)\)", text)
    assert len(links) >= 40
    for shown, name, target in links:
        assert shown == target, f"{shown} links to {target}"
        source = (ROOT / "tests" / target).read_text(encoding="utf-8")
        if name:
            assert re.search(rf"^def {name}\(", source, re.M), f"{target}::{name} is gone"
