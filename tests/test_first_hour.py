"""The first hour of the customer's engineer and of the provider's operator, through the
real entry points: the ``cmek`` command as a process, the platform over HTTP.

Each test is one friction a new user met: a tool that gave a wrong verdict, an error
that did not say what to fix, a command that did not behave like its neighbours. The
agreement of ``policy lint`` and ``key verify`` is in test_policy_agreement.py, ``make
run`` beside ``cmek demo`` in test_make_run.py, the demo's clean-up in test_demo.py, the
operator's countdowns in test_web.py, the docs in test_docs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal, free_port
from tests.platform_harness import (
    PROVIDER_ACCOUNT,
    PlatformProcess,
    customer_key,
    kms_client,
    wait_until,
)

CUSTOMER_ACCOUNT = "222222222222"


@pytest.fixture(scope="module")
def kms(dev_kms: KmsLocal) -> KmsLocal:
    return dev_kms


def cmek(*args: str, who: tuple[str, str, str] | None = PROVIDER, stdin: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
            "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    if who is not None:
        base |= {"AWS_ACCESS_KEY_ID": who[1], "AWS_SECRET_ACCESS_KEY": who[2]}
    return subprocess.run([sys.executable, "-m", "cmek.cli", *args], capture_output=True,
                          text=True, timeout=120, env=base | (env or {}), input=stdin)


def refused(run: subprocess.CompletedProcess[str], code: str, status: int) -> str:
    """The one stderr line of a refusal, checked for its code and exit status."""
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"cmek: {code}: "), lines[0]
    assert run.returncode == status, (run.returncode, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def key(kms: KmsLocal) -> str:
    """A key made as the onboarding guide makes it: by the customer, for tenant acme."""
    run = cmek("key", "create", "--provider-account", PROVIDER_ACCOUNT, "--tenant", "acme",
               "--endpoint-url", kms.url, "--json", who=CUSTOMER)
    assert run.returncode == 0, run.stderr
    return str(json.loads(run.stdout)["key_arn"])


def verify(kms: KmsLocal, arn: str, *extra: str,
           who: tuple[str, str, str] = PROVIDER) -> subprocess.CompletedProcess[str]:
    return cmek("key", "verify", "--key-arn", arn, "--endpoint-url", kms.url, *extra, who=who)


# --- key verify establishes who calls -----------------------------------------------------
def test_verify_with_the_customers_own_credentials_fails(kms: KmsLocal, key: str) -> None:
    run = verify(kms, key, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT,
                 "--json", who=CUSTOMER)
    assert run.returncode == 1, run.stdout
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert not checks["caller"]["ok"]
    assert CUSTOMER_ACCOUNT in checks["caller"]["detail"]
    assert "provider" in checks["caller"]["fix"]


def test_verify_as_another_account_than_the_one_named_fails(kms: KmsLocal, key: str) -> None:
    run = verify(kms, key, "--tenant", "acme", "--provider-account", "999999999999")
    assert run.returncode == 1, run.stdout
    assert "FAIL caller" in run.stdout
    assert "key NOT usable by the provider" in run.stdout


def test_verify_as_the_provider_passes(kms: KmsLocal, key: str) -> None:
    run = verify(kms, key, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT)
    assert run.returncode == 0, run.stdout
    assert "ok   caller: " in run.stdout
    assert run.stdout.strip().endswith("key verified")


@pytest.mark.parametrize("account", ["12345", "1111111111111", "abcdefghijkl"])
def test_verify_refuses_a_malformed_account_id(kms: KmsLocal, key: str, account: str) -> None:
    refused(verify(kms, key, "--tenant", "acme", "--provider-account", account),
            "invalid_account", 2)


def test_verify_needs_the_provider_account(kms: KmsLocal, key: str) -> None:
    line = refused(verify(kms, key, "--tenant", "acme"), "invalid_input", 2)
    assert "--provider-account" in line
    assert "CMEK_PROVIDER_ACCOUNT" in line
    ok = cmek("key", "verify", "--key-arn", key, "--endpoint-url", kms.url, "--tenant", "acme",
              env={"CMEK_PROVIDER_ACCOUNT": PROVIDER_ACCOUNT})
    assert ok.returncode == 0, ok.stdout


def test_verify_without_tenant_says_so(kms: KmsLocal, key: str) -> None:
    run = verify(kms, key, "--provider-account", PROVIDER_ACCOUNT)
    assert run.returncode == 1  # the policy is restricted to tenant acme
    assert "--tenant" in run.stdout
    assert 'tenant "verify"' in run.stdout


def test_checks_not_run_say_skip(kms: KmsLocal) -> None:
    missing = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    run = verify(kms, missing, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT)
    assert run.returncode == 1
    assert "FAIL reachable" in run.stdout
    assert "SKIP generate_data_key" in run.stdout
    assert not [line for line in run.stdout.splitlines()
                if line.startswith("FAIL") and "skipped" in line]


# --- credentials and endpoints: one line that says what to do -----------------------------
def test_verify_with_bad_credentials_is_one_line(kms: KmsLocal, key: str) -> None:
    bad = (PROVIDER[0], PROVIDER[1], "not-the-secret")
    run = verify(kms, key, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT, who=bad)
    line = refused(run, "credentials_invalid", 1)
    assert run.stdout == ""
    assert "--profile" in line
    assert "contact the provider" not in line


def test_verify_with_no_credentials_says_how_to_give_them(kms: KmsLocal, key: str) -> None:
    run = cmek("key", "verify", "--key-arn", key, "--endpoint-url", kms.url,
               "--provider-account", PROVIDER_ACCOUNT, who=None)
    line = refused(run, "credentials_invalid", 1)
    assert "--profile" in line
    assert "AWS_ACCESS_KEY_ID" in line


def test_an_unreachable_endpoint_is_named(key: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["key", "verify", "--key-arn", key, "--provider-account", PROVIDER_ACCOUNT],
                 ["key", "create", "--provider-account", PROVIDER_ACCOUNT],
                 ["usage", "--key-arn", key]):
        run = cmek(*args, "--endpoint-url", dead, who=CUSTOMER)
        line = refused(run, "endpoint_unreachable", 1)
        assert dead in line
        assert "--endpoint-url" in line


def test_a_wrong_region_is_not_called_bad_credentials(kms: KmsLocal, key: str) -> None:
    run = verify(kms, key, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT,
                 "--region", "eu-west-1")
    line = refused(run, "credentials_invalid", 1)
    assert "eu-west-1" in line
    assert "--region" in line


def test_an_endpoint_without_scheme_is_a_usage_error(kms: KmsLocal, key: str) -> None:
    bare = kms.url.removeprefix("http://")
    line = refused(cmek("key", "verify", "--key-arn", key, "--provider-account",
                        PROVIDER_ACCOUNT, "--endpoint-url", bare), "invalid_input", 2)
    assert "http://" in line
    line = refused(cmek("key", "verify", "--key-arn", key, "--provider-account",
                        PROVIDER_ACCOUNT, env={"CMEK_KMS_ENDPOINT_URL": bare}),
                   "invalid_input", 2)
    assert "CMEK_KMS_ENDPOINT_URL" in line


# --- the same mistake, the same code and status in every command --------------------------
@pytest.mark.parametrize("command", [
    ["key", "verify", "--provider-account", PROVIDER_ACCOUNT, "--key-arn"],
    ["usage", "--key-arn"],
])
@pytest.mark.parametrize("arn", ["alias/acme", "not-an-arn",
                                 "arn:aws:kms:us-west-2:222222222222:alias/acme"])
def test_a_key_that_is_not_a_key_arn(command: list[str], arn: str) -> None:
    refused(cmek(*command, arn), "invalid_input", 2)


@pytest.mark.parametrize("command", [["policy", "merge"], ["policy", "lint"]])
def test_files_that_are_missing_or_not_json(command: list[str], tmp_path: Path) -> None:
    args = ["--provider-account", PROVIDER_ACCOUNT]
    refused(cmek(*command, str(tmp_path / "nope.json"), *args), "file_unreadable", 2)
    (tmp_path / "bad.json").write_text("{not json")
    run = cmek(*command, str(tmp_path / "bad.json"), *args, "--json")
    assert run.returncode == 2
    assert "not_json" in run.stdout + run.stderr


@pytest.mark.parametrize("since", ["yesterday", "0h", "-1d", "99999d"])
def test_a_bad_since(since: str, key: str) -> None:
    refused(cmek("usage", "--key-arn", key, "--since", since), "invalid_input", 2)


def test_lint_reads_standard_input() -> None:
    policy = cmek("policy", "render", "--provider-account", PROVIDER_ACCOUNT,
                  "--owner-account", CUSTOMER_ACCOUNT, "--tenant", "acme").stdout
    run = cmek("policy", "lint", "-", "--provider-account", PROVIDER_ACCOUNT,
               "--owner-account", CUSTOMER_ACCOUNT, "--tenant", "acme", stdin=policy)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith("standard input: correct")


def test_the_provider_account_cannot_be_the_owners(kms: KmsLocal) -> None:
    line = refused(cmek("key", "create", "--provider-account", CUSTOMER_ACCOUNT,
                        "--endpoint-url", kms.url, who=CUSTOMER), "invalid_input", 2)
    assert "provider account" in line
    refused(cmek("policy", "render", "--provider-account", CUSTOMER_ACCOUNT,
                 "--owner-account", CUSTOMER_ACCOUNT), "invalid_account", 2)


@pytest.mark.parametrize("command", [
    ["policy", "render", "--provider-account", PROVIDER_ACCOUNT],
    ["key", "create", "--provider-account", PROVIDER_ACCOUNT],
])
def test_an_invalid_tenant_id_is_refused(command: list[str]) -> None:
    line = refused(cmek(*command, "--tenant", "Acme Corp!"), "invalid_input", 2)
    assert "tenant id" in line


# --- --json everywhere, failures too ------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["policy", "render", "--provider-account", "12345", "--json"],
    ["policy", "merge", "/nonexistent.json", "--provider-account", PROVIDER_ACCOUNT, "--json"],
    ["policy", "lint", "/nonexistent.json", "--provider-account", PROVIDER_ACCOUNT, "--json"],
    ["key", "verify", "--key-arn", "nope", "--provider-account", PROVIDER_ACCOUNT, "--json"],
    ["usage", "--key-arn", "nope", "--json"],
    ["audit", "verify", "--tenant", "acme", "--database-url", "sqlite:////nonexistent.db",
     "--json"],
    ["audit", "export", "--tenant", "acme", "--database-url", "sqlite:////nonexistent.db",
     "--json"],
    ["serve", "--port", "70000", "--json"],
    ["policy", "render", "--no-such-option", "--json"],
])
def test_json_failures_are_json_objects(args: list[str]) -> None:
    run = cmek(*args)
    assert run.returncode == 2, run.stderr
    failure = json.loads(run.stdout)
    assert set(failure) == {"error", "message"}
    assert run.stderr.strip() == f"cmek: {failure['error']}: {failure['message']}"


def test_render_and_merge_accept_json(tmp_path: Path) -> None:
    rendered = cmek("policy", "render", "--provider-account", PROVIDER_ACCOUNT, "--json")
    assert rendered.returncode == 0
    (tmp_path / "p.json").write_text(rendered.stdout)
    merged = cmek("policy", "merge", str(tmp_path / "p.json"), "--provider-account",
                  PROVIDER_ACCOUNT, "--json")
    assert json.loads(merged.stdout) == json.loads(rendered.stdout)


# --- usage --------------------------------------------------------------------------------
def test_usage_json_times_are_iso(kms: KmsLocal, key: str) -> None:
    verify(kms, key, "--tenant", "acme", "--provider-account", PROVIDER_ACCOUNT)
    run = cmek("usage", "--key-arn", key, "--since", "1h", "--endpoint-url", kms.url, "--json",
               who=CUSTOMER)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    for field in ("since", "until", "first_use", "last_use"):
        assert isinstance(report[field], str), field
        assert report[field].endswith("Z"), report[field]
    assert report["since"][:4] == report["until"][:4]


def test_usage_of_an_unknown_key_is_an_error(kms: KmsLocal, key: str) -> None:
    unknown = key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    line = refused(cmek("usage", "--key-arn", unknown, "--endpoint-url", kms.url,
                        who=CUSTOMER), "usage_lookup_failed", 1)
    assert "key ARN" in line


# --- audit ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def platform(kms: KmsLocal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        PlatformProcess]:
    server = PlatformProcess(tmp_path_factory.mktemp("platform"), kms)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenant(platform: PlatformProcess, kms: KmsLocal) -> str:
    return platform.new_tenant(kms)


def test_audit_of_an_unknown_tenant_is_an_error(platform: PlatformProcess, tenant: str) -> None:
    db = f"sqlite:///{platform.data_dir / 'control.sqlite3'}"
    line = refused(cmek("audit", "verify", "--tenant", "nosuchtenant", "--database-url", db),
                   "unknown_tenant", 1)
    assert "nosuchtenant" in line
    run = cmek("audit", "verify", "--tenant", tenant, "--database-url", db, "--json")
    assert run.returncode == 0
    assert json.loads(run.stdout)["ok"] is True


def test_audit_export_into_a_closed_pipe(tmp_path: Path) -> None:
    from cmek.audit import AuditTrail
    from cmek.clock import ManualClock
    from cmek.db import create_engine

    db = f"sqlite:///{tmp_path / 'control.sqlite3'}"
    trail = AuditTrail(create_engine(db), ManualClock())
    for n in range(600):  # more than a pipe holds, so the writer meets the closed end
        trail.append("acme", "object_saved", {"n": n, "pad": "x" * 200})
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    export = subprocess.Popen(  # cmek audit export ... | head -1
        [sys.executable, "-m", "cmek.cli", "audit", "export", "--tenant", "acme",
         "--database-url", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert export.stdout is not None
    head = subprocess.run(["head", "-1"], stdin=export.stdout, capture_output=True, text=True,
                          timeout=60)
    export.stdout.close()  # head is the only reader left: when it exits, the pipe closes
    assert export.wait(timeout=60) == 0
    assert json.loads(head.stdout)["tenant"] == "acme"
    assert export.stderr is not None
    assert export.stderr.read() == b""
    export.stderr.close()


def test_audit_with_a_database_that_does_not_answer() -> None:
    url = f"postgresql://cmek:secret-pw@127.0.0.1:{free_port()}/cmek"
    line = refused(cmek("audit", "verify", "--tenant", "acme", "--database-url", url),
                   "store_unreachable", 1)
    assert "--database-url" in line
    assert "secret-pw" not in line
    assert "sqlalche.me" not in line


# --- the platform: start-up, health, logs --------------------------------------------------
def serve(data_dir: Path, kms: KmsLocal, *args: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cmek serve`` that is expected to refuse to start (it would otherwise run on)."""
    process = PlatformProcess(data_dir, kms, extra_env=env or {})
    return subprocess.run([sys.executable, "-m", "cmek.cli", "serve", *args],
                          capture_output=True, text=True, timeout=60, env=process.env())


def test_serve_with_a_database_that_does_not_answer(kms: KmsLocal, tmp_path: Path) -> None:
    for url in (f"postgresql://cmek:secret-pw@127.0.0.1:{free_port()}/cmek",
                f"postgres://cmek:secret-pw@127.0.0.1:{free_port()}/cmek"):
        line = refused(serve(tmp_path, kms, "--port", "0", env={"CMEK_DATABASE_URL": url}),
                       "store_unreachable", 1)
        assert "CMEK_DATABASE_URL" in line
        assert "secret-pw" not in line
        assert "sqlalche.me" not in line


def test_serve_accepts_a_postgres_url(kms: KmsLocal, tmp_path: Path, pg_url: str) -> None:
    server = PlatformProcess(tmp_path, kms, extra_env={
        "CMEK_DATABASE_URL": pg_url.replace("postgresql://", "postgres://", 1)})
    server.start()
    try:
        with server.client() as c:
            assert c.get("/healthz").json() == {"status": "ok"}
    finally:
        server.stop()


def test_serve_with_a_bad_data_dir(kms: KmsLocal, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    line = refused(serve(tmp_path, kms, "--port", "0",
                         env={"CMEK_DATA_DIR": str(tmp_path / "a-file" / "data")}),
                   "config_invalid", 2)
    assert "CMEK_DATA_DIR" in line


def test_serve_with_a_bad_port(kms: KmsLocal, tmp_path: Path) -> None:
    line = refused(serve(tmp_path, kms, "--port", "70000"), "config_invalid", 2)
    assert "--port" in line
    assert "CMEK_PORT" not in line
    line = refused(serve(tmp_path, kms, env={"CMEK_PORT": "70000"}), "config_invalid", 2)
    assert "CMEK_PORT" in line


def test_serve_on_a_port_in_use(kms: KmsLocal, platform: PlatformProcess,
                                tmp_path: Path) -> None:
    port = platform.url.rsplit(":", 1)[1]
    line = refused(serve(tmp_path, kms, "--port", port), "startup_failed", 1)
    assert "--port" in line


def test_durations_read_as_durations(kms: KmsLocal, tmp_path: Path) -> None:
    line = refused(serve(tmp_path, kms, "--port", "0", env={
        "CMEK_RESTORE_WINDOW": "30d", "CMEK_LIVE_STORE_GRACE": "31d"}), "config_invalid", 2)
    assert "30 d" in line or "30d" in line, line
    assert "e+" not in line


def log_shows(process: PlatformProcess, *lines: str, since: int = 0) -> str:
    """The process's output once it shows every one of ``lines``: a thread reads it from
    the process's pipe, so a line the process wrote may arrive a moment later."""
    def shown() -> str | None:
        text = "".join(process.output[since:])
        return text if all(line in text for line in lines) else None
    return str(wait_until(shown))


def test_serve_prints_a_start_up_summary(platform: PlatformProcess) -> None:
    facts = ("data dir:", "control plane: sqlite:///", "object store: file://",
             "kms: http://127.0.0.1", "operator api: open")
    log_shows(platform, *facts)
    head = "".join(platform.output[:12])
    for fact in facts:
        assert fact in head, head
    assert "test-operator-token" not in "".join(platform.output)


def test_serve_json_prints_the_summary_as_json(kms: KmsLocal, tmp_path: Path) -> None:
    process = PlatformProcess(tmp_path, kms)
    proc = subprocess.Popen([sys.executable, "-m", "cmek.cli", "serve", "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=process.env())
    try:
        assert proc.stdout is not None
        facts = json.loads(proc.stdout.readline())
        assert facts["listening"].startswith("http://127.0.0.1:")
        assert facts["object_store"] == f"file://{tmp_path}/objects"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_lock_and_restore_are_logged(platform: PlatformProcess, kms: KmsLocal) -> None:
    arn = customer_key(kms)
    name = "loggedtenant"
    platform.provision(name, arn)
    client = kms_client(kms)
    start = len(platform.output)
    client.disable_key(KeyId=arn)
    with platform.operator() as op:
        op.post(f"/v1/tenants/{name}/key/check")  # as an event would: check now
        wait_until(lambda: op.get(f"/v1/tenants/{name}").json()["key"]["state"] == "locked")
        client.enable_key(KeyId=arn)
        op.post(f"/v1/tenants/{name}/key/check")
        wait_until(lambda: op.get(f"/v1/tenants/{name}").json()["key"]["state"] == "active")
    log_shows(platform, f"tenant {name}: key active -> locked",
              f"tenant {name}: key restoring -> active", since=start)


def test_a_bad_json_body_says_what_to_fix(platform: PlatformProcess) -> None:
    with platform.operator() as op:
        r = op.post("/v1/tenants", content=b'{"tenant_id": "x",}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_input"
    assert "not valid JSON" in body["message"]
    assert "character 18" in body["message"]


def test_healthz_and_every_5xx_are_logged_with_a_read_only_object_store(
        kms: KmsLocal, tmp_path: Path) -> None:
    """The object store turns read-only under a running platform: a write that the
    metadata store committed answers 200 (a retry would write twice), reads and search go
    on, /healthz says which store fails, and every 5xx is in the log with its code."""
    server = PlatformProcess(tmp_path / "data", kms)
    server.start()
    objects = tmp_path / "data" / "objects"
    try:
        tenant = server.new_tenant(kms)
        token = server.login(tenant)
        with read_only(objects), server.client(token) as c:
            put = c.put(f"/v1/tenants/{tenant}/objects/tables/orders",
                        json={"title": "Orders", "columns": ["amount"]})
            assert put.status_code == 200, put.text
            assert c.get(f"/v1/tenants/{tenant}/objects/tables/orders").json()["body"][
                "title"] == "Orders"
            search = c.get(f"/v1/tenants/{tenant}/search", params={"q": "orders"})
            assert search.status_code == 200, search.text
            assert [h["id"] for h in search.json()["hits"]] == ["orders"]
            health = c.get("/healthz")
            assert health.status_code == 503
            assert health.json() == {"status": "unavailable", "failing": ["object_store"]}
            backup = c.post(f"/v1/tenants/{tenant}/backups")
            assert backup.status_code == 503
            assert backup.json()["error"] == "object_store_unavailable"
        logged = log_shows(server, "health: the object store is failing",
                           "answered 503 object_store_unavailable")
        assert "Traceback" not in logged
    finally:
        server.stop()


def test_a_read_only_object_store_refuses_the_start(kms: KmsLocal, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    with read_only(objects):
        line = refused(serve(tmp_path, kms, "--port", "0"), "startup_failed", 1)
    assert "CMEK_OBJECT_STORE" in line


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """The folder and all below it read-only, even for root (whom modes do not stop)."""
    if os.geteuid() != 0:
        for path in (folder, *folder.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o222)
        try:
            yield
        finally:
            for path in (folder, *folder.rglob("*")):
                path.chmod(path.stat().st_mode | 0o200)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: cannot make a folder read-only")
    made = subprocess.run([chattr, "-R", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root and this file system has no immutable flag: "
                    f"{made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-R", "-i", str(folder)], check=True)


# --- help -----------------------------------------------------------------------------------
def test_every_option_has_help() -> None:
    from cmek.cli import build_parser

    def walk(parser: object, path: str) -> Iterator[tuple[str, object]]:
        import argparse

        assert isinstance(parser, argparse.ArgumentParser)
        for action in parser._actions:  # argparse has no public walk
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.option_strings or action.dest not in ("help",):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}", action

    missing = [name for name, action in walk(build_parser(), "cmek")
               if not getattr(action, "help", None)]
    assert missing == []


def test_kmslocal_help_and_version() -> None:
    run = subprocess.run([sys.executable, "-m", "kmslocal.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0
    assert "``" not in run.stdout
    assert "::" not in run.stdout
    version = subprocess.run([sys.executable, "-m", "kmslocal.cli", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0
    assert version.stdout.startswith("kmslocal ")

