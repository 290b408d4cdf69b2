"""The customer's usage report, read from its own usage log on a real kmslocal.

The provider (account 111111111111) uses the customer's key through the KMS port with
tenant/category encryption contexts, some calls refused; the customer (account
222222222222) sums the log up with its own CloudTrail client.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket
import uuid
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from cmek.customer.aws_errors import CredentialsInvalid, EndpointUnreachable
from cmek.customer.policy import merge
from cmek.customer.usage import UsageReport, parse_since, usage_report
from cmek.errors import InvalidInput
from cmek.kms import BotoKms, KeyRevoked, KmsSettings, RevocationReason
from tests.kmslocal_harness import CUSTOMER, PROVIDER, REGION, THIRD, KmsLocal

PROVIDER_ACCOUNT = "111111111111"
CUSTOMER_ACCOUNT = "222222222222"
HOUR = 3600.0


def ctx(tenant: str, category: str, epoch: int = 1) -> dict[str, str]:
    return {"cmek:tenant": tenant, "cmek:category": category, "cmek:epoch": str(epoch)}


def kmslocal_now(kmslocal: KmsLocal) -> float:
    """kmslocal's dev clock (other tests may have moved it forward)."""
    text = str(kmslocal.dev_call("GET", "/_kmslocal/clock")["now"])
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def new_key(customer: Any) -> str:
    default = {
        "Version": "2012-10-17", "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{CUSTOMER_ACCOUNT}:root"},
            "Action": "kms:*", "Resource": "*",
        }],
    }
    policy = merge(default, PROVIDER_ACCOUNT)
    arn: str = customer.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    return arn


@pytest.fixture(scope="module")
def customer(kmslocal: KmsLocal) -> Any:
    return kmslocal.client(CUSTOMER)


@pytest.fixture(scope="module")
def trail(kmslocal: KmsLocal) -> Any:
    return kmslocal.client(CUSTOMER, "cloudtrail")


@pytest.fixture(scope="module")
def provider(kmslocal: KmsLocal) -> BotoKms:
    return BotoKms(KmsSettings(
        region=REGION, endpoint_url=kmslocal.url, access_key_id=PROVIDER[1],
        secret_access_key=PROVIDER[2], max_attempts=1,
    ))


@pytest.fixture(scope="module")
def used_key(kmslocal: KmsLocal, customer: Any, provider: BotoKms) -> dict[str, Any]:
    """A key the provider used: 60 successful calls, 3 refused, plus the owner's own."""
    before = kmslocal_now(kmslocal)
    arn = new_key(customer)
    expected: Counter[tuple[str, str, str]] = Counter({("CreateKey", "-", "-"): 1})

    def gen(tenant: str, category: str) -> bytes:
        expected[("GenerateDataKey", category, tenant)] += 1
        out = provider.generate_data_key(arn, ctx(tenant, category))
        out.plaintext[:] = bytes(len(out.plaintext))
        return out.wrapped

    wrapped = gen("acme", "metadata")
    gen("acme", "metadata")
    gen("acme", "search_index")
    gen("globex", "metadata")
    for _ in range(52):  # more than a page of LookupEvents (50)
        gen("globex", "cdw_cache")
    for _ in range(3):
        expected[("Decrypt", "metadata", "acme")] += 1
        provider.decrypt(arn, wrapped, ctx("acme", "metadata"))
    expected[("Encrypt", "auth", "initech")] += 1
    provider.encrypt(arn, b"secret", ctx("initech", "auth"))
    expected[("DescribeKey", "-", "-")] += 1
    provider.describe_key(arn)

    customer.disable_key(KeyId=arn)
    expected[("DisableKey", "-", "-")] += 1
    for _ in range(2):
        expected[("GenerateDataKey", "metadata", "acme")] += 1
        with pytest.raises(KeyRevoked) as info:
            provider.generate_data_key(arn, ctx("acme", "metadata"))
        assert info.value.reason is RevocationReason.DISABLED
    third = kmslocal.client(THIRD)
    expected[("DescribeKey", "-", "-")] += 1
    with pytest.raises(Exception, match="AccessDenied"):
        third.describe_key(KeyId=arn)
    after = kmslocal_now(kmslocal)
    return {"arn": arn, "before": before, "after": after, "expected": expected}


# --- the report -------------------------------------------------------------------------


def test_usage_report_counts_every_call_exactly(
    trail: Any, used_key: dict[str, Any]
) -> None:
    now = used_key["after"] + 1
    report = usage_report(trail, used_key["arn"], since_seconds=HOUR, now=now)

    assert isinstance(report, UsageReport)
    assert report.key_arn == used_key["arn"]
    assert (report.since, report.until) == (now - HOUR, now)
    expected: Counter[tuple[str, str, str]] = used_key["expected"]
    assert report.total == sum(expected.values()) == 66
    assert report.calls == [
        {"operation": op, "category": cat, "tenant": tenant, "count": n}
        for (op, cat, tenant), n in sorted(expected.items(), key=lambda i: (-i[1], i[0]))
    ]
    assert report.calls[0] == {
        "operation": "GenerateDataKey", "category": "cdw_cache", "tenant": "globex",
        "count": 52,
    }
    counts = [c["count"] for c in report.calls]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == report.total


def test_usage_report_lists_refusals_with_codes_and_principals(
    trail: Any, used_key: dict[str, Any]
) -> None:
    report = usage_report(trail, used_key["arn"], since_seconds=HOUR, now=used_key["after"] + 1)
    assert report.refusals == [
        {"operation": "GenerateDataKey", "error_code": "DisabledException", "count": 2,
         "principals": [PROVIDER[0]]},
        {"operation": "DescribeKey", "error_code": "AccessDeniedException", "count": 1,
         "principals": [THIRD[0]]},
    ]


def test_usage_report_lists_principals_with_accounts(
    trail: Any, used_key: dict[str, Any]
) -> None:
    report = usage_report(trail, used_key["arn"], since_seconds=HOUR, now=used_key["after"] + 1)
    assert report.principals == [
        {"arn": PROVIDER[0], "account": PROVIDER_ACCOUNT, "count": 63},
        {"arn": CUSTOMER[0], "account": CUSTOMER_ACCOUNT, "count": 2},
        {"arn": THIRD[0], "account": "333333333333", "count": 1},
    ]


def test_first_and_last_use_lie_in_the_window(trail: Any, used_key: dict[str, Any]) -> None:
    now = used_key["after"] + 1
    report = usage_report(trail, used_key["arn"], since_seconds=HOUR, now=now)
    assert report.first_use is not None
    assert report.last_use is not None
    assert report.since <= report.first_use <= report.last_use <= report.until
    assert used_key["before"] - 1 <= report.first_use
    assert report.last_use <= used_key["after"] + 1
    body = report.to_json()
    assert json.loads(json.dumps(body)) == body
    assert body["total"] == 66
    assert set(body) == {"key_arn", "since", "until", "total", "calls", "refusals",
                         "first_use", "last_use", "principals"}


def test_a_window_that_excludes_everything_is_empty(
    trail: Any, used_key: dict[str, Any]
) -> None:
    report = usage_report(trail, used_key["arn"], since_seconds=60,
                          now=used_key["before"] - 10)
    assert report.total == 0
    assert (report.calls, report.refusals, report.principals) == ([], [], [])
    assert (report.first_use, report.last_use) == (None, None)


def test_an_unused_key_of_another_arn_reports_nothing(
    kmslocal: KmsLocal, trail: Any
) -> None:
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    report = usage_report(trail, arn, since_seconds=HOUR, now=kmslocal_now(kmslocal))
    assert report.total == 0


def test_usage_report_refuses_bad_input(trail: Any) -> None:
    with pytest.raises(InvalidInput):
        usage_report(trail, "alias/my-key", since_seconds=HOUR, now=1e9)
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    for bad in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(InvalidInput):
            usage_report(trail, arn, since_seconds=bad, now=1e9)


def test_usage_report_with_bad_credentials_or_endpoint(kmslocal: KmsLocal) -> None:
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    bad = kmslocal.client((CUSTOMER[0], CUSTOMER[1], "wrong-secret"), "cloudtrail")
    with pytest.raises(CredentialsInvalid) as info:
        usage_report(bad, arn, since_seconds=HOUR, now=kmslocal_now(kmslocal))
    assert info.value.code == "credentials_invalid"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = boto3.client(
        "cloudtrail", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
        aws_access_key_id=CUSTOMER[1], aws_secret_access_key=CUSTOMER[2],
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(EndpointUnreachable) as unreachable:
        usage_report(dead, arn, since_seconds=HOUR, now=kmslocal_now(kmslocal))
    assert unreachable.value.code == "endpoint_unreachable"


# --- parse_since ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400.0), ("30m", 1800.0), ("7d", 604800.0), ("90s", 90.0), ("3600", 3600.0),
     (" 2H ", 7200.0), ("1.5h", 5400.0), ("0.5", 0.5), ("15 m", 900.0)],
)
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize(
    "text", ["", " ", "h", "abc", "-5m", "0", "0s", "0.0d", "5x", "1e3", "nan", "inf",
             "24hours", "1h30m", "--1"],
)
def test_parse_since_refuses_bad_spans(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_since(text)
    assert info.value.code == "invalid_input"
    assert "\n" not in info.value.message
