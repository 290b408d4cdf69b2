"""PostgreSQL for tests: the server named by CMEK_TEST_POSTGRES_URL, else a throwaway
cluster started from the local PostgreSQL binaries (as an unprivileged user, since
PostgreSQL refuses root), else the tests that need it skip and say why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@contextmanager
def throwaway_cluster(*, tls: tuple[Path, Path] | None = None,
                      password: str | None = None) -> Iterator[str | None]:
    """Yields an admin URL, or None with no local PostgreSQL binaries. ``tls``: the
    server's certificate and key files, to speak TLS; ``password``: TCP logins need it,
    as SCRAM (the socket stays trusted, for setting it)."""
    bindir = _binaries()
    if bindir is None:
        yield None
        return
    workdir = tempfile.mkdtemp(prefix="cmek-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            user, entry = "nobody", pwd.getpwnam("nobody")
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    datadir = os.path.join(workdir, "data")
    port = _free_port()
    auth = ["--auth-local=trust", "--auth-host=scram-sha-256"] if password else ["--auth=trust"]
    subprocess.run([*run_as, f"{bindir}/initdb", "-D", datadir, "-U", "postgres", *auth,
                    "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    if tls is not None:
        for source, name in zip(tls, ("server.crt", "server.key"), strict=True):
            target = os.path.join(workdir, name)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            if run_as:
                os.chown(target, os.stat(workdir).st_uid, os.stat(workdir).st_gid)
        options += (f" -c ssl=on -c ssl_cert_file={workdir}/server.crt"
                    f" -c ssl_key_file={workdir}/server.key")
    subprocess.run(
        [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{workdir}/log", "-o",
         options, "start"],
        check=True, capture_output=True,
    )
    login = "postgres"
    if password:
        with psycopg.connect(host=workdir, port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(password))
        login = f"postgres:{password}"
    try:
        yield f"postgresql://{login}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(admin_url: str) -> str:
    name = f"cmek_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
