"""Plaintext data keys never reach a log, even with every logger at DEBUG."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import boto3
import pytest

import cmek
from cmek.clock import ManualClock
from cmek.kms import KmsSettings
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal
from tests.platform_harness import INTEGRITY_KEY

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    ],
}


def test_debug_logs_carry_no_data_key(
    kmslocal: KmsLocal, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    customer = boto3.client("kms", endpoint_url=kmslocal.url, region_name="us-west-2",
                            aws_access_key_id=CUSTOMER[1], aws_secret_access_key=CUSTOMER[2])
    key_arn = customer.create_key(Policy=json.dumps(POLICY))["KeyMetadata"]["Arn"]
    settings = KmsSettings(region="us-west-2", endpoint_url=kmslocal.url,
                           access_key_id=PROVIDER[1], secret_access_key=PROVIDER[2])
    caplog.set_level(logging.DEBUG)
    keyring = cmek.connect(f"sqlite:///{tmp_path}/keys.sqlite3", settings, clock=ManualClock(),
                           integrity_key=INTEGRITY_KEY, data_key_ttl=60)
    keyring.register_tenant("logs", key_arn)
    sealed = keyring.seal("logs", "metadata", "o1", b"planted-canary-value")
    keyring.purge("logs")
    assert keyring.open("logs", "metadata", "o1", sealed) == b"planted-canary-value"
    keys = [bytes(entry.key._material) for entry in keyring._cache.values()]
    assert keys
    keyring.rewrap("logs")  # Decrypt, then Encrypt with the data key in the request body
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert any("botocore" in r.name for r in caplog.records)  # DEBUG logging really ran
    for key in keys:
        for form in (key, base64.b64encode(key), key.hex().encode()):
            assert form.decode("latin-1") not in text
    assert "planted-canary-value" not in text
