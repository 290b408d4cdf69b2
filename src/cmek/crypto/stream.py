"""Stream v1: objects of any size in constant memory, as a sequence of AES-256-GCM chunks.

Wire format (all integers big-endian)::

    offset size  field
    0      1     version, 0x01
    1      1     type, 0x53 ('S')
    2      4     epoch of the data key, u32
    6      4     chunk_size, u32, MIN_CHUNK..MAX_CHUNK
    10     32    key commitment (DataKey.commitment)
    42     16    salt, random
    58     ...   chunks: AES-256-GCM(K_stream, nonce_i, chunk_i, aad=header) = ciphertext || tag

    K_stream = HKDF-SHA256(material, salt=salt, info="cmek v1 stream" || Binding.encode())
    nonce_i  = 0x00 * 7 || u32 i || 0x01 if chunk i is final else 0x00

Every chunk but the last carries exactly chunk_size plaintext bytes; the final chunk carries
0..chunk_size (an empty object is one empty final chunk), so a full-size chunk followed by
end of input is final. K_stream is fresh per stream (random salt), which is what makes
counter nonces safe; the index orders chunks and the final flag detects truncation and
extension (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, as in Tink).
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cmek.crypto.envelope import COMMITMENT_LEN, TAG_LEN, VERSION, Binding, DataKey
from cmek.errors import DecryptionError, InvalidInput


class ByteSource(Protocol):
    """What a stream reads from: any binary file, socket file or wrapper with read(n)."""

    def read(self, size: int = -1, /) -> bytes: ...


class ByteSink(Protocol):
    """What a stream writes to: write(data) must take all of data, as buffered files do."""

    def write(self, data: bytes, /) -> object: ...


DEFAULT_CHUNK = 256 * 1024
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * 1024 * 1024

STREAM_TYPE = 0x53
SALT_LEN = 16
_PREFIX = struct.Struct(">BBII")  # version, type, epoch, chunk_size
STREAM_HEADER_LEN = _PREFIX.size + COMMITMENT_LEN + SALT_LEN  # 58
_NONCE = struct.Struct(">7xIB")  # 7 zero bytes, chunk index, final flag
_MAX_CHUNKS = 2**32 - 1  # the index is a u32; module-level so tests can lower it
_INFO_STREAM = b"cmek v1 stream"


def seal_stream(
    key: DataKey, binding: Binding, src: ByteSource, dst: ByteSink, chunk_size: int = DEFAULT_CHUNK
) -> int:
    """Encrypt src to dst, holding at most two plaintext chunks; returns bytes written."""
    return _seal_stream_with_salt(key, binding, src, dst, chunk_size, os.urandom(SALT_LEN))


def _seal_stream_with_salt(
    key: DataKey, binding: Binding, src: ByteSource, dst: ByteSink, chunk_size: int, salt: bytes
) -> int:
    """seal_stream() with the salt given: for known-answer tests only, never for real data."""
    if not isinstance(binding, Binding):
        raise InvalidInput("binding must be a Binding")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise InvalidInput("chunk_size must be an integer")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise InvalidInput(f"chunk_size must be in {MIN_CHUNK}..{MAX_CHUNK}")
    if len(salt) != SALT_LEN:
        raise InvalidInput(f"salt must be {SALT_LEN} bytes")
    aead = AESGCM(key._derive(salt, _INFO_STREAM + binding.encode()))
    header = _PREFIX.pack(VERSION, STREAM_TYPE, key.epoch, chunk_size) + key.commitment + salt
    dst.write(header)
    written = len(header)
    current = _read_full(src, chunk_size)
    index = 0
    while True:
        if len(current) < chunk_size:
            final, following = True, b""
        else:
            following = _read_full(src, chunk_size)
            final = not following
        if index >= _MAX_CHUNKS:
            raise InvalidInput("stream too long: more than 2^32-1 chunks")
        sealed = aead.encrypt(_NONCE.pack(index, final), current, header)
        dst.write(sealed)
        written += len(sealed)
        if final:
            return written
        current, index = following, index + 1


def open_stream(key: DataKey, binding: Binding, src: ByteSource, dst: ByteSink) -> int:
    """Decrypt src to dst chunk by chunk; returns plaintext bytes written.

    Only authenticated chunks reach dst, but truncation is only detectable at the end: on
    DecryptionError, dst already holds a prefix of the plaintext and the caller must discard
    it (write to a temporary place, keep it only on success). Errors raised by src or dst
    themselves (OSError and the like) propagate unchanged.
    """
    if not isinstance(binding, Binding):
        raise InvalidInput("binding must be a Binding")
    if key.wiped:
        raise InvalidInput("data key wiped")
    header = _read_full(src, STREAM_HEADER_LEN)
    epoch, chunk_size = _parse_header(header)
    commitment = header[_PREFIX.size : _PREFIX.size + COMMITMENT_LEN]
    if epoch != key.epoch or not hmac.compare_digest(commitment, key.commitment):
        raise DecryptionError
    salt = header[_PREFIX.size + COMMITMENT_LEN :]
    aead = AESGCM(key._derive(salt, _INFO_STREAM + binding.encode()))
    sealed_size = chunk_size + TAG_LEN
    written = 0
    current = _read_full(src, sealed_size)
    index = 0
    while True:
        if len(current) < sealed_size:
            final, following = True, b""
        else:  # one chunk of lookahead: a full chunk is final only if nothing follows
            following = _read_full(src, sealed_size)
            final = not following
        if len(current) < TAG_LEN or index >= _MAX_CHUNKS:
            raise DecryptionError
        try:
            plain = aead.decrypt(_NONCE.pack(index, final), current, header)
        except InvalidTag:
            raise DecryptionError from None
        dst.write(plain)
        written += len(plain)
        if final:
            return written
        current, index = following, index + 1


def stream_epoch(header: bytes) -> int:
    """The data key epoch a stream needs, from its first STREAM_HEADER_LEN bytes, without a key."""
    return _parse_header(header)[0]


def _parse_header(header: bytes) -> tuple[int, int]:
    """(epoch, chunk_size) of a well-formed header; the length is checked before parsing."""
    try:
        view = memoryview(header).cast("B")
    except (TypeError, ValueError):
        raise DecryptionError from None
    if len(view) < STREAM_HEADER_LEN:
        raise DecryptionError
    version, kind, epoch, chunk_size = _PREFIX.unpack_from(view)
    if version != VERSION or kind != STREAM_TYPE or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise DecryptionError
    return int(epoch), int(chunk_size)


def _read_full(src: ByteSource, size: int) -> bytes:
    """Read exactly size bytes, or fewer only at end of input (raw reads may come up short)."""
    data = src.read(size)
    if not data or len(data) >= size:
        return data or b""
    parts, have = [data], len(data)
    while have < size:
        more = src.read(size - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)
