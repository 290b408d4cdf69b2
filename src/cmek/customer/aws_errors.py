"""What a failed AWS call made with the customer's credentials shows: one line, and a
distinct error for credentials that do not work and for an endpoint that does not answer,
so that the command line can say what to do about each.
"""

from __future__ import annotations

from collections.abc import Callable

import botocore.exceptions as bx

from cmek.errors import CmekError


class CustomerKeyError(CmekError):
    """A failed AWS call made for the customer: ``step`` names the call, ``aws_code`` is
    AWS's error code when AWS answered, ``key_arn`` the key left behind, if any."""

    code = "customer_key_error"

    def __init__(self, message: str, *, step: str, aws_code: str | None = None,
                 key_arn: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.aws_code = aws_code
        self.key_arn = key_arn


class CredentialsInvalid(CustomerKeyError):
    code = "credentials_invalid"
    hint = ("set working AWS credentials: --profile, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY")


class EndpointUnreachable(CustomerKeyError):
    code = "endpoint_unreachable"
    hint = "check the endpoint and the network"


_CREDENTIAL_CODES = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignatureException",
    "MissingAuthenticationTokenException", "ExpiredTokenException", "ExpiredToken",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "AuthFailure",
})
_UNREACHABLE = (
    bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
    bx.ConnectionClosedError, bx.ProxyConnectionError,
)
_NO_CREDENTIALS = (
    bx.NoCredentialsError, bx.PartialCredentialsError, bx.ProfileNotFound,
)


def aws_error(
    exc: Exception, *, step: str, failed: Callable[[str, str, str | None], CustomerKeyError],
) -> CustomerKeyError | None:
    """Map a boto3/botocore exception of ``step`` to a one-line cmek error, or None when it
    is not an AWS client error. ``failed(message, step, aws_code)`` builds the error for
    refusals that are neither credential nor connection problems."""
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        text = one_line(str(err.get("Message", "")))
        message = f"{step} failed: {code}" + (f": {text}" if text else "")
        if code in _CREDENTIAL_CODES:
            return CredentialsInvalid(message, step=step, aws_code=code)
        return failed(message, step, code)
    if isinstance(exc, _UNREACHABLE):
        return EndpointUnreachable(
            f"{step} failed: endpoint unreachable ({type(exc).__name__}: "
            f"{one_line(str(exc))})", step=step,
        )
    if isinstance(exc, _NO_CREDENTIALS):
        return CredentialsInvalid(
            f"{step} failed: no usable AWS credentials ({type(exc).__name__})", step=step
        )
    if isinstance(exc, bx.NoRegionError):
        return failed(f"{step} failed: no AWS Region configured", step, None)
    if isinstance(exc, bx.ParamValidationError):
        return failed(f"{step} failed: {one_line(str(exc))}", step, None)
    if isinstance(exc, bx.BotoCoreError):
        return failed(f"{step} failed: {type(exc).__name__}: {one_line(str(exc))}", step, None)
    return None


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]
