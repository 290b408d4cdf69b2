"""Record envelope v1: layout, binding, key commitment, and one opaque error for every failure."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmek.crypto
from cmek.crypto import (
    MAX_RECORD,
    MAX_SEALS_PER_KEY,
    Binding,
    DataKey,
    envelope_epoch,
    open_record,
    seal,
)
from cmek.crypto.envelope import _seal_with_nonce
from cmek.errors import DecryptionError, InvalidInput, RecordTooLarge
from tests.mutations import mutate, mutations

EPOCH = 7
MATERIAL = os.urandom(32)
KEY = DataKey(EPOCH, bytearray(MATERIAL))
BINDING = Binding("tenant-a", "invoices", "obj-1")
HEADER_LEN = 50
OVERHEAD = 66


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def expect_opaque(call: Callable[..., Any], *args: Any) -> None:
    """Every failure is the same exception with the same message: no oracle on which check."""
    with pytest.raises(DecryptionError) as caught:
        call(*args)
    assert type(caught.value) is DecryptionError
    assert str(caught.value) == "decryption failed"
    assert caught.value.code == "decryption_failed"


def hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


# --- round trips and layout -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 64, 1024, 4095, 4096, 4097, 65536, 1024 * 1024 + 3])
def test_round_trip(size: int) -> None:
    plaintext = os.urandom(size)
    envelope = seal(KEY, BINDING, plaintext)
    assert len(envelope) == size + OVERHEAD
    assert open_record(KEY, BINDING, envelope) == plaintext
    assert envelope_epoch(envelope) == EPOCH


def test_round_trip_accepts_bytes_like_and_returns_bytes() -> None:
    envelope = seal(KEY, BINDING, memoryview(bytearray(b"abc")))  # type: ignore[arg-type]
    assert open_record(KEY, BINDING, bytearray(envelope)) == b"abc"  # type: ignore[arg-type]
    assert type(open_record(KEY, BINDING, memoryview(envelope))) is bytes  # type: ignore[arg-type]


def test_nonces_are_random() -> None:
    first, second = seal(KEY, BINDING, b"same"), seal(KEY, BINDING, b"same")
    assert first[38:50] != second[38:50]
    assert first[:38] == second[:38]


def test_known_answer() -> None:
    """Fixed key and nonce: the exact bytes, rebuilt independently from the spec, and pinned."""
    material = bytes(range(32))
    key = DataKey(0x01020304, bytearray(material))
    nonce = bytes(range(100, 112))
    envelope = _seal_with_nonce(key, BINDING, b"hello", nonce)

    encoded = b"\x00\x08tenant-a\x00\x08invoices\x00\x05obj-1"
    assert BINDING.encode() == encoded
    commitment = hkdf(material, b"cmek v1 commit")
    assert key.commitment == commitment
    assert commitment.hex() == "ada9670025c739f7349625d2f068775f8a34e9257d64fa03226dff98dee79e79"
    assert envelope[0:1] == b"\x01"
    assert envelope[1:2] == b"R"
    assert envelope[2:6] == b"\x01\x02\x03\x04"
    assert envelope[6:38] == commitment
    assert envelope[38:50] == nonce
    header = envelope[:50]
    body = AESGCM(hkdf(material, b"cmek v1 record")).encrypt(nonce, b"hello", header + encoded)
    assert envelope[50:] == body
    assert envelope.hex() == (
        "015201020304ada9670025c739f7349625d2f068775f8a34e9257d64fa03226dff98dee79e79"
        "6465666768696a6b6c6d6e6fd58cee1498664b2d89126c91cad37cf0f1ddf10f80"
    )
    assert open_record(key, BINDING, envelope) == b"hello"


def test_binding_encoding_is_length_prefixed() -> None:
    # Without the length prefixes these two would encode the same bytes.
    assert Binding("ab", "c", "d").encode() != Binding("a", "bc", "d").encode()
    assert Binding("é", "c", "d").encode()[:2] == b"\x00\x02"  # UTF-8 bytes, not characters


def test_public_api_is_re_exported() -> None:
    for name in (
        "MAX_RECORD",
        "MAX_SEALS_PER_KEY",
        "Binding",
        "DataKey",
        "seal",
        "open_record",
        "envelope_epoch",
        "seal_stream",
        "open_stream",
        "stream_epoch",
        "STREAM_HEADER_LEN",
        "DEFAULT_CHUNK",
        "MIN_CHUNK",
        "MAX_CHUNK",
    ):
        assert name in cmek.crypto.__all__
        assert hasattr(cmek.crypto, name)
    assert MAX_SEALS_PER_KEY == 2**32
    assert MAX_RECORD == 64 * 1024 * 1024


# --- what a ciphertext is bound to ------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        Binding("tenant-b", "invoices", "obj-1"),
        Binding("tenant-a", "receipts", "obj-1"),
        Binding("tenant-a", "invoices", "obj-2"),
        Binding("tenant-a", "invoice", "sobj-1"),  # same concatenation, other split
    ],
    ids=["tenant", "category", "object_id", "boundary-shift"],
)
def test_other_binding_fails(other: Binding) -> None:
    expect_opaque(open_record, KEY, other, seal(KEY, BINDING, b"secret"))


def test_other_epoch_fails() -> None:
    envelope = seal(KEY, BINDING, b"secret")
    expect_opaque(open_record, DataKey(EPOCH + 1, bytearray(MATERIAL)), BINDING, envelope)
    expect_opaque(open_record, DataKey(EPOCH + 1, bytearray(os.urandom(32))), BINDING, envelope)


def test_rewritten_epoch_fails_even_with_matching_key() -> None:
    """The epoch is in the AAD: rewriting it and presenting a key of that epoch still fails."""
    envelope = bytearray(seal(KEY, BINDING, b"secret"))
    envelope[2:6] = struct.pack(">I", EPOCH + 1)
    expect_opaque(open_record, DataKey(EPOCH + 1, bytearray(MATERIAL)), BINDING, bytes(envelope))


def test_other_data_key_same_epoch_fails() -> None:
    other = DataKey(EPOCH, bytearray(os.urandom(32)))
    envelope = seal(KEY, BINDING, b"secret")
    expect_opaque(open_record, other, BINDING, envelope)
    # Even with the header's commitment rewritten to the other key's, GCM refuses it.
    forged = envelope[:6] + other.commitment + envelope[38:]
    expect_opaque(open_record, other, BINDING, forged)


def test_commitment_depends_on_material_only() -> None:
    assert DataKey(1, bytearray(MATERIAL)).commitment == KEY.commitment
    assert DataKey(EPOCH, bytearray(os.urandom(32))).commitment != KEY.commitment
    assert len(KEY.commitment) == 32


# --- tampering --------------------------------------------------------------------------


def test_every_bit_flip_fails() -> None:
    envelope = seal(KEY, BINDING, b"8 bytes!")
    for position in range(len(envelope)):
        for bit in range(8):
            mutated = bytearray(envelope)
            mutated[position] ^= 1 << bit
            expect_opaque(open_record, KEY, BINDING, bytes(mutated))


def test_every_truncation_fails() -> None:
    envelope = seal(KEY, BINDING, b"8 bytes!")
    for length in range(len(envelope)):
        expect_opaque(open_record, KEY, BINDING, envelope[:length])
        if length < OVERHEAD:
            expect_opaque(envelope_epoch, envelope[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 16, os.urandom(1000)])
def test_appended_bytes_fail(extra: bytes) -> None:
    envelope = seal(KEY, BINDING, b"secret")
    expect_opaque(open_record, KEY, BINDING, envelope + extra)
    expect_opaque(open_record, KEY, BINDING, extra + envelope)


def test_bad_version_or_type_fails_before_the_key_matters() -> None:
    envelope = seal(KEY, BINDING, b"secret")
    for offset, value in ((0, 0x02), (0, 0x00), (1, 0x53)):
        mutated = bytearray(envelope)
        mutated[offset] = value
        expect_opaque(envelope_epoch, bytes(mutated))
        expect_opaque(open_record, KEY, BINDING, bytes(mutated))


def test_non_buffers_are_refused_opaquely() -> None:
    for junk in (None, "text", 42, [1, 2, 3]):
        expect_opaque(open_record, KEY, BINDING, junk)
        expect_opaque(envelope_epoch, junk)


# --- size limits and misuse -------------------------------------------------------------


def test_max_record_round_trips_and_one_more_byte_is_refused() -> None:
    at_limit = bytes(MAX_RECORD)
    envelope = seal(KEY, BINDING, at_limit)
    assert len(envelope) == MAX_RECORD + OVERHEAD
    assert open_record(KEY, BINDING, envelope) == at_limit
    del at_limit
    assert envelope_epoch(envelope + b"") == EPOCH
    expect_opaque(open_record, KEY, BINDING, envelope + b"\x00")
    expect_opaque(envelope_epoch, envelope + b"\x00")
    del envelope
    too_big = memoryview(bytes(MAX_RECORD + 1))
    with pytest.raises(RecordTooLarge) as caught:
        seal(KEY, BINDING, too_big)  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.code == "record_too_large"


@pytest.mark.parametrize(
    "fields",
    [
        ("", "c", "o"),
        ("t", "", "o"),
        ("t", "c", ""),
        ("x" * 1025, "c", "o"),
        ("t", "é" * 513, "o"),  # 513 characters, 1026 UTF-8 bytes
        ("t", "c", "\ud800"),  # a lone surrogate has no UTF-8 encoding
        (b"t", "c", "o"),
        ("t", None, "o"),
    ],
)
def test_bad_binding_is_refused(fields: tuple[Any, Any, Any]) -> None:
    with pytest.raises(InvalidInput) as caught:
        Binding(*fields)
    assert "\n" not in str(caught.value)
    assert caught.value.code == "invalid_input"


def test_binding_limits_are_inclusive() -> None:
    longest = "x" * 1024
    binding = Binding(longest, "é" * 512, "o")
    assert open_record(KEY, binding, seal(KEY, binding, b"x")) == b"x"


@pytest.mark.parametrize(
    ("epoch", "material"),
    [
        (-1, bytearray(32)),
        (2**32, bytearray(32)),
        (True, bytearray(32)),
        ("1", bytearray(32)),
        (1.0, bytearray(32)),
        (1, bytes(32)),  # immutable: could never be wiped
        (1, memoryview(bytearray(32))),
        (1, bytearray(31)),
        (1, bytearray(33)),
        (1, bytearray()),
    ],
)
def test_bad_data_key_is_refused(epoch: Any, material: Any) -> None:
    with pytest.raises(InvalidInput):
        DataKey(epoch, material)


def test_epoch_limits_are_inclusive() -> None:
    for epoch in (0, 2**32 - 1):
        key = DataKey(epoch, bytearray(MATERIAL))
        envelope = seal(key, BINDING, b"x")
        assert envelope_epoch(envelope) == epoch
        assert open_record(key, BINDING, envelope) == b"x"


def test_wipe_zeroes_callers_bytearray_and_refuses_use() -> None:
    material = bytearray(os.urandom(32))
    key = DataKey(3, material)
    envelope = seal(key, BINDING, b"secret")
    key.wipe()
    assert material == bytearray(32)
    assert key.wiped
    with pytest.raises(InvalidInput, match=r"^data key wiped$"):
        seal(key, BINDING, b"x")
    with pytest.raises(InvalidInput, match=r"^data key wiped$"):
        open_record(key, BINDING, envelope)
    key.wipe()  # idempotent
    assert material == bytearray(32)


def test_repr_does_not_leak_material() -> None:
    material = bytearray(b"\xab" * 32)
    key = DataKey(5, material)
    assert "abab" not in repr(key).lower()
    assert repr(key) == "DataKey(epoch=5)"


def test_misuse_of_seal_is_refused() -> None:
    with pytest.raises(InvalidInput):
        seal(KEY, BINDING, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        seal(KEY, ("t", "c", "o"), b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        _seal_with_nonce(KEY, BINDING, b"x", bytes(11))


# --- properties -------------------------------------------------------------------------

fields = st.text(min_size=1, max_size=12)
MUTATION = mutations(10_000)


@fast(600)
@given(plaintext=st.binary(max_size=2048), tenant=fields, category=fields, object_id=fields)
def test_property_round_trip(plaintext: bytes, tenant: str, category: str, object_id: str) -> None:
    binding = Binding(tenant, category, object_id)
    envelope = seal(KEY, binding, plaintext)
    assert open_record(KEY, binding, envelope) == plaintext
    assert envelope_epoch(envelope) == EPOCH


@fast(1500)
@given(plaintext=st.binary(max_size=256), ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_property_mutations_never_decrypt(
    plaintext: bytes, ops: list[tuple[str, int, int]]
) -> None:
    envelope = seal(KEY, BINDING, plaintext)
    mutated = mutate(envelope, ops)
    if mutated == envelope:
        return
    expect_opaque(open_record, KEY, BINDING, mutated)


@fast(800)
@given(data=st.binary(max_size=300))
def test_property_parser_only_raises_decryption_error_on_arbitrary_bytes(data: bytes) -> None:
    expect_opaque(open_record, KEY, BINDING, data)
    if data[:2] == b"\x01R" and len(data) >= OVERHEAD:
        assert envelope_epoch(data) == struct.unpack(">I", data[2:6])[0]
    else:
        expect_opaque(envelope_epoch, data)


@fast(800)
@given(tail=st.binary(max_size=300), epoch=st.sampled_from([EPOCH, EPOCH + 1]))
def test_property_plausible_headers_with_arbitrary_bodies_never_decrypt(
    tail: bytes, epoch: int
) -> None:
    data = b"\x01R" + struct.pack(">I", epoch) + KEY.commitment + tail
    expect_opaque(open_record, KEY, BINDING, data)
    if len(data) >= OVERHEAD:
        assert envelope_epoch(data) == epoch
    else:
        expect_opaque(envelope_epoch, data)


@fast(300)
@given(a=st.tuples(fields, fields, fields), b=st.tuples(fields, fields, fields))
def test_property_binding_encoding_is_injective(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    assert (Binding(*a).encode() == Binding(*b).encode()) == (a == b)
