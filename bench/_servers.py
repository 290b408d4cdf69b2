"""Shared by the benchmarks: a kmslocal process on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

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
