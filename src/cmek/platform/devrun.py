"""``make run``: kmslocal and the platform together, with a demo tenant, in the foreground.

The demo goes through the same path as a real customer: the customer creates its key
with ``cmek key create``, the operator provisions the tenant (which verifies the key),
and sample data is loaded over the HTTP API. Ctrl-C stops both processes.

Ports and folder: ``KMSLOCAL_PORT`` (4599), ``CMEK_PORT`` (8000) and ``CMEK_RUN_DIR``
(``.run``). A second ``make run`` needs all three of its own: a port in use or a run folder
in use is refused before anything starts, saying which and how to choose another.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PORTS = (("KMSLOCAL_PORT", 4599), ("CMEK_PORT", 8000))
PROVIDER = ("AKIAKMSLOCALPROVIDER", "kmslocal-dev-provider-secret",
            "arn:aws:iam::111111111111:role/cmek-platform")
CUSTOMER = ("AKIAKMSLOCALCUSTOMER", "kmslocal-dev-customer-secret",
            "arn:aws:iam::222222222222:user/key-admin")
TENANT = "demo"
ADMIN = ("admin@demo.example", "demo admin password")
ANALYST = ("analyst@demo.example", "demo analyst password")


class StartFailed(Exception):
    """A step of starting the demo failed; the message says what the child said."""


def _start(cmd: list[str], env: dict[str, str], prefix: str, verbose: bool,
           procs: list[subprocess.Popen[str]]) -> str:
    """Start a server; its URL once it says so, else its own last words as the error."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    procs.append(proc)
    assert proc.stdout is not None
    said: list[str] = []
    name = cmd[2].removesuffix(".cli")  # kmslocal, cmek
    for line in proc.stdout:
        if line.startswith(prefix):
            if verbose:
                print(f"[{name}] {line}", end="", flush=True)
            threading.Thread(target=_relay, args=(proc, name, verbose), daemon=True).start()
            return line.split()[-1]
        said.append(line.strip())
    last = next((line for line in reversed(said) if line), "no output")
    raise StartFailed(f"{cmd[2]} did not start: {last}")


def _relay(proc: subprocess.Popen[str], name: str, verbose: bool) -> None:
    """Pass a child's log lines through (or drop them), so its pipe never fills."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if verbose:
            print(f"[{name}] {line}", end="", flush=True)


def _kmslocal_config(path: Path) -> None:
    lines = ['region = "us-west-2"', ""]
    for akid, secret, arn in (PROVIDER, CUSTOMER):
        lines += ["[[principals]]", f'arn = "{arn}"', f'access_key_id = "{akid}"',
                  f'secret_access_key = "{secret}"', ""]
    path.write_text("\n".join(lines))


def _subscribe(url: str, kms_url: str, operator_token: str, key_arn: str) -> None:
    """The customer's side of key events: an EventBridge rule for its key and an API
    destination with the tenant's own secret (here, kmslocal's event target)."""
    with httpx.Client(timeout=30, trust_env=False) as c:
        r = c.post(f"{url}/v1/tenants/{TENANT}/key-events/credential",
                   headers={"Authorization": f"Bearer {operator_token}"})
        if r.status_code != 201:
            raise SystemExit(f"event credential: {r.status_code} {r.text}")
        credential = r.json()
        r = c.post(f"{kms_url}/_kmslocal/event-targets", json={
            "account": key_arn.split(":")[4], "resources": [key_arn],
            "url": url + credential["url_path"], "secret_header": credential["header"],
            "secret": credential["secret"]})
        if r.status_code != 200:
            raise SystemExit(f"kmslocal event target: {r.status_code} {r.text}")


def _warehouse(path: Path) -> None:
    import duckdb

    with duckdb.connect(str(path)) as db:
        db.execute("create table customers(customer_id integer, name varchar, region varchar)")
        db.execute("insert into customers values (1, 'Acme Corp', 'emea'), "
                   "(2, 'Globex', 'amer'), (3, 'Initech', 'amer'), (4, 'Umbrella', 'apac')")
        db.execute("create table orders(order_id integer, customer_id integer, "
                   "order_date date, amount_usd decimal(10, 2))")
        db.execute("insert into orders values (1, 1, '2026-09-01', 1200.00), "
                   "(2, 2, '2026-09-15', 830.50), (3, 3, '2026-10-02', 2400.00), "
                   "(4, 1, '2026-10-20', 310.25), (5, 4, '2026-11-05', 990.00)")


def load_sample_data(base: str, token: str, warehouse: Path) -> None:
    def check(r: httpx.Response) -> Any:
        if r.status_code >= 300:
            raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    t = f"/v1/tenants/{TENANT}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=30, trust_env=False) as c:
        check(c.post(f"{t}/users", json={"email": ANALYST[0], "password": ANALYST[1],
                                         "role": "analyst"}))
        check(c.put(f"{t}/connections/warehouse", json={
            "type": "duckdb", "config": {"path": warehouse.name}, "credentials": {}}))
        for name, cols, desc in (
            ("customers", ["customer_id", "name", "region"], "Every customer and its region"),
            ("orders", ["order_id", "customer_id", "order_date", "amount_usd"],
             "Orders with their amount in US dollars"),
        ):
            check(c.put(f"{t}/objects/tables/{name}", json={
                "title": name.title(), "description": desc, "connection": "warehouse",
                "columns": cols}))
        check(c.put(f"{t}/objects/models/sales", json={
            "title": "Sales model", "description": "Orders joined to customers",
            "tables": ["orders", "customers"], "columns": ["region", "amount_usd"]}))
        answers = {
            "revenue-by-region": (
                "Revenue by region",
                "select c.region, sum(o.amount_usd) as revenue_usd from orders o "
                "join customers c using (customer_id) group by 1 order by 2 desc"),
            "orders-by-month": ("Orders by month",
                                "select strftime(order_date, '%Y-%m') as month, count(*) as orders "
                                "from orders group by 1 order by 1"),
        }
        for answer_id, (title, sql) in answers.items():
            result = check(c.post(f"{t}/connections/warehouse/query", json={"sql": sql}))
            check(c.put(f"{t}/objects/answers/{answer_id}", json={
                "title": title, "connection": "warehouse", "sql": sql,
                "result_id": result["result_id"], "columns": result["columns"]}))
        check(c.put(f"{t}/objects/liveboards/overview", json={
            "title": "Sales overview", "description": "Revenue and order volume",
            "answers": list(answers)}))
        check(c.post(f"{t}/schedules", json={
            "name": "Daily revenue", "connection": "warehouse",
            "sql": answers["revenue-by-region"][1], "every_seconds": 86400}))


@dataclass
class Demo:
    url: str
    kms_url: str
    key_arn: str
    operator_token: str
    procs: tuple[subprocess.Popen[str], ...]


@contextlib.contextmanager
def running_demo(root: Path, *, verbose: bool = True, kms_port: int = 0,
                 platform_port: int = 0) -> Iterator[Demo]:
    """kmslocal and the platform with the demo tenant and its sample data; stops both.
    Port 0: a free one."""
    if root.exists():
        shutil.rmtree(root)  # each run starts from a fresh demo
    (root / "platform").mkdir(parents=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        yield _launch(root, verbose, kms_port, platform_port, procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _launch(root: Path, verbose: bool, kms_port: int, platform_port: int,
            procs: list[subprocess.Popen[str]]) -> Demo:
    operator_token = secrets.token_urlsafe(24)
    _kmslocal_config(root / "kmslocal.toml")
    bindir = str(Path(sys.executable).parent)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CMEK_"))}
    base_env |= {"PATH": f"{bindir}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                 "AWS_EC2_METADATA_DISABLED": "true"}
    kms_url = _start([sys.executable, "-m", "kmslocal.cli", "serve", "--dev", "--port",
                      str(kms_port), "--data-dir", str(root / "kmslocal"), "--config",
                      str(root / "kmslocal.toml")], base_env, "kmslocal listening on ",
                     verbose, procs)
    platform_env = base_env | {
        "CMEK_DATA_DIR": str(root / "platform"), "CMEK_KMS_ENDPOINT_URL": kms_url,
        "CMEK_KMS_REGION": "us-west-2", "CMEK_OPERATOR_TOKEN": operator_token,
        "AWS_ACCESS_KEY_ID": PROVIDER[0],
        "AWS_SECRET_ACCESS_KEY": PROVIDER[1], "CMEK_BACKUP_INTERVAL": "0",
        "CMEK_PROVIDER_ACCOUNT": PROVIDER[2].split(":")[4],
    }
    url = _start([sys.executable, "-m", "cmek.cli", "serve", "--dev", "--port",
                  str(platform_port)], platform_env, "cmek listening on ", verbose, procs)
    customer_env = base_env | {"AWS_ACCESS_KEY_ID": CUSTOMER[0],
                               "AWS_SECRET_ACCESS_KEY": CUSTOMER[1],
                               "AWS_REGION": "us-west-2"}
    created = subprocess.run(
        [sys.executable, "-m", "cmek.cli", "key", "create", "--provider-account",
         "111111111111", "--alias", "cmek-demo", "--tenant", TENANT, "--endpoint-url",
         kms_url, "--json"], env=customer_env, capture_output=True, text=True, check=False)
    if created.returncode != 0:
        raise StartFailed(created.stderr.strip())
    key_arn = json.loads(created.stdout)["key_arn"]
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        r = c.post("/v1/tenants", headers={"Authorization": f"Bearer {operator_token}"},
                   json={"tenant_id": TENANT, "kms_key_arn": key_arn,
                         "admin_email": ADMIN[0], "admin_password": ADMIN[1]})
        if r.status_code != 201:
            raise StartFailed(f"provisioning failed: {r.text}")
        _subscribe(url, kms_url, operator_token, key_arn)
        token = c.post(f"/v1/tenants/{TENANT}/sessions",
                       json={"email": ADMIN[0], "password": ADMIN[1]}).json()["token"]
    warehouse = root / "platform" / "warehouses" / TENANT / "warehouse.duckdb"
    _warehouse(warehouse)  # in the tenant's warehouse folder, made at provisioning
    load_sample_data(url, token, warehouse)
    return Demo(url, kms_url, key_arn, operator_token, tuple(procs))


def _port(var: str, default: int) -> int:
    text = os.environ.get(var, str(default))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise StartFailed(f"{var} must be a port number from 1 to 65535, not {text!r}")
    port = int(text)
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise StartFailed(
                f"port {port} ({var}) is in use ({e.strerror}): is another `make run` (or "
                "`cmek serve`) running? Run a second one with its own ports and folder, e.g. "
                "KMSLOCAL_PORT=4600 CMEK_PORT=8001 CMEK_RUN_DIR=.run2 make run") from None
    return port


@contextlib.contextmanager
def _run_dir_lock(root: Path) -> Iterator[None]:
    """One `make run` per run folder: the second is refused before it deletes anything."""
    lock_path = root.with_name(root.name + ".lock")
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartFailed(f"{root} (CMEK_RUN_DIR) is in use by another `make run`: set "
                              "CMEK_RUN_DIR to another folder (and KMSLOCAL_PORT, CMEK_PORT "
                              "to other ports)") from None
        yield


def main() -> int:
    root = Path(os.environ.get("CMEK_RUN_DIR", ".run")).resolve()
    try:
        kms_port, platform_port = (_port(var, default) for var, default in PORTS)
        with _run_dir_lock(root), running_demo(root, kms_port=kms_port,
                                               platform_port=platform_port) as demo:
            _announce(demo)
            _wait(*demo.procs)
    except StartFailed as e:
        print(f"make run: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def _announce(demo: Demo) -> None:
    url, kms_url, key_arn = demo.url, demo.kms_url, demo.key_arn
    print(f"""
cmek is running (Ctrl-C stops it)
  platform API   {url}          operator token: {demo.operator_token}
  kmslocal       {kms_url}      (dev mode)
  web app        {url}/t/{TENANT}/   operator console: {url}/ops
  demo tenant    {TENANT}, key {key_arn}
  users          {ADMIN[0]} / {ADMIN[1]}  (admin)
                 {ANALYST[0]} / {ANALYST[1]}  (analyst)

try, in another shell in this folder:
  source .venv/bin/activate    # puts cmek and kmslocal on PATH
  export CMEK_URL={url} CMEK_OPERATOR_TOKEN={demo.operator_token}
  curl -sS "$CMEK_URL/v1/tenants/{TENANT}/key" -H "Authorization: Bearer $CMEK_OPERATOR_TOKEN"
  AWS_ACCESS_KEY_ID={CUSTOMER[0]} AWS_SECRET_ACCESS_KEY={CUSTOMER[1]} AWS_REGION=us-west-2 \\
    cmek usage --key-arn {key_arn} --endpoint-url {kms_url}
  cmek demo                    # the whole key lifecycle, scripted, on ports of its own
more: the examples in docs/api.md (they use CMEK_URL and CMEK_OPERATOR_TOKEN)
""", flush=True)


def _wait(*procs: subprocess.Popen[str]) -> None:
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)  # supervising child processes, not waiting for time to pass
    except KeyboardInterrupt:
        print("stopping", flush=True)


if __name__ == "__main__":
    sys.exit(main())
