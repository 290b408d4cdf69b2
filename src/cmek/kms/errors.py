"""The KMS error taxonomy the rest of cmek acts on, classified by AWS error code only.

- ``KeyRevoked``: the customer took the key away (disabled, pending deletion, deleted,
  access denied, grant gone). The lifecycle engine locks the tenant at once.
- ``KmsUnavailable``: throttling, KMS internal errors, timeouts, connection failures.
  Transient: serve from cache for a bounded grace, never lock on one of these.
- ``KmsMisconfigured``: a wrong key spec or usage, a malformed ARN, a wrong region,
  bad provider credentials. The provider's mistake, not the customer's decision.
- ``KmsInvalidCiphertext``: the wrapped blob does not decrypt under that key/context.
"""

from __future__ import annotations

from enum import StrEnum

from cmek.errors import CmekError


class RevocationReason(StrEnum):
    DISABLED = "disabled"
    PENDING_DELETION = "pending_deletion"
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    GRANT_REVOKED = "grant_revoked"


class KmsError(CmekError):
    code = "kms_error"

    def __init__(
        self, message: str, *, operation: str, kms_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.kms_code = kms_code
        self.request_id = request_id


class KeyRevoked(KmsError):
    code = "key_revoked"

    def __init__(self, message: str, *, reason: RevocationReason, operation: str,
                 kms_code: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message, operation=operation, kms_code=kms_code, request_id=request_id)
        self.reason = reason


class KmsUnavailable(KmsError):
    code = "kms_unavailable"


class KmsMisconfigured(KmsError):
    code = "kms_misconfigured"


class KmsInvalidCiphertext(KmsError):
    code = "kms_invalid_ciphertext"


_REVOKED = {
    "DisabledException": RevocationReason.DISABLED,
    # For a symmetric AWS_KMS key (the only kind cmek accepts) this is PendingDeletion.
    "KMSInvalidStateException": RevocationReason.PENDING_DELETION,
    "NotFoundException": RevocationReason.NOT_FOUND,
    "AccessDeniedException": RevocationReason.ACCESS_DENIED,
    "InvalidGrantTokenException": RevocationReason.GRANT_REVOKED,
    "InvalidGrantIdException": RevocationReason.GRANT_REVOKED,
}
_UNAVAILABLE = frozenset({
    "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "LimitExceededException",
    "KMSInternalException", "KeyUnavailableException", "DependencyTimeoutException",
    "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout",
    "RequestTimeoutException",
})
_MISCONFIGURED = frozenset({
    "InvalidKeyUsageException", "InvalidArnException", "ValidationException",
    "UnsupportedOperationException", "UnrecognizedClientException", "InvalidSignatureException",
    "IncompleteSignatureException", "MissingAuthenticationTokenException",
    "ExpiredTokenException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "SerializationException", "UnknownOperationException", "DryRunOperationException",
})
_INVALID_CIPHERTEXT = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


def classify(
    kms_code: str, message: str, *, operation: str, request_id: str | None, status: int = 400
) -> KmsError:
    """Map an AWS error code to the taxonomy; unknown 5xx are transient, unknown 4xx not."""
    detail = f"{operation}: {kms_code}" + (f": {message}" if message else "")
    if kms_code in _REVOKED:
        return KeyRevoked(detail, reason=_REVOKED[kms_code], operation=operation,
                          kms_code=kms_code, request_id=request_id)
    kind: type[KmsError]
    if kms_code in _UNAVAILABLE or status >= 500:
        kind = KmsUnavailable
    elif kms_code in _INVALID_CIPHERTEXT:
        kind = KmsInvalidCiphertext
    elif kms_code in _MISCONFIGURED:
        kind = KmsMisconfigured
    else:
        kind, detail = KmsMisconfigured, f"{detail} (unrecognized KMS error)"
    return kind(detail, operation=operation, kms_code=kms_code, request_id=request_id)
