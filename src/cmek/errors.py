"""Every refusal in cmek carries a stable error code that callers and operators act on."""

from __future__ import annotations


class CmekError(Exception):
    """Base of cmek's errors; ``code`` is stable, the message is one line for people."""

    code = "cmek_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DecryptionError(CmekError):
    """Any failure to open a ciphertext. Deliberately opaque: no oracle on which check."""

    code = "decryption_failed"

    def __init__(self) -> None:
        super().__init__("decryption failed")


class InvalidInput(CmekError):
    code = "invalid_input"


class RecordTooLarge(InvalidInput):
    code = "record_too_large"


class UnknownTenant(CmekError):
    code = "unknown_tenant"


class TenantExists(CmekError):
    code = "tenant_exists"


class UnknownCategory(CmekError):
    code = "unknown_category"
