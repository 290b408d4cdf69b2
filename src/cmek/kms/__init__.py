"""The KMS port: the provider's calls to the customer's key, and their error taxonomy."""

from cmek.kms.boto import BotoKms, KmsSettings
from cmek.kms.errors import (
    KeyRevoked,
    KmsError,
    KmsInvalidCiphertext,
    KmsMisconfigured,
    KmsUnavailable,
    RevocationReason,
    classify,
)
from cmek.kms.port import (
    CallerIdentity,
    Ciphertext,
    EncryptionContext,
    GeneratedDataKey,
    KeyArn,
    KeyDescription,
    Kms,
    UnwrappedDataKey,
)

__all__ = [
    "BotoKms", "CallerIdentity", "Ciphertext", "EncryptionContext", "GeneratedDataKey", "KeyArn",
    "KeyDescription", "KeyRevoked", "Kms", "KmsError", "KmsInvalidCiphertext",
    "KmsMisconfigured", "KmsSettings", "KmsUnavailable", "RevocationReason",
    "UnwrappedDataKey", "classify",
]
