"""Record envelope v1: one AES-256-GCM ciphertext bound to a tenant, a category and an object.

Wire format (all integers big-endian)::

    offset size  field
    0      1     version, 0x01
    1      1     type, 0x52 ('R')
    2      4     epoch of the data key, u32
    6      32    key commitment, HKDF-SHA256(material, info="cmek v1 commit")
    38     12    nonce, random
    50     n+16  AES-256-GCM(K_rec, nonce, plaintext, aad): ciphertext || tag

    K_rec = HKDF-SHA256(material, salt=None, info="cmek v1 record", length=32)
    aad   = envelope[0:50] || Binding.encode()

GCM alone is not key-committing; the commitment field makes an envelope open under at most
one data key. The binding is in the AAD, never on the wire: a record copied to another
tenant, category or object id fails to open. docs/format.md gives the full argument.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmek.errors import DecryptionError, InvalidInput, RecordTooLarge

MAX_RECORD = 64 * 1024 * 1024
"""Largest plaintext of one record; larger objects go through a stream."""

MAX_SEALS_PER_KEY = 2**32
"""Seals allowed per data key: with random 96-bit nonces, P(any nonce repeats) <= 2^-32."""

VERSION = 0x01
RECORD_TYPE = 0x52
KEY_LEN = 32
COMMITMENT_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
MAX_EPOCH = 2**32 - 1
MAX_BINDING_FIELD = 1024

_PREFIX = struct.Struct(">BBI")  # version, type, epoch
RECORD_HEADER_LEN = _PREFIX.size + COMMITMENT_LEN + NONCE_LEN  # 50
MIN_ENVELOPE = RECORD_HEADER_LEN + TAG_LEN  # 66
MAX_ENVELOPE = MAX_RECORD + MIN_ENVELOPE

_INFO_RECORD = b"cmek v1 record"
_INFO_COMMIT = b"cmek v1 commit"


def hkdf_sha256(material: bytes | bytearray, salt: bytes | None, info: bytes) -> bytes:
    """The one KDF of the formats: 32 bytes of HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(material)


@dataclass(frozen=True)
class Binding:
    """What a ciphertext belongs to; a ciphertext opens only under the binding it was sealed to.

    Encoded as ``u16 length || UTF-8`` for tenant, category and object_id in that order, so
    no two distinct bindings share an encoding.
    """

    tenant: str
    category: str
    object_id: str

    def __post_init__(self) -> None:
        for name in ("tenant", "category", "object_id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidInput(f"binding {name} must be a string")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidInput(f"binding {name} is not valid UTF-8") from None
            if not 1 <= size <= MAX_BINDING_FIELD:
                raise InvalidInput(f"binding {name} must be 1..{MAX_BINDING_FIELD} UTF-8 bytes")

    def encode(self) -> bytes:
        """Length-prefixed fields: the AAD suffix of records and the stream KDF info suffix."""
        out = bytearray()
        for value in (self.tenant, self.category, self.object_id):
            raw = value.encode("utf-8")
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)


class DataKey:
    """One unwrapped data key of an epoch.

    The caller's bytearray is kept (not copied) so that ``wipe()`` zeroes the only copy the
    caller handed over; keys derived from it at construction cannot be zeroed in Python and
    are dropped instead. The caller must not mutate the bytearray other than through wipe().
    """

    __slots__ = ("_aead", "_commitment", "_epoch", "_material")

    def __init__(self, epoch: int, material: bytearray) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise InvalidInput("data key epoch must be an integer in 0..2^32-1")
        if not isinstance(material, bytearray):
            raise InvalidInput("data key material must be a bytearray, so that it can be wiped")
        if len(material) != KEY_LEN:
            raise InvalidInput(f"data key material must be {KEY_LEN} bytes")
        self._epoch = epoch
        self._material = material
        self._aead: AESGCM | None = AESGCM(hkdf_sha256(material, None, _INFO_RECORD))
        self._commitment = hkdf_sha256(material, None, _INFO_COMMIT)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def commitment(self) -> bytes:
        """Public fingerprint of the material, written into every header (see docs/format.md)."""
        return self._commitment

    @property
    def wiped(self) -> bool:
        return self._aead is None

    def wipe(self) -> None:
        """Zero the caller's bytearray in place and refuse any further use."""
        self._material[:] = bytes(len(self._material))
        self._aead = None

    def _record_aead(self) -> AESGCM:
        if self._aead is None:
            raise InvalidInput("data key wiped")
        return self._aead

    def _derive(self, salt: bytes, info: bytes) -> bytes:
        """A per-use subkey (streams); refused once the material is wiped."""
        if self._aead is None:
            raise InvalidInput("data key wiped")
        return hkdf_sha256(self._material, salt, info)

    def __repr__(self) -> str:
        return f"DataKey(epoch={self._epoch}{', wiped' if self.wiped else ''})"


def seal(key: DataKey, binding: Binding, plaintext: bytes) -> bytes:
    """Encrypt one record under a fresh random nonce."""
    return _seal_with_nonce(key, binding, plaintext, os.urandom(NONCE_LEN))


def _seal_with_nonce(key: DataKey, binding: Binding, plaintext: bytes, nonce: bytes) -> bytes:
    """seal() with the nonce given: for known-answer tests only, never for real data."""
    aead = key._record_aead()
    if not isinstance(binding, Binding):
        raise InvalidInput("binding must be a Binding")
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise InvalidInput("plaintext must be bytes")
    if memoryview(plaintext).nbytes > MAX_RECORD:
        raise RecordTooLarge(f"record plaintext exceeds {MAX_RECORD} bytes; use a stream")
    if len(nonce) != NONCE_LEN:
        raise InvalidInput(f"nonce must be {NONCE_LEN} bytes")
    header = _PREFIX.pack(VERSION, RECORD_TYPE, key.epoch) + key.commitment + nonce
    return header + aead.encrypt(nonce, plaintext, header + binding.encode())


def open_record(key: DataKey, binding: Binding, envelope: bytes) -> bytes:
    """Authenticate and decrypt; every way of failing raises the same DecryptionError."""
    aead = key._record_aead()
    if not isinstance(binding, Binding):
        raise InvalidInput("binding must be a Binding")
    view = _envelope_view(envelope)
    header = bytes(view[:RECORD_HEADER_LEN])
    _, _, epoch = _PREFIX.unpack_from(header)
    commitment = header[_PREFIX.size : _PREFIX.size + COMMITMENT_LEN]
    if epoch != key.epoch or not hmac.compare_digest(commitment, key.commitment):
        raise DecryptionError
    nonce = header[_PREFIX.size + COMMITMENT_LEN :]
    try:
        return aead.decrypt(nonce, view[RECORD_HEADER_LEN:], header + binding.encode())
    except InvalidTag:
        raise DecryptionError from None


def envelope_epoch(envelope: bytes) -> int:
    """The data key epoch an envelope needs, read from the header without any key."""
    return int(_PREFIX.unpack_from(_envelope_view(envelope))[2])


def _envelope_view(envelope: bytes) -> memoryview:
    """Check lengths, then version and type, before anything else is read."""
    try:
        view = memoryview(envelope).cast("B")
    except (TypeError, ValueError):
        raise DecryptionError from None
    if not MIN_ENVELOPE <= len(view) <= MAX_ENVELOPE:
        raise DecryptionError
    if view[0] != VERSION or view[1] != RECORD_TYPE:
        raise DecryptionError
    return view
