"""The KMS port over boto3 (``BotoKms``) against a real kmslocal process, over HTTP.

The customer owns the keys (account 222222222222) and grants the provider (account
111111111111) least-privilege use with the reference key policy; the adapter is the
provider's side. Every call's request id must line up with the customer's usage log,
and every failure must land in the right place of the error taxonomy.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cmek.kms import (
    BotoKms,
    KeyRevoked,
    KmsError,
    KmsInvalidCiphertext,
    KmsMisconfigured,
    KmsSettings,
    KmsUnavailable,
    RevocationReason,
    classify,
)
from tests.conftest import REFERENCE_POLICY
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal

REGION = "us-west-2"
PROVIDER_ACCOUNT = "111111111111"
CUSTOMER_ACCOUNT = "222222222222"
DAY = 86400


# --- helpers ----------------------------------------------------------------------------


def owner_statement() -> dict[str, Any]:
    return {
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{CUSTOMER_ACCOUNT}:root"},
        "Action": "kms:*", "Resource": "*",
    }


def provider_statements() -> list[dict[str, Any]]:
    text = REFERENCE_POLICY.read_text().replace("<ACCOUNT_ID>", PROVIDER_ACCOUNT)
    statements: list[dict[str, Any]] = json.loads(text)["Statement"]
    return statements


REENCRYPT_STATEMENT = {
    "Sid": "Allow rewrap inside KMS", "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{PROVIDER_ACCOUNT}:root"},
    "Action": ["kms:ReEncrypt*"], "Resource": "*",
}


def policy(*extra: dict[str, Any], provider: bool = True) -> str:
    statements = [owner_statement(), *(provider_statements() if provider else []), *extra]
    return json.dumps({"Version": "2012-10-17", "Id": "cmek-test", "Statement": statements})


def settings(kmslocal: KmsLocal, **overrides: Any) -> KmsSettings:
    values: dict[str, Any] = {
        "region": REGION, "endpoint_url": kmslocal.url, "access_key_id": PROVIDER[1],
        "secret_access_key": PROVIDER[2], "max_attempts": 1,
    }
    values.update(overrides)
    return KmsSettings(**values)


def kmslocal_now(kmslocal: KmsLocal) -> dt.datetime:
    """kmslocal's (movable) clock, which stamps the usage log."""
    now = str(kmslocal.dev_call("GET", "/_kmslocal/clock")["now"])
    return dt.datetime.fromisoformat(now.replace("Z", "+00:00"))


def usage_log(
    kmslocal: KmsLocal, since: dt.datetime, event_name: str | None = None
) -> list[dict[str, Any]]:
    """The customer's CloudTrail records since ``since``, newest first."""
    trail = kmslocal.client(CUSTOMER, "cloudtrail")
    kwargs: dict[str, Any] = {"StartTime": since - dt.timedelta(seconds=1), "MaxResults": 50}
    if event_name is not None:
        kwargs["LookupAttributes"] = [{"AttributeKey": "EventName",
                                       "AttributeValue": event_name}]
    records: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = trail.lookup_events(**kwargs, **({"NextToken": token} if token else {}))
        records += [json.loads(e["CloudTrailEvent"]) for e in page["Events"]]
        token = page.get("NextToken")
        if not token:
            return records


def record_for(kmslocal: KmsLocal, since: dt.datetime, request_id: str) -> dict[str, Any]:
    matches = [r for r in usage_log(kmslocal, since) if r.get("requestID") == request_id]
    assert len(matches) == 1, f"{len(matches)} usage-log records for request {request_id}"
    return matches[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secret_forms(secret: bytes) -> list[str]:
    """How a secret could show up in a message: raw text, hex, base64, repr."""
    return [secret.decode("latin-1"), secret.hex(), base64.b64encode(secret).decode(),
            repr(secret)[2:-1]]


def assert_no_secret(err: BaseException, *secrets: bytes) -> None:
    texts = [str(err), repr(err), *(str(a) for a in err.args)]
    if isinstance(err, KmsError):
        texts.append(err.message)
    if err.__context__ is not None:
        texts.append(str(err.__context__))
    for secret in secrets:
        for form in secret_forms(secret):
            for text in texts:
                assert form not in text, "a secret leaked into an error message"


def ctx(tenant: str = "acme", category: str = "metadata", epoch: int = 1) -> dict[str, str]:
    return {"cmek:tenant": tenant, "cmek:category": category, "cmek:epoch": str(epoch)}


class NoCalls:
    """A stand-in boto3 client: any use of it means a call went out that must not."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"KMS was called ({name}) although the request was invalid")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def customer(kmslocal: KmsLocal) -> Any:
    return kmslocal.client(CUSTOMER)


@pytest.fixture
def create_key(customer: Any) -> Callable[..., str]:
    """Create a customer key (owner + reference provider statements by default)."""

    def create(*extra: dict[str, Any], provider: bool = True) -> str:
        meta = customer.create_key(Policy=policy(*extra, provider=provider))["KeyMetadata"]
        return str(meta["Arn"])

    return create


@pytest.fixture
def key_arn(create_key: Callable[..., str]) -> str:
    return create_key()


@pytest.fixture
def kms(kmslocal: KmsLocal) -> BotoKms:
    return BotoKms(settings(kmslocal))


@pytest.fixture
def faults(kmslocal: KmsLocal) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Inject kmslocal faults; all of them are cleared afterwards, pass or fail."""
    kmslocal.dev_call("DELETE", "/_kmslocal/faults")

    def add(spec: dict[str, Any]) -> None:
        kmslocal.dev_call("POST", "/_kmslocal/faults", spec)

    try:
        yield add
    finally:
        kmslocal.dev_call("DELETE", "/_kmslocal/faults")


@pytest.fixture
def since(kmslocal: KmsLocal) -> dt.datetime:
    return kmslocal_now(kmslocal)


# --- round trips and the usage log ------------------------------------------------------


def test_generate_data_key_then_decrypt(
    kms: BotoKms, key_arn: str, kmslocal: KmsLocal, since: dt.datetime
) -> None:
    context = ctx(f"gdk-{uuid.uuid4().hex[:8]}")
    generated = kms.generate_data_key(key_arn, context)
    assert isinstance(generated.plaintext, bytearray)
    assert len(generated.plaintext) == 32
    assert generated.wrapped
    assert bytes(generated.plaintext) not in generated.wrapped
    assert generated.key_arn == key_arn
    assert generated.request_id

    unwrapped = kms.decrypt(key_arn, generated.wrapped, context)
    assert isinstance(unwrapped.plaintext, bytearray)
    assert unwrapped.plaintext == generated.plaintext
    assert unwrapped.key_arn == key_arn
    assert unwrapped.request_id
    assert unwrapped.request_id != generated.request_id

    for request_id, name in ((generated.request_id, "GenerateDataKey"),
                             (unwrapped.request_id, "Decrypt")):
        record = record_for(kmslocal, since, request_id)
        assert record["eventName"] == name
        assert record["requestParameters"]["encryptionContext"] == context
        assert record["userIdentity"]["accountId"] == PROVIDER_ACCOUNT
        assert record["resources"][0]["ARN"] == key_arn
        assert "errorCode" not in record
        # The usage log never holds the data key, in any encoding.
        text = json.dumps(record)
        for form in secret_forms(bytes(generated.plaintext))[1:]:
            assert form not in text


def test_encrypt_then_decrypt(
    kms: BotoKms, key_arn: str, kmslocal: KmsLocal, since: dt.datetime
) -> None:
    context = ctx("enc", "auth", 3)
    plaintext = os.urandom(32)
    out = kms.encrypt(key_arn, plaintext, context)
    assert out.key_arn == key_arn
    assert out.request_id
    assert plaintext not in out.blob
    back = kms.decrypt(key_arn, out.blob, context)
    assert bytes(back.plaintext) == plaintext
    record = record_for(kmslocal, since, out.request_id)
    assert record["eventName"] == "Encrypt"
    assert record["requestParameters"]["encryptionContext"] == context


def test_re_encrypt_moves_a_blob_to_another_key(
    kms: BotoKms, create_key: Callable[..., str], kmslocal: KmsLocal, since: dt.datetime
) -> None:
    source = create_key(REENCRYPT_STATEMENT)
    dest = create_key(REENCRYPT_STATEMENT)
    context = ctx("rewrap", "backups", 2)
    generated = kms.generate_data_key(source, context)
    moved = kms.re_encrypt(source, generated.wrapped, context, dest, context)
    assert moved.key_arn == dest
    assert moved.request_id
    assert moved.blob != generated.wrapped
    assert kms.decrypt(dest, moved.blob, context).plaintext == generated.plaintext
    with pytest.raises(KmsInvalidCiphertext):
        kms.decrypt(source, moved.blob, context)  # the blob names the destination key
    record = record_for(kmslocal, since, moved.request_id)
    assert record["eventName"] == "ReEncrypt"
    params = record["requestParameters"]
    assert params["sourceEncryptionContext"] == context
    assert params["destinationEncryptionContext"] == context
    assert {r["ARN"] for r in record["resources"]} == {source, dest}


def test_describe_key(kms: BotoKms, key_arn: str, kmslocal: KmsLocal, since: dt.datetime,
                      customer: Any) -> None:
    described = kms.describe_key(key_arn)
    assert described.arn == key_arn
    assert described.account == CUSTOMER_ACCOUNT
    assert described.key_state == "Enabled"
    assert described.enabled is True
    assert described.key_spec == "SYMMETRIC_DEFAULT"
    assert described.key_usage == "ENCRYPT_DECRYPT"
    assert described.origin == "AWS_KMS"
    assert described.multi_region is False
    assert described.deletion_date is None
    assert described.request_id
    assert record_for(kmslocal, since, described.request_id)["eventName"] == "DescribeKey"

    customer.schedule_key_deletion(KeyId=key_arn, PendingWindowInDays=7)
    pending = kms.describe_key(key_arn)
    assert pending.key_state == "PendingDeletion"
    assert pending.enabled is False
    assert pending.deletion_date is not None
    expected = kmslocal_now(kmslocal).timestamp() + 7 * DAY
    assert abs(pending.deletion_date - expected) < 120


# --- revocations: the customer took the key away ----------------------------------------


def _wrapped(kms: BotoKms, key_arn: str) -> bytes:
    return kms.generate_data_key(key_arn, ctx()).wrapped


def _assert_revoked(
    call: Callable[[], object], reason: RevocationReason, operation: str, kms_code: str,
    kmslocal: KmsLocal, since: dt.datetime,
) -> KeyRevoked:
    with pytest.raises(KeyRevoked) as caught:
        call()
    err = caught.value
    assert err.reason is reason
    assert err.code == "key_revoked"
    assert err.operation == operation
    assert err.kms_code == kms_code
    assert err.request_id
    # The refusal is in the customer's usage log under the same request id.
    record = record_for(kmslocal, since, err.request_id)
    assert record["eventName"] == operation
    assert record["errorCode"] == kms_code
    return err


def test_disabled_key_is_revoked(kms: BotoKms, key_arn: str, customer: Any,
                                 kmslocal: KmsLocal, since: dt.datetime) -> None:
    wrapped = _wrapped(kms, key_arn)
    customer.disable_key(KeyId=key_arn)
    secret = b"plaintext-never-in-errors-" + os.urandom(8).hex().encode()
    _assert_revoked(lambda: kms.decrypt(key_arn, wrapped, ctx()), RevocationReason.DISABLED,
                    "Decrypt", "DisabledException", kmslocal, since)
    _assert_revoked(lambda: kms.generate_data_key(key_arn, ctx()), RevocationReason.DISABLED,
                    "GenerateDataKey", "DisabledException", kmslocal, since)
    err = _assert_revoked(lambda: kms.encrypt(key_arn, secret, ctx()),
                          RevocationReason.DISABLED, "Encrypt", "DisabledException",
                          kmslocal, since)
    assert_no_secret(err, secret)


def test_key_pending_deletion_is_revoked(kms: BotoKms, key_arn: str, customer: Any,
                                         kmslocal: KmsLocal, since: dt.datetime) -> None:
    wrapped = _wrapped(kms, key_arn)
    customer.schedule_key_deletion(KeyId=key_arn, PendingWindowInDays=7)
    _assert_revoked(lambda: kms.decrypt(key_arn, wrapped, ctx()),
                    RevocationReason.PENDING_DELETION, "Decrypt", "KMSInvalidStateException",
                    kmslocal, since)
    _assert_revoked(lambda: kms.generate_data_key(key_arn, ctx()),
                    RevocationReason.PENDING_DELETION, "GenerateDataKey",
                    "KMSInvalidStateException", kmslocal, since)


def test_deleted_key_is_revoked_not_found(kms: BotoKms, key_arn: str, customer: Any,
                                          kmslocal: KmsLocal) -> None:
    wrapped = _wrapped(kms, key_arn)
    customer.schedule_key_deletion(KeyId=key_arn, PendingWindowInDays=30)
    kmslocal.advance(31 * DAY)
    for call, operation in ((lambda: kms.decrypt(key_arn, wrapped, ctx()), "Decrypt"),
                            (lambda: kms.generate_data_key(key_arn, ctx()), "GenerateDataKey"),
                            (lambda: kms.describe_key(key_arn), "DescribeKey")):
        with pytest.raises(KeyRevoked) as caught:
            call()
        assert caught.value.reason is RevocationReason.NOT_FOUND
        assert caught.value.kms_code == "NotFoundException"
        assert caught.value.operation == operation
        assert caught.value.request_id


def test_policy_without_the_provider_is_access_denied(
    kms: BotoKms, create_key: Callable[..., str], kmslocal: KmsLocal, since: dt.datetime
) -> None:
    key = create_key(provider=False)
    _assert_revoked(lambda: kms.generate_data_key(key, ctx()), RevocationReason.ACCESS_DENIED,
                    "GenerateDataKey", "AccessDeniedException", kmslocal, since)
    _assert_revoked(lambda: kms.describe_key(key), RevocationReason.ACCESS_DENIED,
                    "DescribeKey", "AccessDeniedException", kmslocal, since)


def test_revoked_grant_is_access_denied(
    kms: BotoKms, create_key: Callable[..., str], customer: Any, kmslocal: KmsLocal,
    since: dt.datetime,
) -> None:
    key = create_key(provider=False)  # the provider's only way in is a grant
    grant = customer.create_grant(
        KeyId=key, GranteePrincipal=PROVIDER[0],
        Operations=["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"],
    )
    generated = kms.generate_data_key(key, ctx())
    assert kms.decrypt(key, generated.wrapped, ctx()).plaintext == generated.plaintext
    customer.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    _assert_revoked(lambda: kms.decrypt(key, generated.wrapped, ctx()),
                    RevocationReason.ACCESS_DENIED, "Decrypt", "AccessDeniedException",
                    kmslocal, since)


# --- transient failures -----------------------------------------------------------------


@pytest.mark.parametrize("error", ["ThrottlingException", "KMSInternalException"])
def test_injected_server_errors_are_unavailable(
    kms: BotoKms, key_arn: str, faults: Callable[[dict[str, Any]], None], error: str
) -> None:
    generated = kms.generate_data_key(key_arn, ctx())
    faults({"operations": ["Decrypt"], "error": error, "count": 1})
    with pytest.raises(KmsUnavailable) as caught:
        kms.decrypt(key_arn, generated.wrapped, ctx())
    err = caught.value
    assert err.code == "kms_unavailable"
    assert err.operation == "Decrypt"
    assert err.kms_code == error
    assert err.request_id
    assert_no_secret(err, bytes(generated.plaintext))
    # max_attempts=1: the one failure used up the fault; the next call goes through.
    assert kms.decrypt(key_arn, generated.wrapped, ctx()).plaintext == generated.plaintext


def test_timeout_is_unavailable(
    kmslocal: KmsLocal, key_arn: str, faults: Callable[[dict[str, Any]], None]
) -> None:
    impatient = BotoKms(settings(kmslocal, read_timeout=0.5))
    impatient.describe_key(key_arn)  # a warm connection
    faults({"operations": ["DescribeKey"], "error": "timeout", "latency_ms": 10_000})
    started = time.monotonic()
    with pytest.raises(KmsUnavailable) as caught:
        impatient.describe_key(key_arn)
    assert time.monotonic() - started < 5
    assert caught.value.operation == "DescribeKey"


def test_unreachable_endpoint_is_unavailable() -> None:
    kms = BotoKms(KmsSettings(
        region=REGION, endpoint_url=f"http://127.0.0.1:{closed_port()}",
        access_key_id=PROVIDER[1], secret_access_key=PROVIDER[2], max_attempts=1,
    ))
    arn = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.uuid4()}"
    secret = os.urandom(32)
    for call, operation in ((lambda: kms.generate_data_key(arn, ctx()), "GenerateDataKey"),
                            (lambda: kms.encrypt(arn, secret, ctx()), "Encrypt"),
                            (lambda: kms.describe_key(arn), "DescribeKey")):
        with pytest.raises(KmsUnavailable) as caught:
            call()
        assert caught.value.operation == operation
        assert caught.value.kms_code is None
        assert_no_secret(caught.value, secret)


# --- the provider's own mistakes --------------------------------------------------------


def test_wrong_provider_secret_is_misconfigured(kmslocal: KmsLocal, key_arn: str) -> None:
    wrong = BotoKms(settings(kmslocal, secret_access_key="not-the-provider-secret"))
    secret = os.urandom(16)
    for call in (lambda: wrong.generate_data_key(key_arn, ctx()),
                 lambda: wrong.encrypt(key_arn, secret, ctx())):
        with pytest.raises(KmsMisconfigured) as caught:
            call()
        err = caught.value
        assert err.code == "kms_misconfigured"
        assert err.kms_code in {"InvalidSignatureException", "UnrecognizedClientException",
                                "SignatureDoesNotMatch"}
        assert err.request_id
        assert_no_secret(err, secret, b"not-the-provider-secret")


GOOD_ARN = f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.UUID(int=7)}"
OTHER_REGION_ARN = f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:key/{uuid.UUID(int=7)}"
MALFORMED = [
    "alias/acme", str(uuid.UUID(int=7)), "arn:aws:kms:us-west-2:22222222222:key/x",
    f"arn:aws:kms:{REGION}:{CUSTOMER_ACCOUNT}:alias/acme",
    f"arn:aws:s3:{REGION}:{CUSTOMER_ACCOUNT}:key/{uuid.UUID(int=7)}", "",
]


def _calls(kms: BotoKms, arn: str, context: dict[str, str]) -> list[tuple[str, Any]]:
    return [
        ("GenerateDataKey", lambda: kms.generate_data_key(arn, context)),
        ("Decrypt", lambda: kms.decrypt(arn, b"\x01" * 64, context)),
        ("Encrypt", lambda: kms.encrypt(arn, b"secret-plaintext", context)),
        ("ReEncrypt", lambda: kms.re_encrypt(arn, b"\x01" * 64, context, GOOD_ARN, ctx())),
        ("ReEncrypt", lambda: kms.re_encrypt(GOOD_ARN, b"\x01" * 64, ctx(), arn, context)),
    ]


def _offline() -> BotoKms:
    return BotoKms(KmsSettings(region=REGION), client=NoCalls())  # type: ignore[arg-type]


@pytest.mark.parametrize("arn", MALFORMED)
def test_malformed_arn_is_refused_before_any_call(arn: str) -> None:
    kms = _offline()
    calls = [*_calls(kms, arn, ctx()), ("DescribeKey", lambda: kms.describe_key(arn))]
    for _, call in calls:
        with pytest.raises(KmsMisconfigured) as caught:
            call()
        assert caught.value.kms_code is None
        assert caught.value.request_id is None
        assert "not a KMS key ARN" in caught.value.message


def test_malformed_arn_error_names_the_refused_operation() -> None:
    """Like every other KMS error, it says which port call was refused."""
    kms = _offline()
    arn = "alias/acme"
    calls = [*_calls(kms, arn, ctx()), ("DescribeKey", lambda: kms.describe_key(arn))]
    refused = []
    for operation, call in calls:
        with pytest.raises(KmsMisconfigured) as caught:
            call()
        refused.append((operation, caught.value.operation))
    assert refused == [(op, op) for op, _ in calls]


def test_arn_in_another_region_is_refused_before_any_call() -> None:
    kms = _offline()
    calls = [*_calls(kms, OTHER_REGION_ARN, ctx()),
             ("DescribeKey", lambda: kms.describe_key(OTHER_REGION_ARN))]
    for operation, call in calls:
        with pytest.raises(KmsMisconfigured) as caught:
            call()
        assert caught.value.operation == operation
        assert "eu-west-1" in caught.value.message


def test_empty_encryption_context_is_refused_before_any_call() -> None:
    kms = _offline()
    for operation, call in _calls(kms, GOOD_ARN, {}):
        with pytest.raises(KmsMisconfigured) as caught:
            call()
        assert caught.value.operation == operation
        assert_no_secret(caught.value, b"secret-plaintext")


def test_too_large_plaintext_is_misconfigured_without_echoing_it(
    kms: BotoKms, key_arn: str
) -> None:
    secret = os.urandom(2500).hex().encode()[:5000]
    with pytest.raises(KmsMisconfigured) as caught:
        kms.encrypt(key_arn, secret, ctx())
    assert caught.value.operation == "Encrypt"
    assert_no_secret(caught.value, secret, secret[:32])


# --- ciphertexts that do not decrypt ----------------------------------------------------


def test_tampered_wrapped_key_is_invalid_ciphertext(
    kms: BotoKms, key_arn: str, kmslocal: KmsLocal, since: dt.datetime
) -> None:
    generated = kms.generate_data_key(key_arn, ctx())
    tampered = bytearray(generated.wrapped)
    tampered[-1] ^= 0x01
    with pytest.raises(KmsInvalidCiphertext) as caught:
        kms.decrypt(key_arn, bytes(tampered), ctx())
    err = caught.value
    assert err.code == "kms_invalid_ciphertext"
    assert err.operation == "Decrypt"
    assert err.kms_code == "InvalidCiphertextException"
    assert err.request_id
    assert record_for(kmslocal, since, err.request_id)["errorCode"] == (
        "InvalidCiphertextException")
    assert_no_secret(err, bytes(generated.plaintext))

    with pytest.raises(KmsInvalidCiphertext):
        kms.decrypt(key_arn, generated.wrapped[:20], ctx())  # truncated


@pytest.mark.parametrize("wrong", [
    ctx("other-tenant"), ctx(category="auth"), ctx(epoch=2),
    {**ctx(), "extra": "pair"},
])
def test_wrong_encryption_context_is_invalid_ciphertext(
    kms: BotoKms, key_arn: str, wrong: dict[str, str]
) -> None:
    generated = kms.generate_data_key(key_arn, ctx())
    with pytest.raises(KmsInvalidCiphertext) as caught:
        kms.decrypt(key_arn, generated.wrapped, wrong)
    assert caught.value.kms_code == "InvalidCiphertextException"
    assert caught.value.request_id
    assert_no_secret(caught.value, bytes(generated.plaintext))


def test_blob_of_another_key_is_invalid_ciphertext(
    kms: BotoKms, create_key: Callable[..., str]
) -> None:
    one, two = create_key(), create_key()
    generated = kms.generate_data_key(one, ctx())
    with pytest.raises(KmsInvalidCiphertext) as caught:
        kms.decrypt(two, generated.wrapped, ctx())
    assert caught.value.kms_code == "IncorrectKeyException"


# --- classify, as a unit ----------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [
    ("DisabledException", RevocationReason.DISABLED),
    ("KMSInvalidStateException", RevocationReason.PENDING_DELETION),
    ("NotFoundException", RevocationReason.NOT_FOUND),
    ("AccessDeniedException", RevocationReason.ACCESS_DENIED),
    ("InvalidGrantTokenException", RevocationReason.GRANT_REVOKED),
    ("InvalidGrantIdException", RevocationReason.GRANT_REVOKED),
])
def test_classify_revocations(code: str, reason: RevocationReason) -> None:
    err = classify(code, "msg", operation="Decrypt", request_id="rid-1")
    assert isinstance(err, KeyRevoked)
    assert err.reason is reason
    assert (err.operation, err.kms_code, err.request_id) == ("Decrypt", code, "rid-1")
    assert code in err.message


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("ThrottlingException", 400, KmsUnavailable),
    ("KMSInternalException", 500, KmsUnavailable),
    ("DependencyTimeoutException", 503, KmsUnavailable),
    ("ServiceUnavailable", 503, KmsUnavailable),
    ("InvalidCiphertextException", 400, KmsInvalidCiphertext),
    ("IncorrectKeyException", 400, KmsInvalidCiphertext),
    ("InvalidKeyUsageException", 400, KmsMisconfigured),
    ("UnrecognizedClientException", 400, KmsMisconfigured),
    ("InvalidSignatureException", 400, KmsMisconfigured),
    ("ValidationException", 400, KmsMisconfigured),
    ("SomethingNewException", 500, KmsUnavailable),  # unknown 5xx: transient
    ("SomethingNewException", 502, KmsUnavailable),
    ("SomethingNewException", 400, KmsMisconfigured),  # unknown 4xx: not transient
    ("SomethingNewException", 403, KmsMisconfigured),
])
def test_classify_by_code(code: str, status: int, kind: type[KmsError]) -> None:
    err = classify(code, "detail", operation="Encrypt", request_id="rid-2", status=status)
    assert type(err) is kind
    assert (err.operation, err.kms_code, err.request_id) == ("Encrypt", code, "rid-2")


def test_classify_unknown_4xx_says_it_is_unrecognized() -> None:
    err = classify("BrandNewException", "", operation="Decrypt", request_id=None, status=400)
    assert isinstance(err, KmsMisconfigured)
    assert "unrecognized" in err.message
    assert err.request_id is None
