"""README.md and docs/ say what the tools do: every fenced block is a command, an example
or a synopsis that a test runs or checks here (or in the test named for it), and the
API's table is the OpenAPI document's, route by route."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cmek.cli import build_parser
from cmek.platform.config import ConfigError, load_settings
from cmek.platform.devrun import Demo, running_demo
from tests.kmslocal_harness import KmsLocal

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Every fenced block, by file and position, and what makes it true.
BLOCKS = {
    ("README.md", 0): "test_make_targets_exist; test_make_run.py runs make run's program",
    ("README.md", 1): "test_the_layout_exists",
    ("README.md", 2): "test_readme_synopsis_is_the_parser",
    ("docs/api.md", 0): "test_api_examples_run",
    ("docs/config.md", 0): "test_config_error_examples_are_what_the_platform_says",
    ("docs/config.md", 1): "test_config_example_loads",
    ("docs/format.md", 0): "a formula: test_crypto_stream.py checks the nonces it gives",
    ("docs/kmslocal.md", 0): "test_kmslocal_synopsis_is_the_parser",
    ("docs/kmslocal.md", 1): "test_kmslocal_python_example_runs",
    ("docs/kmslocal.md", 2): "test_kmslocal_config_example_loads",
    ("docs/library.md", 0): "a diagram of the key hierarchy, not a command",
    ("docs/library.md", 1): "test_library_doc.py runs it",
    ("docs/onboarding.md", 0): "test_onboarding_doc.py runs blocks 0 to 3 as one script",
    ("docs/onboarding.md", 1): "test_onboarding_doc.py",
    ("docs/onboarding.md", 2): "test_onboarding_doc.py",
    ("docs/onboarding.md", 3): "test_onboarding_doc.py",
}


def blocks(name: str, language: str | None = None) -> list[str]:
    found = FENCE.findall((ROOT / name).read_text(encoding="utf-8"))
    return [body for lang, body in found if language is None or lang == language]


def test_every_block_is_accounted_for() -> None:
    present = {(str(doc.relative_to(ROOT)), n)
               for doc in DOCS for n, _ in enumerate(blocks(str(doc.relative_to(ROOT))))}
    assert present == set(BLOCKS), "a fenced block was added or removed: say what checks it"


# --- README -------------------------------------------------------------------------------
def test_make_targets_exist() -> None:
    for target in re.findall(r"^make (\w+)", blocks("README.md")[0], re.M):
        run = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    mentioned = set(re.findall(r"`make (\w+)`", (ROOT / "README.md").read_text()))
    makefile = (ROOT / "Makefile").read_text()
    assert {t for t in mentioned if not re.search(rf"^{t}:", makefile, re.M)} == set()


def test_the_layout_exists() -> None:
    for line in blocks("README.md")[1].splitlines():
        path = line.split()[0] if line and not line.startswith(" ") else None
        if path is not None:
            assert (ROOT / path).exists(), path


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


def synopsis(text: str, program: str) -> dict[tuple[str, ...], tuple[set[str], set[str]]]:
    """Each line: its command words, and its options outside and inside brackets."""
    lines: dict[tuple[str, ...], tuple[set[str], set[str]]] = {}
    for line in text.splitlines():
        words = shlex.split(line.split("#", 1)[0])
        if not words or words[0] != program:
            continue
        command = tuple(w for w in words[1:] if re.fullmatch(r"[a-z]+", w))
        command = command[:next((i for i, w in enumerate(words[1:]) if not re.fullmatch(
            r"[a-z]+", w)), len(command))]
        bracketed = set(re.findall(r"\[(--[a-z-]+)", line))
        lines[command] = (set(re.findall(r"--[a-z-]+", line)) - bracketed, bracketed)
    return lines


def test_readme_synopsis_is_the_parser() -> None:
    """Every command is listed; every option it lists exists; every option it leaves out
    is one the text after it names (--json, and the AWS options)."""
    listed = synopsis(blocks("README.md")[2], "cmek")
    commands = dict(leaves(build_parser()))
    assert set(listed) == set(commands)
    text = (ROOT / "README.md").read_text()
    aws = {"--endpoint-url", "--region", "--profile"}
    for command, (plain, bracketed) in listed.items():
        parser = commands[command]
        options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        required = {a.option_strings[-1] for a in parser._actions
                    if a.required and a.option_strings}
        assert (plain | bracketed) <= options, command
        assert required <= plain, command
        left_out = options - plain - bracketed - {"--help"}
        assert "--json" in options, command
        assert left_out <= {"--json"} | (aws if command[0] in ("key", "usage") else set()), (
            command, left_out)
    assert "Every command takes `--json`" in text
    for option in aws:
        assert f"`{option}`" in text


def test_kmslocal_synopsis_is_the_parser() -> None:
    from kmslocal.cli import build_parser as kmslocal_parser

    text = blocks("docs/kmslocal.md")[0]
    listed = synopsis(text, "kmslocal")
    serve = dict(leaves(kmslocal_parser()))[("serve",)]
    options = {s for a in serve._actions for s in a.option_strings if s.startswith("--")}
    plain, bracketed = listed[("serve",)]
    assert plain | bracketed == options - {"--help"}
    for line in text.splitlines():
        if line.startswith(("kmslocal --version", "kmslocal --help")):
            run = subprocess.run([sys.executable, "-m", "kmslocal.cli", line.split()[1]],
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0
    version = subprocess.run([sys.executable, "-m", "kmslocal.cli", "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    assert re.fullmatch(r"kmslocal \S+\n", version)


# --- docs/config.md -----------------------------------------------------------------------
def test_config_error_examples_are_what_the_platform_says(tmp_path: Path) -> None:
    expected = blocks("docs/config.md")[0].splitlines()
    toml_file = tmp_path / "cmek.toml"
    toml_file.write_text("outage_grace = -3\n")
    said = []
    for config_file, env in ((None, {"CMEK_OUTAGE_GRACE": "abc"}), (toml_file, {}),
                             (None, {"CMEK_RESTORE_WINDOW": "3600"})):
        with pytest.raises(ConfigError) as info:
            load_settings(config_file, env=env)
        said.append(str(info.value).replace(str(toml_file), "/etc/cmek/cmek.toml"))
    assert said == expected


def test_config_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "cmek.toml"
    path.write_text(blocks("docs/config.md")[1])
    settings = load_settings(path, env={"CMEK_INTEGRITY_KEY": "k" * 32})  # as it advises
    assert settings.object_store == "s3://acme-cmek-objects/platform"
    assert settings.restore_window == 2592000


# --- docs/kmslocal.md -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def kms(dev_kms: KmsLocal) -> KmsLocal:
    return dev_kms


def test_kmslocal_python_example_runs(kms: KmsLocal, tmp_path: Path) -> None:
    code = blocks("docs/kmslocal.md", "python")[0]
    assert '"http://127.0.0.1:4599"' in code  # the default address, here a free port
    script = tmp_path / "example.py"
    script.write_text(code.replace('"http://127.0.0.1:4599"', repr(kms.url)) +
                      "\nprint(key)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("arn:aws:kms:us-west-2:222222222222:key/")


def test_kmslocal_config_example_loads(tmp_path: Path) -> None:
    from kmslocal.config import load

    path = tmp_path / "kmslocal.toml"
    path.write_text(blocks("docs/kmslocal.md", "toml")[0])
    config = load(path)
    assert [p.principal_arn for p in config.principals] == [
        "arn:aws:iam::111122223333:role/cmek-platform"]
    assert config.event_targets[0].url == "http://127.0.0.1:8000/v1/tenants/acme/key-events"


# --- docs/api.md ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`make run`'s stack (kmslocal, the platform, tenant demo with its sample data), on
    free ports."""
    with running_demo(tmp_path_factory.mktemp("run"), verbose=False) as demo:
        yield demo


def routes(openapi: dict[str, object]) -> dict[tuple[str, str], str]:
    paths = openapi["paths"]
    assert isinstance(paths, dict)
    return {(method.upper(), path): next(code for code in op["responses"]
                                         if code.startswith("2"))
            for path, ops in paths.items() for method, op in ops.items()}


def test_the_api_table_is_the_openapi_document(stack: Demo) -> None:
    url = stack.url
    served = routes(httpx.get(f"{url}/openapi.json", timeout=30, trust_env=False).json())
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    table = text[text.index("## Endpoints"):text.index("## Examples")]
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) (\S+)` \| [^|]+ \| (\d{3}) \|", table, re.M)
    documented = {(method, path): status for method, path, status in rows}
    assert len(rows) == len(documented), "a route is listed twice"
    assert documented == served


def test_api_examples_run(stack: Demo, tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + blocks("docs/api.md", "sh")[0]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "CMEK_URL": stack.url, "CMEK_OPERATOR_TOKEN": stack.operator_token}
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                         env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    answers = []
    decoder, rest = json.JSONDecoder(), run.stdout.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        answers.append(value)
        rest = rest[end:].strip()
    health, key, checked, hits, result, refusal = answers
    assert health == {"status": "ok"}
    assert key["state"] == checked["state"] == "active"
    assert "revenue-by-region" in {h["id"] for h in hits["hits"]}
    assert result["columns"] == ["region", "customers"]
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    shown = re.search(r"answers 404 with\n`(\{.*?\})`", text, re.S)
    assert shown is not None
    assert refusal == json.loads(shown.group(1).replace("\n", " "))
    missing = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                             timeout=120, env={**env, "CMEK_OPERATOR_TOKEN": ""})
    assert missing.returncode != 0
    assert "the operator token make run printed" in missing.stderr


# --- names ----------------------------------------------------------------------------------
def test_documented_variables_exist() -> None:
    """Each CMEK_*, KMSLOCAL_* variable the docs name is one the code reads."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    source += (ROOT / ".ci" / "run").read_text() + (ROOT / "Makefile").read_text()
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("*.py"))
    for doc in DOCS:
        for var in set(re.findall(r"\b((?:CMEK|KMSLOCAL)_[A-Z0-9_]+)\b", doc.read_text())):
            assert var in source or (var.startswith("CMEK_TEST_") and var in tests) or (
                var.startswith("CMEK_CONFORMANCE_") and var in tests), (doc.name, var)
