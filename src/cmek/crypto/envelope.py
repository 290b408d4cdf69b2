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
_PREFIX_LEN = _PREFIX.size + COMMITMENT_LEN  # version, type, epoch, commitment: 38
RECORD_HEADER_LEN = _PREFIX_LEN + NONCE_LEN  # 50
MIN_ENVELOPE = RECORD_HEADER_LEN + TAG_LEN  # 66
MAX_ENVELOPE = MAX_RECORD + MIN_ENVELOPE

_U16 = struct.Struct(">H").pack
_INFO_RECORD = b"cmek v1 record"
_INFO_COMMIT = b"cmek v1 commit"


def _hkdf(material: bytes | bytearray, salt: bytes | None, info: bytes) -> bytes:
    """The one KDF of the formats: 32 bytes of HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(material)


class Binding:
    """What a ciphertext belongs to; a ciphertext opens only under the binding it was sealed to.

    Encoded as ``u16 length || UTF-8`` for tenant, category and object_id in that order, so
    no two distinct bindings share an encoding. Validated and encoded once, at construction:
    it is built for every record, so it is kept lean.
    """

    __slots__ = ("_encoded", "category", "object_id", "tenant")

    def __init__(self, tenant: str, category: str, object_id: str) -> None:
        try:
            t, c, o = tenant.encode(), category.encode(), object_id.encode()
        except (AttributeError, UnicodeEncodeError):
            raise InvalidInput(_binding_problem(tenant, category, object_id)) from None
        lt, lc, lo = len(t), len(c), len(o)
        if not (0 < lt <= MAX_BINDING_FIELD and 0 < lc <= MAX_BINDING_FIELD
                and 0 < lo <= MAX_BINDING_FIELD):
            raise InvalidInput(_binding_problem(tenant, category, object_id))
        if type(tenant) is not str or type(category) is not str or type(object_id) is not str:
            tenant, category, object_id = str(tenant), str(category), str(object_id)
        self.tenant = tenant
        self.category = category
        self.object_id = object_id
        self._encoded = b"".join((_U16(lt), t, _U16(lc), c, _U16(lo), o))

    def encode(self) -> bytes:
        """Length-prefixed fields: the AAD suffix of records and the stream KDF info suffix."""
        return self._encoded

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Binding) and other._encoded == self._encoded

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __repr__(self) -> str:
        return f"Binding({self.tenant!r}, {self.category!r}, {self.object_id!r})"


def _binding_problem(tenant: object, category: object, object_id: object) -> str:
    for name, value in (("tenant", tenant), ("category", category), ("object_id", object_id)):
        if not isinstance(value, str):
            return f"binding {name} must be a string"
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"binding {name} is not valid UTF-8"
        if not 1 <= size <= MAX_BINDING_FIELD:
            return f"binding {name} must be 1..{MAX_BINDING_FIELD} UTF-8 bytes"
    return "invalid binding"


class DataKey:
    """One unwrapped data key of an epoch.

    The caller's bytearray is kept (not copied) so that ``wipe()`` zeroes the only copy the
    caller handed over; keys derived from it at construction cannot be zeroed in Python and
    are dropped instead. The caller must not mutate the bytearray other than through wipe().
    """

    __slots__ = ("_aead", "_commitment", "_epoch", "_material", "_record_prefix")

    def __init__(self, epoch: int, material: bytearray) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise InvalidInput("data key epoch must be an integer in 0..2^32-1")
        if not isinstance(material, bytearray):
            raise InvalidInput("data key material must be a bytearray, so that it can be wiped")
        if len(material) != KEY_LEN:
            raise InvalidInput(f"data key material must be {KEY_LEN} bytes")
        self._epoch = epoch
        self._material = material
        self._aead: AESGCM | None = AESGCM(_hkdf(material, None, _INFO_RECORD))
        self._commitment = _hkdf(material, None, _INFO_COMMIT)
        self._record_prefix = _PREFIX.pack(VERSION, RECORD_TYPE, epoch) + self._commitment

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
        return _hkdf(self._material, salt, info)

    def __repr__(self) -> str:
        return f"DataKey(epoch={self._epoch}{', wiped' if self.wiped else ''})"


def seal(key: DataKey, binding: Binding, plaintext: bytes | bytearray | memoryview) -> bytes:
    """Encrypt one record under a fresh random nonce."""
    return _seal_with_nonce(key, binding, plaintext, os.urandom(NONCE_LEN))


def _seal_with_nonce(
    key: DataKey, binding: Binding, plaintext: bytes | bytearray | memoryview, nonce: bytes
) -> bytes:
    """seal() with the nonce given: for known-answer tests only, never for real data.

    Runs for every record, so the checks are the cheap ones that refuse misuse."""
    aead = key._aead
    if aead is None:
        raise InvalidInput("data key wiped")
    if type(binding) is not Binding:
        raise InvalidInput("binding must be a Binding")
    if type(plaintext) is not bytes:
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise InvalidInput("plaintext must be bytes")
        plaintext = bytes(plaintext)
    if len(plaintext) > MAX_RECORD:
        raise RecordTooLarge(f"record plaintext exceeds {MAX_RECORD} bytes; use a stream")
    if len(nonce) != NONCE_LEN:
        raise InvalidInput(f"nonce must be {NONCE_LEN} bytes")
    header = key._record_prefix + nonce
    return header + aead.encrypt(nonce, plaintext, header + binding._encoded)


def open_record(key: DataKey, binding: Binding, envelope: bytes) -> bytes:
    """Authenticate and decrypt; every way of failing raises the same DecryptionError."""
    aead = key._aead
    if aead is None:
        raise InvalidInput("data key wiped")
    if type(binding) is not Binding:
        raise InvalidInput("binding must be a Binding")
    data = _envelope_bytes(envelope)
    # Version, type, epoch and commitment in one comparison with this key's header prefix.
    if not hmac.compare_digest(data[:_PREFIX_LEN], key._record_prefix):
        raise DecryptionError
    header = data[:RECORD_HEADER_LEN]
    # A view, not a slice: a large record's ciphertext is not copied.
    body = memoryview(data)[RECORD_HEADER_LEN:]
    try:
        return aead.decrypt(data[_PREFIX_LEN:RECORD_HEADER_LEN], body, header + binding._encoded)
    except InvalidTag:
        raise DecryptionError from None


def envelope_epoch(envelope: bytes) -> int:
    """The data key epoch an envelope needs, read from the header without any key."""
    data = _envelope_bytes(envelope)
    return int.from_bytes(data[2:6], "big")


def _envelope_bytes(envelope: bytes) -> bytes:
    """Check type and length, then version and type, before anything else is read."""
    if type(envelope) is not bytes:
        try:
            envelope = memoryview(envelope).cast("B").tobytes()
        except (TypeError, ValueError):
            raise DecryptionError from None
    if not MIN_ENVELOPE <= len(envelope) <= MAX_ENVELOPE:
        raise DecryptionError
    if envelope[0] != VERSION or envelope[1] != RECORD_TYPE:
        raise DecryptionError
    return envelope
