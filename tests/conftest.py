"""Fixtures: a kmslocal process per test session, and the conformance target.

The conformance suite drives KMS only through boto3 over HTTP. Each test runs against
kmslocal and, when credentials for two real AWS accounts are configured, against AWS:
  CMEK_CONFORMANCE_AWS_REGION        e.g. us-west-2
  CMEK_CONFORMANCE_PROVIDER_PROFILE  AWS profile of the provider account
  CMEK_CONFORMANCE_CUSTOMER_PROFILE  AWS profile of the customer (key owner) account
Without them the AWS runs are skipped, saying so. Tests that need kmslocal's dev
controls (clock, faults, restart, event targets) skip on AWS with their reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from cmek.clock import SystemClock
from cmek.platform.service import Platform
from tests.kmslocal_harness import (
    CUSTOMER,
    CUSTOMER_OTHER,
    PROVIDER,
    PROVIDER_OTHER,
    THIRD,
    EventSink,
    KmsLocal,
    write_config,
)
from tests.platform_harness import in_process

T = TypeVar("T")
# The reference provider key policy, kept with the tests (a copy of the project's
# reference file): every test that compares against it reads it through this name.
REFERENCE_POLICY = Path(__file__).resolve().parent / "data" / "provider-key-policy.json"
AWS_VARS = (
    "CMEK_CONFORMANCE_AWS_REGION", "CMEK_CONFORMANCE_PROVIDER_PROFILE",
    "CMEK_CONFORMANCE_CUSTOMER_PROFILE",
)


def error_code(call: Callable[[], Any]) -> str:
    """Run ``call``; it must raise a ClientError, whose AWS error code is returned."""
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def eventually(kms: Target, check: Callable[[], T], timeout: float = 180.0) -> T:
    """kmslocal is synchronous: one try. AWS applies some changes asynchronously: poll."""
    if kms.local is not None:
        return check()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def alias_name() -> str:
    return f"alias/conformance-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def event_sink() -> Iterator[EventSink]:
    sink = EventSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def kmslocal(tmp_path_factory: pytest.TempPathFactory, event_sink: EventSink) -> Iterator[KmsLocal]:
    base = tmp_path_factory.mktemp("kmslocal")
    server = KmsLocal(base / "data", write_config(base / "kmslocal.toml", event_sink.url))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dev_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsLocal]:
    """A kmslocal of the test module's own, in dev mode with its dev principals."""
    server = KmsLocal(tmp_path_factory.mktemp("kms") / "data", None, dev=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def local_platform(kmslocal: KmsLocal, tmp_path: Path) -> Iterator[Platform]:
    """A Platform object in this process, on the system clock (no HTTP): for tests that
    reach into it."""
    platform = in_process(kmslocal, tmp_path, SystemClock())
    yield platform
    platform.close()


@dataclass
class Target:
    """One KMS the conformance suite runs against, seen from two accounts."""

    name: str
    region: str
    provider: Any
    customer: Any
    provider_account: str
    customer_account: str
    customer_trail: Any
    provider_trail: Any
    local: KmsLocal | None
    extra: dict[str, Any] = field(default_factory=dict)
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def require_local(self, why: str) -> KmsLocal:
        if self.local is None:
            pytest.skip(f"needs kmslocal's dev controls: {why}")
        return self.local

    def client_for(self, principal: tuple[str, str, str], service: str = "kms") -> Any:
        return self.require_local("extra principals").client(principal, service)

    def provider_root(self) -> str:
        return f"arn:aws:iam::{self.provider_account}:root"

    def customer_root(self) -> str:
        return f"arn:aws:iam::{self.customer_account}:root"

    def owner_statement(self) -> dict[str, Any]:
        return {
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": self.customer_root()}, "Action": "kms:*", "Resource": "*",
        }

    def provider_policy(self, *extra: dict[str, Any], owner: bool = True) -> str:
        reference = json.loads(
            REFERENCE_POLICY.read_text().replace("<ACCOUNT_ID>", self.provider_account)
        )
        statements = ([self.owner_statement()] if owner else []) + reference["Statement"]
        return json.dumps({**reference, "Statement": [*statements, *extra]})

    def create_key(self, policy: str | None = None, **kwargs: Any) -> dict[str, Any]:
        if policy is not None:
            kwargs["Policy"] = policy
        meta: dict[str, Any] = self.customer.create_key(**kwargs)["KeyMetadata"]
        if self.local is None:  # real keys cost money: schedule them away at the end
            self._cleanup.append(lambda: self.customer.schedule_key_deletion(
                KeyId=meta["KeyId"], PendingWindowInDays=7))
        return meta

    def close(self) -> None:
        for undo in self._cleanup:
            with contextlib.suppress(Exception):  # best effort on a shared real account
                undo()


def _aws_target() -> Target:
    missing = [v for v in AWS_VARS if not os.environ.get(v)]
    if missing:
        pytest.skip(f"real AWS KMS run not configured (set {', '.join(missing)})")
    region = os.environ["CMEK_CONFORMANCE_AWS_REGION"]
    cfg = BotoConfig(retries={"max_attempts": 3, "mode": "standard"})
    prov = boto3.Session(profile_name=os.environ["CMEK_CONFORMANCE_PROVIDER_PROFILE"],
                         region_name=region)
    cust = boto3.Session(profile_name=os.environ["CMEK_CONFORMANCE_CUSTOMER_PROFILE"],
                         region_name=region)
    return Target(
        "aws", region, prov.client("kms", config=cfg), cust.client("kms", config=cfg),
        prov.client("sts").get_caller_identity()["Account"],
        cust.client("sts").get_caller_identity()["Account"],
        cust.client("cloudtrail"), prov.client("cloudtrail"), None,
    )


@pytest.fixture(params=["kmslocal", "aws"])
def kms(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "aws":
        target = _aws_target()
    else:
        local: KmsLocal = request.getfixturevalue("kmslocal")
        target = Target(
            "kmslocal", "us-west-2", local.client(PROVIDER), local.client(CUSTOMER),
            "111111111111", "222222222222", local.client(CUSTOMER, "cloudtrail"),
            local.client(PROVIDER, "cloudtrail"), local,
            extra={"provider_other": PROVIDER_OTHER, "customer_other": CUSTOMER_OTHER,
                   "third": THIRD},
        )
    yield target
    target.close()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of a PostgreSQL server for tests (see tests/pg.py)."""
    from tests.pg import throwaway_cluster

    url = os.environ.get("CMEK_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with throwaway_cluster() as started:
        if started is None:
            pytest.skip("no PostgreSQL: set CMEK_TEST_POSTGRES_URL or install PostgreSQL")
        yield started


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database, dropped afterwards."""
    from tests.pg import create_database, drop_database

    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port (S3 only stores bytes cmek sealed)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)  # waiting for the process to come up
        yield url
    finally:
        proc.terminate()
        proc.wait()


def make_bucket(endpoint: str) -> str:
    name = f"cmek-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(
        Bucket=name)
    return name


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import reliability

    reliability.flush()
