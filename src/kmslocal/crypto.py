"""Key material, ciphertext blobs and the root key that protects material at rest.

Ciphertext blob (opaque to clients; everything kmslocal needs to decrypt without a
KeyId)::

    offset  size  field
    0       1     version (0x01)
    1       16    key id (UUID bytes; multi-Region keys use their 16 hex-decoded bytes)
    17      4     material version, big-endian
    21      12    GCM nonce (random)
    33      n+16  AES-256-GCM ciphertext and tag

The GCM associated data is the 21-byte header followed by the canonical encoding of
the encryption context: a 2-byte pair count, then for each pair in byte order of the
UTF-8 key, a 2-byte length and the key, a 2-byte length and the value. Lengths make
``{"tenant": "ab"}`` and ``{"tenanta": "b"}`` encode differently.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
_HEADER = struct.Struct(">B16sI")
HEADER_LEN = _HEADER.size
NONCE_LEN = 12
TAG_LEN = 16
MIN_BLOB = HEADER_LEN + NONCE_LEN + TAG_LEN
MAX_BLOB = 6144  # AWS's CiphertextBlob limit


class CiphertextError(Exception):
    """The blob is malformed or does not authenticate; deliberately says no more."""


def canonical_context(context: Mapping[str, str]) -> bytes:
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = [struct.pack(">H", len(pairs))]
    for key, value in pairs:
        out.append(struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value)
    return b"".join(out)


def key_id_bytes(key_id: str) -> bytes:
    hexpart = key_id.removeprefix("mrk-").replace("-", "")
    return bytes.fromhex(hexpart)


@dataclass(frozen=True)
class BlobHeader:
    key_bytes: bytes
    material_version: int


def parse_header(blob: bytes) -> BlobHeader:
    if not MIN_BLOB <= len(blob) <= MAX_BLOB:
        raise CiphertextError
    version, key_bytes, material_version = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise CiphertextError
    return BlobHeader(key_bytes, material_version)


def seal(
    material: bytes, key_id: str, material_version: int, plaintext: bytes,
    context: Mapping[str, str],
) -> bytes:
    header = _HEADER.pack(VERSION, key_id_bytes(key_id), material_version)
    nonce = os.urandom(NONCE_LEN)
    body = AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + body


def open_blob(material: bytes, blob: bytes, context: Mapping[str, str]) -> bytes:
    header = blob[:HEADER_LEN]
    nonce = blob[HEADER_LEN : HEADER_LEN + NONCE_LEN]
    try:
        return AESGCM(material).decrypt(
            nonce, blob[HEADER_LEN + NONCE_LEN :], header + canonical_context(context)
        )
    except InvalidTag:
        raise CiphertextError from None


def new_material() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class RootKey:
    """Wraps key material at rest; the file is created once, mode 0600."""

    def __init__(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
        else:
            key = AESGCM.generate_key(bit_length=256)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
        if len(key) != 32:
            raise ValueError(f"root key file {path} is not a 32-byte key")
        self._aead = AESGCM(key)

    def wrap(self, material: bytes, label: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, material, label)

    def unwrap(self, wrapped: bytes, label: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], label)
