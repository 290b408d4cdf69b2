"""Stream v1: chunked AES-256-GCM with counter nonces, in constant memory, refusing any splice."""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmek.crypto import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    STREAM_HEADER_LEN,
    Binding,
    DataKey,
    open_record,
    open_stream,
    seal,
    seal_stream,
    stream_epoch,
)
from cmek.crypto import stream as stream_module
from cmek.crypto.stream import _seal_stream_with_salt
from cmek.errors import DecryptionError, InvalidInput
from tests.mutations import mutate, mutations

EPOCH = 11
MATERIAL = os.urandom(32)
KEY = DataKey(EPOCH, bytearray(MATERIAL))
BINDING = Binding("tenant-a", "exports", "export-42")
CHUNK = MIN_CHUNK
SEALED = CHUNK + 16


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def expect_opaque(call: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(DecryptionError) as caught:
        call(*args)
    assert type(caught.value) is DecryptionError
    assert str(caught.value) == "decryption failed"
    assert caught.value.code == "decryption_failed"


def seal_bytes(
    plaintext: bytes, key: DataKey = KEY, binding: Binding = BINDING, chunk: int = CHUNK
) -> bytes:
    out = io.BytesIO()
    written = seal_stream(key, binding, io.BytesIO(plaintext), out, chunk)
    assert written == len(out.getvalue())
    return out.getvalue()


def open_bytes(ciphertext: bytes, key: DataKey = KEY, binding: Binding = BINDING) -> bytes:
    out = io.BytesIO()
    written = open_stream(key, binding, io.BytesIO(ciphertext), out)
    assert written == len(out.getvalue())
    return out.getvalue()


def expect_refused(ciphertext: bytes, key: DataKey = KEY, binding: Binding = BINDING) -> None:
    expect_opaque(open_bytes, ciphertext, key, binding)


def split(ciphertext: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    body = ciphertext[STREAM_HEADER_LEN:]
    step = chunk + 16
    return ciphertext[:STREAM_HEADER_LEN], [body[i : i + step] for i in range(0, len(body), step)]


def expected_length(size: int, chunk: int) -> int:
    chunks = max(1, -(-size // chunk))
    return STREAM_HEADER_LEN + size + 16 * chunks


class Trickle(io.RawIOBase):
    """A source whose reads come up short, like a socket or a pipe."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data, self._at, self._most = data, 0, most

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._most if size < 0 else min(size, self._most)
        out = self._data[self._at : self._at + size]
        self._at += len(out)
        return out


FOUR_CHUNKS = os.urandom(3 * CHUNK + 100)
FOUR_CHUNK_STREAM = seal_bytes(FOUR_CHUNKS)


# --- round trips and layout -------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        64,
        1024,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK - 1,
        2 * CHUNK,
        2 * CHUNK + 1,
        5 * CHUNK + 77,
    ],
)
def test_round_trip(size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = seal_bytes(plaintext)
    assert len(ciphertext) == expected_length(size, CHUNK)
    assert open_bytes(ciphertext) == plaintext
    assert stream_epoch(ciphertext[:STREAM_HEADER_LEN]) == EPOCH


@pytest.mark.parametrize("size", [0, DEFAULT_CHUNK - 1, DEFAULT_CHUNK, 4 * DEFAULT_CHUNK + 3])
def test_round_trip_default_chunk(size: int) -> None:
    plaintext = os.urandom(size)
    out = io.BytesIO()
    seal_stream(KEY, BINDING, io.BytesIO(plaintext), out)
    assert len(out.getvalue()) == expected_length(size, DEFAULT_CHUNK)
    assert open_bytes(out.getvalue()) == plaintext


def test_empty_stream_is_one_empty_final_chunk() -> None:
    ciphertext = seal_bytes(b"")
    assert len(ciphertext) == STREAM_HEADER_LEN + 16


def test_exact_multiple_has_no_trailing_empty_chunk() -> None:
    _, chunks = split(seal_bytes(os.urandom(2 * CHUNK)))
    assert [len(c) for c in chunks] == [SEALED, SEALED]


def test_short_reads_are_handled() -> None:
    plaintext = os.urandom(3 * CHUNK + 5)
    out = io.BytesIO()
    seal_stream(KEY, BINDING, Trickle(plaintext, 1000), out, CHUNK)
    plain = io.BytesIO()
    open_stream(KEY, BINDING, Trickle(out.getvalue(), 777), plain)
    assert plain.getvalue() == plaintext


def test_chunk_size_limits_are_inclusive() -> None:
    for chunk in (MIN_CHUNK, MAX_CHUNK):
        plaintext = os.urandom(MIN_CHUNK + 1)
        assert open_bytes(seal_bytes(plaintext, chunk=chunk)) == plaintext


def test_salts_are_random() -> None:
    first, second = seal_bytes(b"same"), seal_bytes(b"same")
    assert first[42:58] != second[42:58]
    assert first[:42] == second[:42]


def test_known_answer() -> None:
    """Fixed key and salt: exact header bytes, chunks rebuilt independently from the spec."""
    material = bytes(range(32))
    key = DataKey(0x01020304, bytearray(material))
    salt = bytes(range(200, 216))
    binding = Binding("tenant-a", "invoices", "obj-1")
    plaintext = bytes(range(256)) * 20  # 5120 bytes: one full chunk and a final one of 1024
    out = io.BytesIO()
    _seal_stream_with_salt(key, binding, io.BytesIO(plaintext), out, MIN_CHUNK, salt)
    ciphertext = out.getvalue()

    commitment = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"cmek v1 commit"
    ).derive(material)
    header = ciphertext[:58]
    assert STREAM_HEADER_LEN == 58
    assert header[0:1] == b"\x01"
    assert header[1:2] == b"S"
    assert header[2:6] == b"\x01\x02\x03\x04"
    assert header[6:10] == b"\x00\x00\x10\x00"  # 4096
    assert header[10:42] == commitment
    assert header[42:58] == salt
    stream_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=b"cmek v1 stream" + binding.encode()
    ).derive(material)
    aead = AESGCM(stream_key)
    first = aead.encrypt(bytes(7) + b"\x00\x00\x00\x00" + b"\x00", plaintext[:4096], header)
    last = aead.encrypt(bytes(7) + b"\x00\x00\x00\x01" + b"\x01", plaintext[4096:], header)
    assert ciphertext == header + first + last
    assert hashlib.sha256(ciphertext).hexdigest() == (
        "b98994e28de1c089ddd5204e08509612a1b1e8a269b49fdf7a930a3e812431ad"
    )
    assert open_bytes(ciphertext, key, binding) == plaintext


def test_stream_epoch_reads_only_the_header() -> None:
    assert stream_epoch(FOUR_CHUNK_STREAM[:STREAM_HEADER_LEN]) == EPOCH
    assert stream_epoch(FOUR_CHUNK_STREAM) == EPOCH
    for length in range(STREAM_HEADER_LEN):
        expect_opaque(stream_epoch, FOUR_CHUNK_STREAM[:length])


# --- splicing chunks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("reordered", [1, 0, 2, 3]),
        ("last two swapped", [0, 1, 3, 2]),
        ("first dropped", [1, 2, 3]),
        ("middle dropped", [0, 2, 3]),
        ("last dropped", [0, 1, 2]),
        ("only the final", [3]),
        ("duplicated first", [0, 0, 1, 2, 3]),
        ("duplicated middle", [0, 1, 1, 2, 3]),
        ("duplicated final", [0, 1, 2, 3, 3]),
        ("extra full chunk appended", [0, 1, 2, 3, 2]),
        ("no chunks", []),
    ],
)
def test_chunk_operations_fail(name: str, order: list[int]) -> None:
    header, chunks = split(FOUR_CHUNK_STREAM)
    assert len(chunks) == 4
    expect_refused(header + b"".join(chunks[i] for i in order))


def test_extension_after_a_full_final_chunk_fails() -> None:
    ciphertext = seal_bytes(os.urandom(2 * CHUNK))  # the final chunk is full-size
    _, chunks = split(ciphertext)
    _, other_chunks = split(seal_bytes(os.urandom(10)))
    for extra in (b"\x00", os.urandom(16), chunks[0], other_chunks[0], ciphertext):
        expect_refused(ciphertext + extra)


def test_extension_after_a_short_final_chunk_fails() -> None:
    for extra in (b"\x00", os.urandom(16), split(FOUR_CHUNK_STREAM)[1][0]):
        expect_refused(FOUR_CHUNK_STREAM + extra)


def test_every_truncation_fails() -> None:
    ciphertext = seal_bytes(os.urandom(CHUNK + CHUNK // 2))
    for length in range(len(ciphertext)):
        expect_refused(ciphertext[:length])


def test_truncation_at_a_chunk_boundary_of_an_exact_multiple_fails() -> None:
    ciphertext = seal_bytes(os.urandom(3 * CHUNK))
    for chunks in range(3):
        expect_refused(ciphertext[: STREAM_HEADER_LEN + chunks * SEALED])


def test_header_swapped_between_two_streams_fails() -> None:
    first = seal_bytes(os.urandom(2 * CHUNK + 9))
    second = seal_bytes(os.urandom(2 * CHUNK + 9))
    expect_refused(first[:STREAM_HEADER_LEN] + second[STREAM_HEADER_LEN:])
    expect_refused(second[:STREAM_HEADER_LEN] + first[STREAM_HEADER_LEN:])
    # Splicing chunks across streams of the same key fails too: each stream has its own key.
    h1, c1 = split(first)
    _, c2 = split(second)
    expect_refused(h1 + c1[0] + c2[1] + c1[2])


def test_every_bit_flip_of_a_small_stream_fails() -> None:
    ciphertext = seal_bytes(b"a small object")
    for position in range(len(ciphertext)):
        for bit in range(8):
            mutated = bytearray(ciphertext)
            mutated[position] ^= 1 << bit
            expect_refused(bytes(mutated))


def test_a_flip_in_every_chunk_fails() -> None:
    for chunk in range(4):
        for offset in (0, 100, SEALED - 1):
            position = STREAM_HEADER_LEN + chunk * SEALED + offset
            if position >= len(FOUR_CHUNK_STREAM):
                continue
            mutated = bytearray(FOUR_CHUNK_STREAM)
            mutated[position] ^= 0x80
            expect_refused(bytes(mutated))


def test_only_authenticated_chunks_are_written() -> None:
    """On failure dst holds an authenticated prefix: callers must discard it (documented)."""
    header, chunks = split(FOUR_CHUNK_STREAM)
    tampered = bytearray(chunks[2])
    tampered[5] ^= 1
    dst = io.BytesIO()
    with pytest.raises(DecryptionError):
        open_stream(
            KEY, BINDING, io.BytesIO(header + chunks[0] + chunks[1] + tampered + chunks[3]), dst
        )
    assert dst.getvalue() == FOUR_CHUNKS[: 2 * CHUNK]
    dst = io.BytesIO()
    with pytest.raises(DecryptionError):  # truncation is only seen at the end
        open_stream(KEY, BINDING, io.BytesIO(header + b"".join(chunks[:3])), dst)
    assert dst.getvalue() == FOUR_CHUNKS[: 2 * CHUNK]


# --- keys, bindings, headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        Binding("tenant-b", "exports", "export-42"),
        Binding("tenant-a", "backups", "export-42"),
        Binding("tenant-a", "exports", "export-43"),
        Binding("tenant-a", "export", "sexport-42"),
    ],
    ids=["tenant", "category", "object_id", "boundary-shift"],
)
def test_other_binding_fails(other: Binding) -> None:
    expect_refused(FOUR_CHUNK_STREAM, binding=other)


def test_other_epoch_or_other_key_fails() -> None:
    expect_refused(FOUR_CHUNK_STREAM, key=DataKey(EPOCH + 1, bytearray(MATERIAL)))
    expect_refused(FOUR_CHUNK_STREAM, key=DataKey(EPOCH + 1, bytearray(os.urandom(32))))
    other = DataKey(EPOCH, bytearray(os.urandom(32)))
    expect_refused(FOUR_CHUNK_STREAM, key=other)
    forged = FOUR_CHUNK_STREAM[:10] + other.commitment + FOUR_CHUNK_STREAM[42:]
    expect_refused(forged, key=other)


def test_rewritten_header_fields_fail() -> None:
    def rewrite(offset: int, value: bytes) -> bytes:
        return FOUR_CHUNK_STREAM[:offset] + value + FOUR_CHUNK_STREAM[offset + len(value) :]

    expect_refused(
        rewrite(2, struct.pack(">I", EPOCH + 1)), key=DataKey(EPOCH + 1, bytearray(MATERIAL))
    )
    for chunk in (2 * CHUNK, MIN_CHUNK + 1):  # in range, but the header is the AAD
        expect_refused(rewrite(6, struct.pack(">I", chunk)))
    for chunk in (0, MIN_CHUNK - 1, MAX_CHUNK + 1, 2**32 - 1):
        expect_refused(rewrite(6, struct.pack(">I", chunk)))
        expect_opaque(stream_epoch, rewrite(6, struct.pack(">I", chunk)))
    for offset, value in ((0, b"\x02"), (0, b"\x00"), (1, b"R")):
        expect_refused(rewrite(offset, value))
        expect_opaque(stream_epoch, rewrite(offset, value))


def test_formats_do_not_cross() -> None:
    expect_refused(seal(KEY, BINDING, os.urandom(100)))
    expect_opaque(stream_epoch, seal(KEY, BINDING, os.urandom(100)))
    expect_opaque(open_record, KEY, BINDING, seal_bytes(os.urandom(100)))


def test_too_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The u32 index bounds a stream at 2^32-1 chunks; lowered here to 3 to test the check."""
    monkeypatch.setattr(stream_module, "_MAX_CHUNKS", 3)
    three = os.urandom(3 * CHUNK)
    assert open_bytes(seal_bytes(three)) == three
    with pytest.raises(InvalidInput, match="stream too long"):
        seal_bytes(os.urandom(3 * CHUNK + 1))
    expect_refused(FOUR_CHUNK_STREAM)


# --- misuse -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk", [0, -1, MIN_CHUNK - 1, MAX_CHUNK + 1, 2**32, True, 4096.0, "4096"]
)
def test_bad_chunk_size_is_refused(chunk: Any) -> None:
    with pytest.raises(InvalidInput):
        seal_stream(KEY, BINDING, io.BytesIO(b"x"), io.BytesIO(), chunk)


def test_wiped_key_is_refused() -> None:
    material = bytearray(MATERIAL)
    key = DataKey(EPOCH, material)
    key.wipe()
    assert material == bytearray(32)
    with pytest.raises(InvalidInput, match=r"^data key wiped$"):
        seal_stream(key, BINDING, io.BytesIO(b"x"), io.BytesIO())
    src = io.BytesIO(FOUR_CHUNK_STREAM)
    with pytest.raises(InvalidInput, match=r"^data key wiped$"):
        open_stream(key, BINDING, src, io.BytesIO())
    assert src.tell() == 0  # refused before consuming anything


def test_bad_binding_is_refused() -> None:
    with pytest.raises(InvalidInput):
        seal_stream(KEY, "tenant-a", io.BytesIO(b"x"), io.BytesIO())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        open_stream(KEY, None, io.BytesIO(FOUR_CHUNK_STREAM), io.BytesIO())  # type: ignore[arg-type]


def test_io_errors_of_the_callers_files_propagate() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        open_stream(KEY, BINDING, Broken(), io.BytesIO())


# --- constant memory --------------------------------------------------------------------


class Generated:
    """A source that makes `total` bytes on demand and keeps none of them."""

    def __init__(self, total: int, pattern: bytes) -> None:
        self.left, self.pattern, self.counter = total, pattern, 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left, len(self.pattern))
        self.counter += 1
        out = (self.counter.to_bytes(8, "big") + self.pattern)[:size]
        self.left -= size
        self.digest.update(out)
        return out


class Sink:
    """A destination that keeps only a count and a digest."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self.digest.update(data)
        return len(data)


def test_64_mib_stream_in_constant_memory() -> None:
    """Seal into a pipe on one thread, open from it on another: nothing holds the object."""
    total = 64 * 1024 * 1024
    source = Generated(total, os.urandom(DEFAULT_CHUNK))
    sink = Sink()
    read_fd, write_fd = os.pipe()
    reader, writer = open(read_fd, "rb"), open(write_fd, "wb")  # noqa: SIM115
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            seal_stream(KEY, BINDING, source, writer)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            writer.close()

    tracemalloc.start()
    try:
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            written = open_stream(KEY, BINDING, reader, sink)
        finally:
            reader.close()
            producer.join(timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failures == []
    assert written == total == sink.count
    assert sink.digest.digest() == source.digest.digest()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


# --- properties -------------------------------------------------------------------------

MUTATION = mutations(100_000)


@fast(400)
@given(
    size=st.integers(0, 4 * MIN_CHUNK + 10),
    seed=st.integers(0, 2**32),
    chunk=st.sampled_from([MIN_CHUNK, MIN_CHUNK + 1, 5000, 2 * MIN_CHUNK]),
)
def test_property_round_trip(size: int, seed: int, chunk: int) -> None:
    plaintext = random.Random(seed).randbytes(size)
    ciphertext = seal_bytes(plaintext, chunk=chunk)
    assert len(ciphertext) == expected_length(size, chunk)
    assert open_bytes(ciphertext) == plaintext


SMALL_STREAM = seal_bytes(os.urandom(2 * CHUNK + 300))


@fast(1000)
@given(ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_property_mutations_never_decrypt(ops: list[tuple[str, int, int]]) -> None:
    mutated = mutate(SMALL_STREAM, ops)
    if mutated != SMALL_STREAM:
        expect_refused(mutated)


@fast(500)
@given(order=st.lists(st.integers(0, 3), max_size=7))
def test_property_only_the_original_chunk_order_opens(order: list[int]) -> None:
    header, chunks = split(FOUR_CHUNK_STREAM)
    spliced = header + b"".join(chunks[i] for i in order)
    if order == [0, 1, 2, 3]:
        assert open_bytes(spliced) == FOUR_CHUNKS
    else:
        expect_refused(spliced)


@fast(600)
@given(data=st.binary(max_size=300))
def test_property_parser_only_raises_decryption_error_on_arbitrary_bytes(data: bytes) -> None:
    expect_refused(data)
    if (
        len(data) >= STREAM_HEADER_LEN
        and data[:2] == b"\x01S"
        and (MIN_CHUNK <= struct.unpack(">I", data[6:10])[0] <= MAX_CHUNK)
    ):
        assert stream_epoch(data) == struct.unpack(">I", data[2:6])[0]
    else:
        expect_opaque(stream_epoch, data)


@fast(600)
@given(
    chunk=st.one_of(st.integers(0, 2**32 - 1), st.integers(MIN_CHUNK, MIN_CHUNK + 64)),
    tail=st.binary(max_size=MIN_CHUNK + 200),
)
def test_property_plausible_headers_with_arbitrary_bodies_never_decrypt(
    chunk: int, tail: bytes
) -> None:
    header = b"\x01S" + struct.pack(">II", EPOCH, chunk) + KEY.commitment + os.urandom(16)
    expect_refused(header + tail)
