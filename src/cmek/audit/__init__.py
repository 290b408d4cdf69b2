"""The hash-chained audit trail of every key use and lifecycle event."""

from cmek.audit.trail import (
    GENESIS_HASH,
    AuditEntry,
    AuditEntryCorrupt,
    AuditKindInvalid,
    AuditTrail,
    AuditValueNotAllowed,
    VerifyResult,
    canonical_json,
    entry_hash,
)

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditEntryCorrupt",
    "AuditKindInvalid",
    "AuditTrail",
    "AuditValueNotAllowed",
    "VerifyResult",
    "canonical_json",
    "entry_hash",
]
