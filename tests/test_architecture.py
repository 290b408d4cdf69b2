"""The folder tree is the architecture: kmslocal stands alone; cmek's layers flow one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# platform -> stores -> keyring -> crypto/kms; audit is used by the layers above kms.
ALLOWED: dict[str, set[str]] = {
    "kms": set(),
    "crypto": set(),
    "audit": set(),
    "keyring": {"kms", "crypto", "audit"},
    "stores": {"keyring", "crypto", "kms", "audit"},
    "lifecycle": {"keyring", "stores", "crypto", "kms", "audit"},
    "customer": {"kms"},
    "platform": {"lifecycle", "stores", "keyring", "crypto", "kms", "audit", "customer"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_kmslocal_never_imports_cmek() -> None:
    offenders = {
        str(p.relative_to(SRC)): sorted(n for n in imports(p) if n.split(".")[0] == "cmek")
        for p in (SRC / "kmslocal").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) > 5  # the scan really read the package


def test_cmek_layers_only_import_downward() -> None:
    wrong: list[str] = []
    for layer, allowed in ALLOWED.items():
        for path in (SRC / "cmek" / layer).rglob("*.py"):
            for name in imports(path):
                parts = name.split(".")
                if parts[0] == "kmslocal":
                    wrong.append(f"{path.relative_to(SRC)} imports {name}")
                inner = parts[1] if parts[0] == "cmek" and len(parts) > 1 else ""
                if inner in ALLOWED and inner != layer and inner not in allowed:
                    wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert wrong == []


def test_the_repository_stands_alone() -> None:
    """Nothing reads outside the clone: no path above the repository, no absolute path of
    a developer's machine (a fresh clone must pass on its own)."""
    outside = re.compile(r"[\"'](\.\./)+shared|/ [\"']shared[\"'/]|[\"'](/home/|/Users/|/work/)")
    offenders = []
    for folder in ("src", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if outside.search(line) and "outside = re.compile" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
