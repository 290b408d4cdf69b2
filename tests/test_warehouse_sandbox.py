"""Tenant SQL in query processes of its own: confined, bounded, and never a way to the host.

Everything here runs through the real :class:`QueryRunner` (real processes, real DuckDB,
real or fake PostgreSQL servers on loopback). The fake server stands in for an attacker's
server: the tests show what a tenant's connection would hand it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest

from cmek.errors import CmekError
from cmek.platform.warehouse import EgressPolicy, QueryLimits, QueryRunner, Target, Warehouses
from cmek.platform.warehouse.engines import execute
from tests.fake_pg import Authority, FakePostgres, server_context
from tests.pg import throwaway_cluster

PASSWORD = "Warehouse-Pw-7d1c9a"
LOOPBACK = EgressPolicy.parse(["127.0.0.1/32"])  # the operator allows the test servers


def code_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(CmekError) as info:
        call()
    assert "\n" not in str(info.value)
    return info.value.code


@pytest.fixture
def area(tmp_path: Path) -> Path:
    root = tmp_path / "warehouses"
    (root / "acme").mkdir(parents=True)
    with duckdb.connect(str(root / "acme" / "wh.duckdb")) as db:
        db.execute("create table sales as select i as id from range(100) r(i)")
    return root


@pytest.fixture
def runner() -> Iterator[QueryRunner]:
    r = QueryRunner(QueryLimits(wall_seconds=3, cpu_seconds=1, memory_bytes=256 << 20,
                                max_result_bytes=64 * 1024), max_running=3, per_tenant=2)
    yield r
    r.close()


def duck(runner: QueryRunner, area: Path, sql: str, tenant: str = "acme") -> list[list[object]]:
    return Warehouses(area, LOOPBACK, runner).query(
        tenant, "duckdb", {"path": "wh.duckdb"}, {}, sql).rows


def pg_target(port: int, **extra: str) -> Target:
    fields = {"host": "localhost", "hostaddr": "127.0.0.1", "port": port,
              "database": "wh", "user": "reader", "password": PASSWORD, **extra}
    return Target("postgres", **fields)  # type: ignore[arg-type]


def test_a_query_runs_in_a_process_with_nothing_of_the_platform(
        runner: QueryRunner, area: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = {"CMEK_OPERATOR_TOKEN": "planted-operator-token-1",
               "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-2", "PGPASSWORD": "planted-pg-3",
               "PGHOST": "10.0.0.1", "PYTHONPATH": "/planted"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    assert duck(runner, area, "select count(*) from sales") == [[100]]
    deadline = time.monotonic() + 60
    while not (pids := runner.spare_pids()):  # the spare for the next query, once ready
        assert time.monotonic() < deadline, "no spare query process became ready"
        time.sleep(0.02)  # it is being started in the background
    assert os.getpid() not in pids
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        for value in planted.values():
            assert value.encode() not in environ
        assert fds <= {0, 1, 2}
        home = dict(e.split(b"=", 1) for e in environ.split(b"\0") if b"=" in e)[b"HOME"]
        assert Path(home.decode()).is_dir()
        assert not any(Path(home.decode()).iterdir())


def test_cpu_memory_and_answer_size_are_bounded(runner: QueryRunner, area: Path) -> None:
    started = time.monotonic()
    assert code_of(lambda: duck(runner, area, "select sum(i * i) from range(100000000000) r(i)")
                   ) == "query_resources_exceeded"
    assert time.monotonic() - started < 10
    assert code_of(lambda: duck(runner, area, "select list(i) from range(500000000) r(i)")
                   ) == "query_resources_exceeded"
    assert code_of(lambda: duck(runner, area, "select repeat('x', 5000000)")
                   ) == "query_result_too_large"
    assert code_of(lambda: duck(runner, area, "select i from range(100000) r(i)")
                   ) == "query_result_too_large"
    assert duck(runner, area, "select count(*) from sales") == [[100]]  # still serving


def test_a_query_that_never_answers_is_killed_at_its_deadline(runner: QueryRunner) -> None:
    hung = FakePostgres(auth="trust")  # lets the client in, then never answers
    try:
        started = time.monotonic()
        assert code_of(lambda: runner.run("acme", pg_target(hung.port, sslmode="disable"),
                                          "select 1")) == "query_timeout"
        assert time.monotonic() - started < 3 + 2 + 3
        assert hung.connections == 1
    finally:
        hung.close()


def test_one_tenants_queries_never_starve_another(runner: QueryRunner, area: Path) -> None:
    hung = FakePostgres(auth="trust")
    outcomes: list[str] = []

    def stuck() -> None:
        outcomes.append(code_of(lambda: runner.run(
            "greedy", pg_target(hung.port, sslmode="disable"), "select 1")))

    threads = [threading.Thread(target=stuck) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while runner.running("greedy") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)  # both queries of the greedy tenant are under way
        assert code_of(lambda: runner.run("greedy", pg_target(hung.port, sslmode="disable"),
                                          "select 1")) == "too_many_queries"
        assert duck(runner, area, "select count(*) from sales") == [[100]]
    finally:
        for t in threads:
            t.join()
        hung.close()
    assert outcomes == ["query_timeout", "query_timeout"]


def test_files_outside_the_tenants_folder_do_not_exist_for_it(
        runner: QueryRunner, area: Path, tmp_path: Path) -> None:
    """Another tenant's file, a link out of the folder and the platform's own files all
    answer as absent, the same way: no oracle on what exists."""
    (area / "other").mkdir()
    with duckdb.connect(str(area / "other" / "theirs.duckdb")) as db:
        db.execute("create table secret as select 'other tenant' as v")
    (area / "acme" / "link.duckdb").symlink_to(area / "other" / "theirs.duckdb")
    (area / "acme" / "etc").symlink_to("/etc")
    warehouses = Warehouses(area, LOOPBACK, runner)
    messages = set()
    for path in ("link.duckdb", "etc/passwd", "missing.duckdb", "etc"):
        with pytest.raises(CmekError) as info:
            warehouses.query("acme", "duckdb", {"path": path}, {}, "select 1")
        assert info.value.code == "invalid_connection"
        messages.add(str(info.value))
    assert len(messages) == 1


# --- TLS and the password -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.new()


@pytest.fixture(scope="module")
def certs(ca: Authority, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    ca.issue(folder, "localhost")
    ca.issue(folder, "elsewhere.test")
    return folder


@pytest.mark.parametrize(("server", "mode", "trust", "code"), [
    ("plain", "verify-full", "system", "warehouse_tls_failed"),  # the default, no TLS
    ("plain", "verify-full", "ca", "warehouse_tls_failed"),
    ("plain", "require", "", "warehouse_tls_failed"),
    ("tls-other-ca", "verify-full", "ca", "warehouse_tls_failed"),
    ("tls-wrong-name", "verify-full", "ca", "warehouse_tls_failed"),
    ("tls-wrong-name", "verify-ca", "ca", "warehouse_auth_failed"),
    ("tls", "verify-full", "ca", "warehouse_auth_failed"),  # verified; then asks in clear
    ("tls", "require", "", "warehouse_auth_failed"),
    ("plain", "disable", "", "warehouse_auth_failed"),
    ("plain-md5", "disable", "", "warehouse_auth_failed"),
])
def test_a_fake_server_never_receives_the_password(
        runner: QueryRunner, ca: Authority, certs: Path, server: str, mode: str, trust: str,
        code: str) -> None:
    """Whatever the mode, an attacker's server asking for the password gets nothing: the
    default refuses it before authentication, and no mode answers a request for the
    password in clear or as md5."""
    tls = None
    if server.startswith("tls"):
        issuer = Authority.new("attacker CA") if server == "tls-other-ca" else ca
        name = "elsewhere.test" if server == "tls-wrong-name" else "localhost"
        folder = certs if issuer is ca else certs / "other"
        if issuer is not ca:
            issuer.issue(folder, name)
        tls = server_context(folder / f"{name}.crt", folder / f"{name}.key")
    fake = FakePostgres(auth="md5" if server == "plain-md5" else "cleartext", tls=tls)
    try:
        extra = {"sslmode": mode}
        if trust == "ca":
            extra["ca_pem"] = ca.pem
        assert code_of(lambda: runner.run("acme", pg_target(fake.port, **extra),
                                          "select 1")) == code
        assert fake.connections >= 1
        assert not fake.got(PASSWORD)
    finally:
        fake.close()


@pytest.fixture(scope="module")
def tls_postgres(ca: Authority, certs: Path) -> Iterator[int]:
    with throwaway_cluster(tls=(certs / "localhost.crt", certs / "localhost.key"),
                           password=PASSWORD) as url:
        if url is None:
            pytest.skip("no local PostgreSQL binaries to start a TLS server")
        yield int(urlsplit(url).port or 5432)


def test_verify_full_with_a_ca_bundle_reaches_a_real_server(
        runner: QueryRunner, ca: Authority, tls_postgres: int) -> None:
    target = pg_target(tls_postgres, database="postgres", user="postgres",
                       sslmode="verify-full", ca_pem=ca.pem)
    result = runner.run("acme", target, "select ssl from pg_stat_ssl where pid = "
                        "pg_backend_pid()")
    assert result.rows == [[True]]
    # and the same server under a name its certificate does not carry is refused
    wrong = pg_target(tls_postgres, host="127.0.0.1", database="postgres", user="postgres",
                      sslmode="verify-full", ca_pem=ca.pem)
    assert code_of(lambda: execute(wrong, "select 1", QueryLimits())) == "warehouse_tls_failed"
