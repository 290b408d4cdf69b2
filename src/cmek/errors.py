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


class RowNotAuthentic(CmekError):
    """A control-plane row whose tag does not verify: written by someone without the
    platform's integrity key. It grants nothing; an operator should look at who wrote it."""

    code = "row_not_authentic"

    def __init__(self, what: str) -> None:
        super().__init__(f"a {what} row was not written by the platform; refused")


class InvalidInput(CmekError):
    code = "invalid_input"


class RecordTooLarge(InvalidInput):
    code = "record_too_large"


class UnknownTenant(CmekError):
    code = "unknown_tenant"


class StoreUnreachable(CmekError):
    """A store the platform needs (the control plane's database) does not answer."""

    code = "store_unreachable"


class TenantExists(CmekError):
    code = "tenant_exists"


class UnknownCategory(CmekError):
    code = "unknown_category"
