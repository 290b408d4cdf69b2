"""The KMS port: the five calls the provider makes to a customer's key.

Every cryptographic call names its encryption context, so the customer's usage log
says which tenant, data category and epoch each call was for. Implementations raise
only the ``cmek.kms.errors`` taxonomy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cmek.kms.errors import KmsMisconfigured

EncryptionContext = Mapping[str, str]

_KEY_ARN = re.compile(
    r"^arn:(aws|aws-cn|aws-us-gov):kms:([a-z]{2}(?:-[a-z]+)+-\d):(\d{12}):key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)


@dataclass(frozen=True)
class KeyArn:
    arn: str
    partition: str
    region: str
    account: str
    key_id: str

    @classmethod
    def parse(cls, arn: str, operation: str = "ParseArn") -> KeyArn:
        m = _KEY_ARN.match(arn) if isinstance(arn, str) else None
        if m is None:
            raise KmsMisconfigured(
                f"not a KMS key ARN: {str(arn)[:200]!r} "
                "(expected arn:aws:kms:REGION:ACCOUNT:key/ID)",
                operation=operation,
            )
        return cls(arn, *m.groups())


@dataclass(frozen=True)
class GeneratedDataKey:
    plaintext: bytearray  # the caller wipes it once it holds its own copy
    wrapped: bytes
    key_arn: str
    request_id: str


@dataclass(frozen=True)
class UnwrappedDataKey:
    plaintext: bytearray
    key_arn: str
    request_id: str


@dataclass(frozen=True)
class Ciphertext:
    blob: bytes
    key_arn: str
    request_id: str


@dataclass(frozen=True)
class KeyDescription:
    arn: str
    account: str
    key_state: str
    enabled: bool
    key_spec: str
    key_usage: str
    origin: str
    multi_region: bool
    deletion_date: float | None
    request_id: str


@dataclass(frozen=True)
class CallerIdentity:
    """Who the port's credentials are: what the customer's usage log will name."""

    account: str
    arn: str


class Kms(Protocol):
    def generate_data_key(self, key_arn: str, context: EncryptionContext) -> GeneratedDataKey: ...

    def decrypt(
        self, key_arn: str, wrapped: bytes, context: EncryptionContext
    ) -> UnwrappedDataKey: ...

    def encrypt(self, key_arn: str, plaintext: bytes, context: EncryptionContext) -> Ciphertext: ...

    def re_encrypt(
        self, source_arn: str, wrapped: bytes, context: EncryptionContext, dest_arn: str,
        dest_context: EncryptionContext,
    ) -> Ciphertext: ...

    def describe_key(self, key_arn: str) -> KeyDescription: ...

    def caller_identity(self) -> CallerIdentity: ...
