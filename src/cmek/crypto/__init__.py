"""The envelope and streaming formats: AES-256-GCM records bound to tenant and category."""

from cmek.crypto.envelope import (
    MAX_RECORD,
    MAX_SEALS_PER_KEY,
    Binding,
    DataKey,
    envelope_epoch,
    open_record,
    seal,
)
from cmek.crypto.stream import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    STREAM_HEADER_LEN,
    open_stream,
    seal_stream,
    stream_epoch,
)

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "MAX_RECORD",
    "MAX_SEALS_PER_KEY",
    "MIN_CHUNK",
    "STREAM_HEADER_LEN",
    "Binding",
    "DataKey",
    "envelope_epoch",
    "open_record",
    "open_stream",
    "seal",
    "seal_stream",
    "stream_epoch",
]
