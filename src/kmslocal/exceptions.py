"""Errors with the codes and HTTP statuses AWS KMS, and STS for GetCallerIdentity, use.

Every refusal kmslocal makes is one of these; the protocol layer turns it into
``{"__type": code, "message": ...}`` (KMS, CloudTrail) or an ``<ErrorResponse>`` (STS)
so boto3 raises the same ``ClientError`` code as against AWS.
"""

from __future__ import annotations

# AWS KMS answers 400 for every client-side error; these are the exceptions.
_STATUS: dict[str, int] = {
    "KMSInternalException": 500,
    "KeyUnavailableException": 500,
    "DependencyTimeoutException": 503,
    "UnrecognizedClientException": 400,
    "InvalidSignatureException": 400,
    "MissingAuthenticationTokenException": 403,
    "UnknownOperationException": 400,
    "SerializationException": 400,
    # STS (the query protocol) answers 403 to a credential it cannot accept.
    "MissingAuthenticationToken": 403,
    "InvalidClientTokenId": 403,
    "SignatureDoesNotMatch": 403,
    "InternalFailure": 500,
}

# The same refusals as STS names them: SigV4 and the shared checks raise KMS's names.
# Codes and statuses: "Common Errors" in the AWS STS API Reference
# (https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html); STS answers a
# bad signature, an expired one included, with SignatureDoesNotMatch (403), and a
# request without Authorization with MissingAuthenticationToken (403).
_QUERY_CODES: dict[str, tuple[str, str | None]] = {
    "MissingAuthenticationTokenException": (
        "MissingAuthenticationToken", "Request is missing Authentication Token"
    ),
    "IncompleteSignatureException": ("IncompleteSignature", None),
    "UnrecognizedClientException": ("InvalidClientTokenId", None),
    "InvalidSignatureException": ("SignatureDoesNotMatch", None),
    "ValidationException": ("ValidationError", None),
    "KMSInternalException": ("InternalFailure", None),
}


class KMSError(Exception):
    """A refusal with an AWS error code; never carries secret material."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return _STATUS.get(self.code, 400)


def as_query_error(err: KMSError) -> KMSError:
    """``err`` under the name the query protocol (STS) gives it."""
    renamed = _QUERY_CODES.get(err.code)
    if renamed is None:
        return err
    code, message = renamed
    return KMSError(code, err.message if message is None else message)


def not_found(message: str) -> KMSError:
    return KMSError("NotFoundException", message)


def validation(message: str) -> KMSError:
    return KMSError("ValidationException", message)


def invalid_state(message: str) -> KMSError:
    return KMSError("KMSInvalidStateException", message)


def disabled(arn: str) -> KMSError:
    return KMSError("DisabledException", f"{arn} is disabled.")


def access_denied(principal: str, action: str, resource: str) -> KMSError:
    return KMSError(
        "AccessDeniedException",
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
        "because no resource-based policy allows the action",
    )


def explicit_deny(principal: str, action: str, resource: str) -> KMSError:
    return KMSError(
        "AccessDeniedException",
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
        "with an explicit deny in a resource-based policy",
    )


def invalid_ciphertext() -> KMSError:
    return KMSError("InvalidCiphertextException", "")


def malformed_policy(message: str) -> KMSError:
    return KMSError("MalformedPolicyDocumentException", message)
