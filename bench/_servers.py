"""Shared by the benchmarks: kmslocal and ``cmek serve`` as processes on free loopback ports,
the principals and tokens they use, and small helpers for answers and results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# The customer's key policy every benchmark uses: the owner administers, the provider
# (111111111111) gets the least-privilege use the reference policy gives it.
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "Owner", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "Allow use of the key", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    ],
}


PROVIDER = ("AKIAKMSLOCALPROVIDER", "kmslocal-dev-provider-secret")
CUSTOMER = ("AKIAKMSLOCALCUSTOMER", "kmslocal-dev-customer-secret")
PROVIDER_ARN = "arn:aws:iam::111111111111:role/cmek-platform"
CUSTOMER_ARN = "arn:aws:iam::222222222222:user/key-admin"
REGION = "us-west-2"
OPERATOR_TOKEN = "bench-operator-token-0123456789"
INTEGRITY_KEY = "bench-integrity-key-0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {url}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback only
            return
        except OSError:
            time.sleep(0.05)  # waiting for a process to come up, not for time to pass
    raise RuntimeError(f"server did not come up: {url}")


@contextmanager
def kmslocal() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kmslocal.cli", "serve", "--port", str(port),
             "--data-dir", data],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url + "/_kmslocal/health", proc)
            yield url
        finally:
            proc.terminate()
            proc.wait()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: deque[str]
    errors: list[str]


@contextmanager
def spawn(cmd: list[str], env: dict[str, str], ready: str) -> Iterator[Server]:
    """A child process until it prints ``ready <url>``; afterwards its output is read on
    (so the pipe never fills), keeping the tail and every error line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        log: deque[str] = deque(maxlen=200)
        for line in proc.stdout:
            log.append(line)
            if line.startswith(ready):
                server = Server(line.split()[-1], proc, log, [])
                break
        else:
            raise RuntimeError(f"{cmd[2]} did not start:\n" + "".join(log))

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.append(line)
                if (" ERROR " in line or "Traceback" in line) and len(server.errors) < 500:
                    server.errors.append(line.rstrip())

        threading.Thread(target=drain, daemon=True).start()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def clean_env() -> dict[str, str]:
    """This environment without AWS or cmek settings, so only what a benchmark sets counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CMEK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def platform_env(kms_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """``cmek serve``'s environment: kmslocal as its KMS, the bench provider's keys."""
    return clean_env() | {
        "AWS_EC2_METADATA_DISABLED": "true", "CMEK_DATA_DIR": str(data_dir),
        "CMEK_KMS_ENDPOINT_URL": kms_url, "CMEK_KMS_REGION": REGION,
        "CMEK_OPERATOR_TOKEN": OPERATOR_TOKEN, "CMEK_INTEGRITY_KEY": INTEGRITY_KEY,
        "AWS_ACCESS_KEY_ID": PROVIDER[0], "AWS_SECRET_ACCESS_KEY": PROVIDER[1], **settings,
    }


def kmslocal_config(path: Path) -> Path:
    lines = [f'region = "{REGION}"', ""]
    for arn, (akid, secret) in ((PROVIDER_ARN, PROVIDER), (CUSTOMER_ARN, CUSTOMER)):
        lines += ["[[principals]]", f'arn = "{arn}"', f'access_key_id = "{akid}"',
                  f'secret_access_key = "{secret}"', ""]
    path.write_text("\n".join(lines))
    return path


def subscribe(kms_url: str, platform_url: str, tenant: str, key_arn: str) -> None:
    """Key events of the tenant's key to the tenant's endpoint, with its own secret: as
    the customer's EventBridge rule and API destination would send them."""
    with httpx.Client(timeout=30, trust_env=False) as c:
        secret = check(c.post(f"{platform_url}/v1/tenants/{tenant}/key-events/credential",
                              headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}),
                       201)["secret"]
        check(c.post(f"{kms_url}/_kmslocal/event-targets", json={
            "account": key_arn.split(":")[4], "resources": [key_arn],
            "url": f"{platform_url}/v1/tenants/{tenant}/key-events",
            "secret_header": "X-Cmek-Event-Secret", "secret": secret}))


@contextmanager
def stack(base: Path, **settings: str) -> Iterator[tuple[Server, Server]]:
    """(kmslocal, platform), both with ``--dev``; ``subscribe`` then sends a tenant's
    key events to the platform."""
    config = kmslocal_config(base / "kmslocal.toml")
    (base / "kms").mkdir()
    kms_cmd = [sys.executable, "-m", "kmslocal.cli", "serve", "--port", "0", "--data-dir",
               str(base / "kms"), "--config", str(config), "--dev"]
    with spawn(kms_cmd, clean_env(), "kmslocal listening on ") as kms:
        cmd = [sys.executable, "-m", "cmek.cli", "serve", "--port", "0", "--dev"]
        env = platform_env(kms.url, base / "platform", **settings)
        with spawn(cmd, env, "cmek listening on ") as platform:
            yield kms, platform


def check(r: httpx.Response, status: int = 200) -> Any:
    """The answer's JSON, or the benchmark stops saying what went wrong."""
    if r.status_code != status:
        raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json() if r.content else None


def error_code(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", ""))
    except ValueError:
        return "not_json"


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
