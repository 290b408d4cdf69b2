"""The wire protocol: authentication failures, malformed requests, injected faults, clock.

Raw requests are signed with botocore's own SigV4 signer on an AWSRequest, so only the
thing under test is wrong. Error shapes follow AWS JSON 1.1: ``{"__type", "message"}``
(AWS may prefix ``__type`` with a namespace, ``...#Code``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError, ReadTimeoutError

from tests.conftest import Target
from tests.kmslocal_harness import CUSTOMER, REGION, KmsLocal

JSON_11 = "application/x-amz-json-1.1"


# --- helpers ------------------------------------------------------------------------


def _endpoint(kms: Target) -> str:
    return str(kms.customer.meta.endpoint_url)


def _credentials(kms: Target) -> ReadOnlyCredentials:
    creds: ReadOnlyCredentials = (
        kms.customer._request_signer._credentials.get_frozen_credentials()
    )
    return creds


def _client(kms: Target, *, access_key: str, secret: str, region: str | None = None) -> Any:
    return boto3.client(
        "kms", endpoint_url=_endpoint(kms), region_name=region or kms.region,
        aws_access_key_id=access_key, aws_secret_access_key=secret,
        aws_session_token=_credentials(kms).token,
        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}),
    )


def _raw(
    kms: Target, operation: str, body: bytes, *, sign: bool = True
) -> httpx.Response:
    url = _endpoint(kms).rstrip("/") + "/"
    headers = {"Content-Type": JSON_11, "X-Amz-Target": f"TrentService.{operation}"}
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    if sign:
        SigV4Auth(_credentials(kms), "kms", kms.region).add_auth(request)
    prepared = request.prepare()
    with httpx.Client(trust_env=kms.local is None, timeout=30) as http:
        return http.post(url, content=body, headers=dict(prepared.headers.items()))


def _code(type_: str) -> str:
    return type_.rsplit("#", 1)[-1]


def _error(kms: Target, response: httpx.Response) -> dict[str, Any]:
    """Check the AWS JSON 1.1 error shape; return the body."""
    assert "Traceback" not in response.text
    assert response.headers.get("content-type", "").startswith(JSON_11)
    assert response.headers.get("x-amzn-RequestId")
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("__type"), str)
    if kms.local is not None:
        assert set(body) == {"__type", "message"}, body
        assert isinstance(body["message"], str)
    return body


def _count_keys(kms: Target) -> int:
    return sum(len(page["Keys"]) for page in kms.customer.get_paginator("list_keys").paginate())


def _code_of(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


# --- authentication -------------------------------------------------------------------


def test_wrong_secret_is_an_invalid_signature(kms: Target) -> None:
    creds = _credentials(kms)
    client = _client(kms, access_key=creds.access_key, secret=creds.secret_key + "x")
    with pytest.raises(ClientError) as caught:
        client.list_keys()
    assert _code_of(caught) == "InvalidSignatureException"


def test_unknown_access_key_is_unrecognized(kms: Target) -> None:
    client = _client(kms, access_key="AKIAUNKNOWNKMSLOCAL0", secret="whatever-secret")
    with pytest.raises(ClientError) as caught:
        client.list_keys()
    assert _code_of(caught) == "UnrecognizedClientException"


def test_unsigned_request_is_missing_authentication(kms: Target) -> None:
    response = _raw(kms, "ListKeys", b"{}", sign=False)
    assert 400 <= response.status_code < 500
    body = _error(kms, response)
    assert _code(body["__type"]) == "MissingAuthenticationTokenException"


def test_request_signed_for_another_region_is_refused(kms: Target) -> None:
    creds = _credentials(kms)
    other = "us-east-1" if kms.region != "us-east-1" else "us-east-2"
    client = _client(kms, access_key=creds.access_key, secret=creds.secret_key, region=other)
    with pytest.raises(ClientError) as caught:
        client.list_keys()
    assert _code_of(caught) == "InvalidSignatureException"


# --- malformed requests ---------------------------------------------------------------

MALFORMED: dict[str, tuple[str, Any, set[str]]] = {
    # name: (operation, body (bytes, or a function of the key ARN), acceptable codes)
    "malformed-json": ("CreateKey", b'{"Description": "half', {"SerializationException"}),
    "unknown-operation": ("Nope", b"{}", {"UnknownOperationException"}),
    "missing-key-id": (
        "ScheduleKeyDeletion", b'{"PendingWindowInDays": 7}', {"ValidationException"}
    ),
    "key-id-wrong-type": (
        "DisableKey", b'{"KeyId": 5}', {"SerializationException", "ValidationException"}
    ),
    "plaintext-not-base64": (
        "Encrypt", lambda arn: {"KeyId": arn, "Plaintext": "not base64 !!"},
        {"SerializationException"},
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_refused_cleanly(kms: Target, case: str) -> None:
    operation, body, codes = MALFORMED[case]
    key = kms.create_key()
    keys = _count_keys(kms)
    raw = body if isinstance(body, bytes) else json.dumps(body(key["Arn"])).encode()

    response = _raw(kms, operation, raw)

    assert response.status_code != 500
    assert 400 <= response.status_code < 500
    error = _error(kms, response)
    assert _code(error["__type"]) in codes, error
    if "SerializationException" in codes and len(codes) == 1:
        assert response.status_code == 400
    assert _count_keys(kms) == keys
    meta = kms.customer.describe_key(KeyId=key["Arn"])["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"


# --- injected faults (dev) -------------------------------------------------------------


def _dev(local: KmsLocal, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=local.url, trust_env=False, timeout=10) as http:
        if body is None:
            return http.request(method, path)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return http.request(method, path, content=content)


@pytest.fixture
def faults(kms: Target) -> Iterator[KmsLocal]:
    local = kms.require_local("fault injection is a kmslocal dev control")
    assert _dev(local, "DELETE", "/_kmslocal/faults").status_code == 200
    try:
        yield local
    finally:
        assert _dev(local, "DELETE", "/_kmslocal/faults").json() == {"faults": []}


def _once(local: KmsLocal, **cfg: Any) -> Any:
    """A customer client that makes exactly one attempt per call.

    botocore's ``retries={"max_attempts": N}`` in a client Config counts *retries* (N + 1
    attempts), so the harness client, with max_attempts=1, retries once; this one does not.
    """
    return boto3.client(
        "kms", endpoint_url=local.url, region_name=REGION, aws_access_key_id=CUSTOMER[1],
        aws_secret_access_key=CUSTOMER[2],
        config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}, **cfg),
    )


def _add_fault(local: KmsLocal, spec: dict[str, Any]) -> dict[str, Any]:
    response = _dev(local, "POST", "/_kmslocal/faults", spec)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_throttling_fault_fires_count_times(kms: Target, faults: KmsLocal) -> None:
    client = _once(faults)
    key = kms.create_key()
    blob = client.encrypt(KeyId=key["Arn"], Plaintext=b"throttled")["CiphertextBlob"]
    added = _add_fault(faults, {
        "operations": ["Decrypt"], "error": "ThrottlingException", "count": 2,
    })
    assert added["faults"] == [{
        "operations": ["Decrypt"], "error": "ThrottlingException", "rate": 1.0,
        "latency_ms": 0, "count": 2,
    }]
    # Only the named operation is affected, and it does not use up the count.
    client.encrypt(KeyId=key["Arn"], Plaintext=b"unaffected")
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            client.decrypt(CiphertextBlob=blob)
        assert _code_of(caught) == "ThrottlingException"
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"throttled"


def test_internal_error_fault_is_http_500(kms: Target, faults: KmsLocal) -> None:
    client = _once(faults)
    key = kms.create_key()
    _add_fault(faults, {"operations": ["DescribeKey"], "error": "KMSInternalException",
                        "count": 1})
    with pytest.raises(ClientError) as caught:
        client.describe_key(KeyId=key["Arn"])
    assert _code_of(caught) == "KMSInternalException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert client.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == key["KeyId"]


def test_latency_fault_delays_but_succeeds(kms: Target, faults: KmsLocal) -> None:
    client = _once(faults)
    key = kms.create_key()
    client.describe_key(KeyId=key["Arn"])  # connection warm
    _add_fault(faults, {"operations": ["DescribeKey"], "latency_ms": 300, "count": 1})
    started = time.monotonic()
    meta = client.describe_key(KeyId=key["Arn"])["KeyMetadata"]
    assert time.monotonic() - started >= 0.3
    assert meta["KeyId"] == key["KeyId"]


def test_timeout_fault_until_faults_are_cleared(kms: Target, faults: KmsLocal) -> None:
    impatient = _once(faults, read_timeout=1)
    key = kms.create_key()
    _add_fault(faults, {"operations": ["DescribeKey"], "error": "timeout"})
    with pytest.raises(ReadTimeoutError):
        impatient.describe_key(KeyId=key["Arn"])
    assert _dev(faults, "DELETE", "/_kmslocal/faults").json() == {"faults": []}
    assert impatient.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == key["KeyId"]


def test_rate_zero_never_fires(kms: Target, faults: KmsLocal) -> None:
    client = _once(faults)
    key = kms.create_key()
    _add_fault(faults, {"operations": ["DescribeKey"], "error": "KMSInternalException",
                        "rate": 0.0})
    for _ in range(25):
        assert client.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == key["KeyId"]


INVALID_FAULTS: dict[str, Any] = {
    "not-an-object": ["ThrottlingException"],
    "not-json": b"{error: ",
    "unknown-error": {"operations": ["Decrypt"], "error": "NoSuchException"},
    "unknown-field": {"operations": ["Decrypt"], "error": "ThrottlingException", "when": 1},
    "operations-not-a-list": {"operations": "Decrypt", "error": "ThrottlingException"},
    "rate-above-one": {"error": "ThrottlingException", "rate": 1.5},
    "rate-negative": {"error": "ThrottlingException", "rate": -0.1},
    "rate-not-a-number": {"error": "ThrottlingException", "rate": "often"},
    "latency-negative": {"latency_ms": -1},
    "latency-not-an-integer": {"latency_ms": "slow"},
    "count-zero": {"error": "ThrottlingException", "count": 0},
    "count-not-an-integer": {"error": "ThrottlingException", "count": 1.5},
    "neither-error-nor-latency": {"operations": ["Decrypt"]},
}


@pytest.mark.parametrize("case", list(INVALID_FAULTS))
def test_invalid_fault_spec_is_400(kms: Target, faults: KmsLocal, case: str) -> None:
    response = _dev(faults, "POST", "/_kmslocal/faults", INVALID_FAULTS[case])
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    # Nothing was installed: every operation still goes through.
    kms.customer.list_keys(Limit=1)


# --- dev clock ---------------------------------------------------------------------


def _now(response: httpx.Response) -> dt.datetime:
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"now"}
    assert body["now"].endswith("Z")
    when = dt.datetime.fromisoformat(body["now"].replace("Z", "+00:00"))
    assert when.utcoffset() == dt.timedelta(0)
    return when


def test_clock_get_and_refused_advances(kms: Target) -> None:
    local = kms.require_local("the clock is a kmslocal dev control")
    first = _now(_dev(local, "GET", "/_kmslocal/clock"))
    assert first >= dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)  # only moves forward
    for bad in ({"advance_seconds": -1}, {"advance_seconds": "x"},
                {"advance_seconds": True}, {"advance_seconds": None}, {}, b"not json"):
        response = _dev(local, "POST", "/_kmslocal/clock", bad)
        assert response.status_code == 400, bad
        assert set(response.json()) == {"error"}
    second = _now(_dev(local, "GET", "/_kmslocal/clock"))
    assert dt.timedelta(0) <= second - first < dt.timedelta(seconds=30)
    moved = _now(_dev(local, "POST", "/_kmslocal/clock", {"advance_seconds": 0}))
    assert dt.timedelta(0) <= moved - second < dt.timedelta(seconds=30)


def test_signed_raw_request_is_accepted(kms: Target) -> None:
    """A signed raw Encrypt with valid base64 works: the raw path itself is sound."""
    key = kms.create_key()
    body = json.dumps({"KeyId": key["Arn"], "Plaintext": base64.b64encode(b"raw").decode()})
    response = _raw(kms, "Encrypt", body.encode())
    assert response.status_code == 200, response.text
    assert response.headers.get("x-amzn-RequestId")
    blob = base64.b64decode(response.json()["CiphertextBlob"])
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == b"raw"
