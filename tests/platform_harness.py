"""Start and stop a real `cmek serve` process for tests, with kmslocal as its KMS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from cmek.clock import Clock
from cmek.kms import BotoKms, KmsSettings
from cmek.platform.config import load_settings
from cmek.platform.service import Platform
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, KmsLocal, spawn, stop

OPERATOR_TOKEN = "test-operator-token-0123456789"
INTEGRITY_KEY = "test-integrity-key-0123456789abcdef0123456789"
PROVIDER_ACCOUNT = "111111111111"
CUSTOMER_ROOT = "arn:aws:iam::222222222222:root"


def provider_policy(provider_account: str = PROVIDER_ACCOUNT) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": CUSTOMER_ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Allow use of the key", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{provider_account}:root"},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    ]})


def customer_key(kms: KmsLocal, policy: str | None = None) -> str:
    client = kms.client(CUSTOMER)
    return str(client.create_key(Policy=policy or provider_policy())["KeyMetadata"]["Arn"])


@dataclass
class PlatformProcess:
    data_dir: Path
    kms: KmsLocal
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    key_events: bool = False  # each tenant provisioned here gets kmslocal's key events
    url: str = ""
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    event_urls: list[str] = field(default_factory=list)  # the kmslocal targets it added

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""), "HOME": str(self.data_dir),
            "PYTHONUNBUFFERED": "1", "CMEK_DATA_DIR": str(self.data_dir),
            "CMEK_KMS_ENDPOINT_URL": self.kms.url, "CMEK_KMS_REGION": REGION,
            "CMEK_OPERATOR_TOKEN": OPERATOR_TOKEN, "CMEK_INTEGRITY_KEY": INTEGRITY_KEY,
            "AWS_ACCESS_KEY_ID": PROVIDER[1], "AWS_SECRET_ACCESS_KEY": PROVIDER[2],
            "AWS_EC2_METADATA_DISABLED": "true", **self.extra_env,
        }

    def start(self) -> None:
        self.process, self.url = spawn(
            [sys.executable, "-m", "cmek.cli", "serve", "--port", str(self.port), "--dev"],
            self.env(), "cmek listening on ", self.output)

    def stop(self) -> None:
        stop(self.process)
        self.process = None
        if self.kms.process is not None and self.kms.process.poll() is None:
            for url in self.event_urls:  # kmslocal outlives this process: stop sending
                self.kms.remove_event_target(url)
        self.event_urls.clear()

    def warehouse_file(self, tenant: str, name: str = "wh.duckdb") -> Path:
        """Where a tenant's DuckDB file goes: its own warehouse folder on the platform, the
        only files its connections can name (``{"path": name}``)."""
        root = self.extra_env.get("CMEK_WAREHOUSE_DIR") or self.data_dir / "warehouses"
        return Path(root) / tenant / name

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)

    def operator(self) -> httpx.Client:
        return self.client(OPERATOR_TOKEN)

    def provision(self, tenant: str, key_arn: str, email: str = "admin@example.com",
                  password: str = "correct horse battery") -> dict[str, Any]:
        with self.operator() as op:
            r = op.post("/v1/tenants", json={"tenant_id": tenant, "kms_key_arn": key_arn,
                                              "admin_email": email, "admin_password": password})
        assert r.status_code == 201, r.text
        if self.key_events:
            self.subscribe(tenant, key_arn)
        return dict(r.json())

    def event_secret(self, tenant: str) -> str:
        """A new event secret for the tenant (the previous one stops working)."""
        with self.operator() as op:
            r = op.post(f"/v1/tenants/{tenant}/key-events/credential")
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])

    def subscribe(self, tenant: str, key_arn: str) -> str:
        """kmslocal sends the events of the tenant's key, and only those, to the tenant's
        endpoint with its secret: as the customer's EventBridge rule would."""
        secret = self.event_secret(tenant)
        url = f"{self.url}/v1/tenants/{tenant}/key-events"
        self.kms.add_event_target({
            "account": key_arn.split(":")[4], "url": url,
            "secret_header": "X-Cmek-Event-Secret", "secret": secret, "resources": [key_arn]})
        self.event_urls.append(url)
        return secret

    def new_tenant(self, kms: KmsLocal) -> str:
        """A freshly provisioned tenant with a key of its own."""
        name = f"t{uuid.uuid4().hex[:10]}"
        self.provision(name, customer_key(kms))
        return name

    def login(self, tenant: str, email: str = "admin@example.com",
              password: str = "correct horse battery") -> str:
        with self.client() as c:
            r = c.post(f"/v1/tenants/{tenant}/sessions", json={"email": email,
                                                               "password": password})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def kms_client(kms: KmsLocal) -> Any:
    return boto3.client("kms", endpoint_url=kms.url, region_name=REGION,
                        aws_access_key_id=CUSTOMER[1], aws_secret_access_key=CUSTOMER[2])


def wait_until(what: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Waits for the platform to react (an event, not time passing), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the platform did not react in time")
        time.sleep(0.02)


def in_process(kms: KmsLocal, data_dir: Path, clock: Clock, **env: str) -> Platform:
    """A Platform object in this process (no HTTP), with kmslocal as its KMS and the
    provider's credentials: for tests that reach into it. ``env``: more CMEK_* settings."""
    settings = load_settings(None, env={"CMEK_DATA_DIR": str(data_dir),
                                        "CMEK_KMS_ENDPOINT_URL": kms.url,
                                        "CMEK_KMS_REGION": REGION, **env})
    return Platform(settings, clock, BotoKms(KmsSettings(
        region=REGION, endpoint_url=kms.url, access_key_id=PROVIDER[1],
        secret_access_key=PROVIDER[2])))

