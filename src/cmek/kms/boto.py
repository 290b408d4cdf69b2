"""The KMS port over boto3: the same code against AWS KMS and against kmslocal.

Retries: botocore's ``standard`` mode, ``max_attempts`` in total (default 3), which
retries throttling, 5xx and connection errors with jittered exponential backoff. A
call that still fails surfaces as ``KmsUnavailable``; the lifecycle engine decides
what an outage means. Timeouts are short (connect 2 s, read 5 s by default; the
platform's ``kms_connect_timeout`` and ``kms_read_timeout``) because a slow KMS is
treated as an unavailable one. botocore's standard mode also keeps a retry quota per
client: during a long outage it stops retrying until calls succeed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bx
from botocore.config import Config

from cmek.kms.errors import KmsMisconfigured, KmsUnavailable, classify
from cmek.kms.port import (
    CallerIdentity,
    Ciphertext,
    EncryptionContext,
    GeneratedDataKey,
    KeyArn,
    KeyDescription,
    UnwrappedDataKey,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

T = TypeVar("T")


class _RedactKmsPayloads(logging.Filter):
    """botocore logs request and response bodies at DEBUG; for KMS those carry plaintext
    data keys. A record that mentions one is replaced by a note, whatever the level."""

    _MARKERS = ("Plaintext", "CiphertextBlob")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot even format is dropped, not leaked
            return False
        if any(marker in text for marker in self._MARKERS):
            record.msg, record.args = "<KMS payload redacted by cmek>", ()
        return True


_REDACTOR = _RedactKmsPayloads()
for _name in ("botocore.parsers", "botocore.endpoint", "botocore.awsrequest",
              "botocore.httpsession", "botocore.hooks", "urllib3.connectionpool"):
    if _REDACTOR not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACTOR)

_UNREACHABLE = (
    bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
    bx.ConnectionClosedError, bx.ProxyConnectionError,
)
_NO_CREDENTIALS = (
    bx.NoCredentialsError, bx.PartialCredentialsError, bx.ProfileNotFound, bx.NoRegionError,
)


@dataclass(frozen=True)
class KmsSettings:
    region: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3


class BotoKms:
    def __init__(self, settings: KmsSettings, client: KMSClient | None = None) -> None:
        self.settings = settings
        self._session = boto3.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            profile_name=settings.profile, region_name=settings.region,
        ) if client is None else None
        self._config = Config(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
            max_pool_connections=32,
        )
        if client is None:
            assert self._session is not None
            client = self._session.client("kms", endpoint_url=settings.endpoint_url,
                                          config=self._config)
        self.client = client

    # --- the port ---------------------------------------------------------------------
    def generate_data_key(self, key_arn: str, context: EncryptionContext) -> GeneratedDataKey:
        self._check(key_arn, context, "GenerateDataKey")
        out = self._call("GenerateDataKey", lambda: self.client.generate_data_key(
            KeyId=key_arn, KeySpec="AES_256", EncryptionContext=dict(context)))
        return GeneratedDataKey(
            bytearray(out["Plaintext"]), out["CiphertextBlob"], out["KeyId"], _rid(out)
        )

    def decrypt(
        self, key_arn: str, wrapped: bytes, context: EncryptionContext
    ) -> UnwrappedDataKey:
        self._check(key_arn, context, "Decrypt")
        out = self._call("Decrypt", lambda: self.client.decrypt(
            KeyId=key_arn, CiphertextBlob=wrapped, EncryptionContext=dict(context)))
        return UnwrappedDataKey(bytearray(out["Plaintext"]), out["KeyId"], _rid(out))

    def encrypt(self, key_arn: str, plaintext: bytes, context: EncryptionContext) -> Ciphertext:
        self._check(key_arn, context, "Encrypt")
        out = self._call("Encrypt", lambda: self.client.encrypt(
            KeyId=key_arn, Plaintext=plaintext, EncryptionContext=dict(context)))
        return Ciphertext(out["CiphertextBlob"], out["KeyId"], _rid(out))

    def re_encrypt(
        self, source_arn: str, wrapped: bytes, context: EncryptionContext, dest_arn: str,
        dest_context: EncryptionContext,
    ) -> Ciphertext:
        self._check(source_arn, context, "ReEncrypt")
        self._check(dest_arn, dest_context, "ReEncrypt")
        out = self._call("ReEncrypt", lambda: self.client.re_encrypt(
            CiphertextBlob=wrapped, SourceKeyId=source_arn, SourceEncryptionContext=dict(context),
            DestinationKeyId=dest_arn, DestinationEncryptionContext=dict(dest_context)))
        return Ciphertext(out["CiphertextBlob"], out["KeyId"], _rid(out))

    def describe_key(self, key_arn: str) -> KeyDescription:
        self._check(key_arn, None, "DescribeKey")
        out = self._call("DescribeKey", lambda: self.client.describe_key(KeyId=key_arn))
        meta = out["KeyMetadata"]
        deletion = meta.get("DeletionDate")
        return KeyDescription(
            arn=meta["Arn"], account=meta.get("AWSAccountId", ""), key_state=meta["KeyState"],
            enabled=meta["Enabled"], key_spec=meta.get("KeySpec", "SYMMETRIC_DEFAULT"),
            key_usage=meta.get("KeyUsage", "ENCRYPT_DECRYPT"), origin=meta.get("Origin", ""),
            multi_region=bool(meta.get("MultiRegion", False)),
            deletion_date=deletion.timestamp() if deletion is not None else None,
            request_id=_rid(out),
        )

    def caller_identity(self) -> CallerIdentity:
        """STS GetCallerIdentity with the same credentials, at the same endpoint when one
        is set (kmslocal answers it; AWS's own STS otherwise)."""
        if self._session is None:
            raise KmsMisconfigured("this port was given a client: its identity is unknown",
                                   operation="GetCallerIdentity")
        sts = self._session.client("sts", endpoint_url=self.settings.endpoint_url,
                                   config=self._config)
        out = self._call("GetCallerIdentity", sts.get_caller_identity)
        return CallerIdentity(account=str(out["Account"]), arn=str(out["Arn"]))

    # --- plumbing ---------------------------------------------------------------------
    def _check(self, key_arn: str, context: EncryptionContext | None, operation: str) -> None:
        """Refuse misuse before any network call: full ARN, our region, a context."""
        arn = KeyArn.parse(key_arn, operation)
        if arn.region != self.settings.region:
            raise KmsMisconfigured(
                f"key {key_arn} is in region {arn.region}, the platform uses "
                f"{self.settings.region}", operation=operation,
            )
        if context is not None and not context:
            raise KmsMisconfigured(
                "every KMS call must carry an encryption context", operation=operation
            )

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except bx.ClientError as e:
            err = e.response.get("Error", {})
            meta = e.response.get("ResponseMetadata", {})
            raise classify(
                str(err.get("Code", "Unknown")), str(err.get("Message", ""))[:300],
                operation=operation, request_id=meta.get("RequestId"),
                status=int(meta.get("HTTPStatusCode", 400)),
            ) from None
        except _UNREACHABLE as e:
            raise KmsUnavailable(
                f"{operation}: KMS unreachable ({type(e).__name__})", operation=operation
            ) from None
        except _NO_CREDENTIALS as e:
            raise KmsMisconfigured(
                f"{operation}: no usable AWS credentials ({type(e).__name__})",
                operation=operation,
            ) from None
        except bx.ParamValidationError as e:
            raise KmsMisconfigured(f"{operation}: {e}"[:300], operation=operation) from None


def _rid(out: Any) -> str:
    return str(out.get("ResponseMetadata", {}).get("RequestId", ""))
