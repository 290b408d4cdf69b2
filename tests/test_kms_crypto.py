"""Conformance: KMS cryptographic operations (Encrypt, Decrypt, data keys, ReEncrypt,
encryption context binding, tampering, key states, key usage, rotation), through boto3.

Every test is written against AWS KMS behaviour; tests that need kmslocal's dev clock say so
with ``kms.require_local``.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any, TypeVar

import pytest

from tests.conftest import Target, alias_name, error_code, eventually

T = TypeVar("T")
DAY = dt.timedelta(days=1)


def wait_for_rotations(kms: Target, key_id: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]]:
        rotations: list[dict[str, Any]] = kms.customer.list_key_rotations(
            KeyId=key_id)["Rotations"]
        assert len(rotations) == count, rotations
        return rotations
    return eventually(kms, check)


def material_of(kms: Target, blob: bytes, **kwargs: Any) -> str | None:
    """The KeyMaterialId Decrypt reports for ``blob``, or None if the target omits it."""
    out = kms.customer.decrypt(CiphertextBlob=blob, **kwargs)
    material = out.get("KeyMaterialId")
    return None if material is None else str(material)


# --- Encrypt / Decrypt ---------------------------------------------------------------
def test_encrypt_decrypt_round_trip(kms: Target) -> None:
    meta = kms.create_key()
    out = kms.customer.encrypt(KeyId=meta["KeyId"], Plaintext=b"attack at dawn")
    assert out["KeyId"] == meta["Arn"]
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    assert b"attack at dawn" not in blob
    for kwargs in ({}, {"KeyId": meta["KeyId"]}, {"KeyId": meta["Arn"]}):
        plain = kms.customer.decrypt(CiphertextBlob=blob, **kwargs)
        assert plain["Plaintext"] == b"attack at dawn", kwargs
        assert plain["KeyId"] == meta["Arn"], kwargs
        assert plain["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT", kwargs


def test_encrypt_is_randomized(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    one = kms.customer.encrypt(KeyId=key_id, Plaintext=b"same")["CiphertextBlob"]
    two = kms.customer.encrypt(KeyId=key_id, Plaintext=b"same")["CiphertextBlob"]
    assert one != two
    assert kms.customer.decrypt(CiphertextBlob=one)["Plaintext"] == b"same"
    assert kms.customer.decrypt(CiphertextBlob=two)["Plaintext"] == b"same"


def test_encrypt_decrypt_with_alias(kms: Target) -> None:
    meta = kms.create_key()
    alias = alias_name()
    kms.customer.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    alias_arn = f"arn:aws:kms:{kms.region}:{kms.customer_account}:{alias}"
    for ref in (alias, alias_arn):
        out = kms.customer.encrypt(KeyId=ref, Plaintext=b"via alias")
        assert out["KeyId"] == meta["Arn"], ref
        plain = kms.customer.decrypt(CiphertextBlob=out["CiphertextBlob"], KeyId=ref)
        assert plain["Plaintext"] == b"via alias", ref
        assert plain["KeyId"] == meta["Arn"], ref


def test_binary_plaintext_round_trip(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    data = bytes(range(256))
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=data)["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == data


def test_plaintext_size_limit(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    data = os.urandom(4096)
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=data)["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == data
    code = error_code(lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=os.urandom(4097)))
    assert code == "ValidationException"


def test_encrypt_with_unknown_key_is_not_found(kms: Target) -> None:
    code = error_code(lambda: kms.customer.encrypt(KeyId=str(uuid.uuid4()), Plaintext=b"x"))
    assert code == "NotFoundException"


def test_dry_run_encrypt(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    code = error_code(lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=b"x", DryRun=True))
    assert code == "DryRunOperationException"


# --- data keys -------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "size"), [
    ({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 64}, 64),
    ({"NumberOfBytes": 1}, 1), ({"NumberOfBytes": 1024}, 1024),
])
def test_generate_data_key_sizes(kms: Target, kwargs: dict[str, Any], size: int) -> None:
    meta = kms.create_key()
    out = kms.customer.generate_data_key(KeyId=meta["KeyId"], **kwargs)
    assert out["KeyId"] == meta["Arn"]
    assert len(out["Plaintext"]) == size
    plain = kms.customer.decrypt(CiphertextBlob=out["CiphertextBlob"])
    assert plain["Plaintext"] == out["Plaintext"]
    assert plain["KeyId"] == meta["Arn"]


def test_generate_data_key_is_random(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    keys = {kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256")["Plaintext"]
            for _ in range(3)}
    assert len(keys) == 3


def test_generate_data_key_with_context(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    ctx = {"tenant": "acme"}
    out = kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=ctx)
    plain = kms.customer.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext=ctx)
    assert plain["Plaintext"] == out["Plaintext"]
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=out["CiphertextBlob"])) == (
        "InvalidCiphertextException"
    )


@pytest.mark.parametrize("kwargs", [{}, {"KeySpec": "AES_256", "NumberOfBytes": 32}])
def test_generate_data_key_needs_exactly_one_size(kms: Target, kwargs: dict[str, Any]) -> None:
    key_id = kms.create_key()["KeyId"]
    assert error_code(lambda: kms.customer.generate_data_key(KeyId=key_id, **kwargs)) == (
        "ValidationException"
    )


def test_generate_data_key_too_many_bytes(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    code = error_code(lambda: kms.customer.generate_data_key(KeyId=key_id, NumberOfBytes=1025))
    assert code == "ValidationException"


def test_generate_data_key_without_plaintext(kms: Target) -> None:
    meta = kms.create_key()
    out = kms.customer.generate_data_key_without_plaintext(KeyId=meta["KeyId"],
                                                           KeySpec="AES_256")
    assert "Plaintext" not in out
    assert out["KeyId"] == meta["Arn"]
    plain = kms.customer.decrypt(CiphertextBlob=out["CiphertextBlob"])
    assert len(plain["Plaintext"]) == 32
    assert plain["KeyId"] == meta["Arn"]


# --- ReEncrypt -------------------------------------------------------------------------
def test_re_encrypt_to_another_key(kms: Target) -> None:
    source = kms.create_key()
    dest = kms.create_key()
    blob = kms.customer.encrypt(KeyId=source["KeyId"], Plaintext=b"move me",
                                EncryptionContext={"a": "1"})["CiphertextBlob"]
    out = kms.customer.re_encrypt(
        CiphertextBlob=blob, SourceKeyId=source["KeyId"], SourceEncryptionContext={"a": "1"},
        DestinationKeyId=dest["KeyId"], DestinationEncryptionContext={"b": "2"},
    )
    assert out["SourceKeyId"] == source["Arn"]
    assert out["KeyId"] == dest["Arn"]
    new = out["CiphertextBlob"]
    assert new != blob
    plain = kms.customer.decrypt(CiphertextBlob=new, EncryptionContext={"b": "2"})
    assert plain["Plaintext"] == b"move me"
    assert plain["KeyId"] == dest["Arn"]
    assert error_code(lambda: kms.customer.decrypt(
        CiphertextBlob=new, KeyId=source["KeyId"], EncryptionContext={"b": "2"},
    )) == "IncorrectKeyException"
    # without a SourceKeyId, the source key is read from the blob
    again = kms.customer.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "1"},
                                    DestinationKeyId=dest["Arn"])
    assert again["SourceKeyId"] == source["Arn"]
    assert kms.customer.decrypt(CiphertextBlob=again["CiphertextBlob"])["Plaintext"] == (
        b"move me"
    )


def test_re_encrypt_wrong_source_key(kms: Target) -> None:
    source = kms.create_key()["KeyId"]
    other = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=source, Plaintext=b"x")["CiphertextBlob"]
    code = error_code(lambda: kms.customer.re_encrypt(
        CiphertextBlob=blob, SourceKeyId=other, DestinationKeyId=other))
    assert code == "IncorrectKeyException"


def test_re_encrypt_source_context_is_checked(kms: Target) -> None:
    source = kms.create_key()["KeyId"]
    dest = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=source, Plaintext=b"x",
                                EncryptionContext={"a": "1"})["CiphertextBlob"]
    code = error_code(lambda: kms.customer.re_encrypt(
        CiphertextBlob=blob, SourceEncryptionContext={"a": "2"}, DestinationKeyId=dest))
    assert code == "InvalidCiphertextException"


# --- encryption context --------------------------------------------------------------
@pytest.mark.parametrize("wrong", [
    None,                                       # missing
    {"tenant": "acme", "extra": "1"},           # extra pair
    {"tenant": "acme2"},                        # changed value
    {"Tenant": "acme"},                         # keys are case-sensitive
    {"tenanta": "cme"},                         # shifted boundary
])
def test_encryption_context_is_bound(kms: Target, wrong: dict[str, str] | None) -> None:
    key_id = kms.create_key()["KeyId"]
    ctx = {"tenant": "acme"}
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"bound",
                                EncryptionContext=ctx)["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == (
        b"bound"
    )
    kwargs: dict[str, Any] = {} if wrong is None else {"EncryptionContext": wrong}
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob, **kwargs)) == (
        "InvalidCiphertextException"
    )


def test_context_given_at_decrypt_only_is_refused(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"plain")["CiphertextBlob"]
    code = error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob,
                                                   EncryptionContext={"tenant": "acme"}))
    assert code == "InvalidCiphertextException"


def test_encryption_context_order_does_not_matter(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"ordered",
                                EncryptionContext={"a": "1", "b": "2"})["CiphertextBlob"]
    plain = kms.customer.decrypt(CiphertextBlob=blob, EncryptionContext={"b": "2", "a": "1"})
    assert plain["Plaintext"] == b"ordered"


def test_encryption_context_collision(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    for sealed, tried in (({"tenant": "ab"}, {"tenanta": "b"}),
                          ({"tenanta": "b"}, {"tenant": "ab"}),
                          ({"a": "b", "c": "d"}, {"ab": "cd"})):
        blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"tenant data",
                                    EncryptionContext=sealed)["CiphertextBlob"]
        code = error_code(lambda b=blob, t=tried: kms.customer.decrypt(
            CiphertextBlob=b, EncryptionContext=t))
        assert code == "InvalidCiphertextException", (sealed, tried)
        assert kms.customer.decrypt(CiphertextBlob=blob, EncryptionContext=sealed)[
            "Plaintext"] == b"tenant data"


def test_empty_encryption_context(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"no context",
                                EncryptionContext={})["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == b"no context"
    assert kms.customer.decrypt(CiphertextBlob=blob, EncryptionContext={})["Plaintext"] == (
        b"no context"
    )


# --- wrong key, tampering ------------------------------------------------------------
def test_decrypt_with_other_key_id_is_incorrect_key(kms: Target) -> None:
    mine = kms.create_key()["KeyId"]
    other = kms.create_key()
    blob = kms.customer.encrypt(KeyId=mine, Plaintext=b"x")["CiphertextBlob"]
    for ref in (other["KeyId"], other["Arn"]):
        code = error_code(lambda r=ref: kms.customer.decrypt(
            CiphertextBlob=blob, KeyId=r))
        assert code == "IncorrectKeyException", ref


def test_random_bytes_are_invalid_ciphertext(kms: Target) -> None:
    kms.create_key()
    for size in (1, 16, 64, 200, 1024):
        code = error_code(lambda n=size: kms.customer.decrypt(
            CiphertextBlob=os.urandom(n)))
        assert code == "InvalidCiphertextException", size


def test_every_flipped_bit_is_invalid_ciphertext(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    ctx = {"tenant": "acme"}
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"integrity",
                                EncryptionContext=ctx)["CiphertextBlob"]
    # every byte position, cycling through all eight bit positions
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 1 << (i % 8)
        code = error_code(lambda t=bytes(tampered): kms.customer.decrypt(
            CiphertextBlob=t, EncryptionContext=ctx))
        assert code == "InvalidCiphertextException", f"bit {i % 8} of byte {i}"
    assert kms.customer.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == (
        b"integrity"
    )


def test_flipped_bit_with_key_id_is_refused(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"integrity")["CiphertextBlob"]
    for i in (0, len(blob) // 2, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[i] ^= 0x80
        code = error_code(lambda t=bytes(tampered): kms.customer.decrypt(
            CiphertextBlob=t, KeyId=key_id))
        assert code in ("InvalidCiphertextException", "IncorrectKeyException"), i


def test_truncated_ciphertext_is_invalid(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"truncate me")["CiphertextBlob"]
    for length in (len(blob) - 1, len(blob) - 16, len(blob) // 2, 20, 1):
        code = error_code(lambda n=length: kms.customer.decrypt(
            CiphertextBlob=blob[:n]))
        assert code == "InvalidCiphertextException", length
    code = error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob + b"\x00"))
    assert code == "InvalidCiphertextException"


# --- key states ----------------------------------------------------------------------
def test_disabled_key_refuses_crypto_and_recovers(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    kms.customer.disable_key(KeyId=key_id)
    for call in (
        lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=b"new"),
        lambda: kms.customer.decrypt(CiphertextBlob=blob),
        lambda: kms.customer.decrypt(CiphertextBlob=blob, KeyId=key_id),
        lambda: kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
        lambda: kms.customer.generate_data_key_without_plaintext(KeyId=key_id,
                                                                 KeySpec="AES_256"),
    ):
        assert error_code(call) == "DisabledException"
    kms.customer.enable_key(KeyId=key_id)
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"
    fresh = kms.customer.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
    assert kms.customer.decrypt(CiphertextBlob=fresh)["Plaintext"] == b"new"


def test_pending_deletion_key_refuses_crypto_and_recovers(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    kms.customer.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    for call in (
        lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=b"new"),
        lambda: kms.customer.decrypt(CiphertextBlob=blob),
        lambda: kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
    ):
        assert error_code(call) == "KMSInvalidStateException"
    kms.customer.cancel_key_deletion(KeyId=key_id)
    assert error_code(lambda: kms.customer.decrypt(CiphertextBlob=blob)) == "DisabledException"
    kms.customer.enable_key(KeyId=key_id)
    assert kms.customer.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"


def test_re_encrypt_to_disabled_key_is_refused(kms: Target) -> None:
    source = kms.create_key()["KeyId"]
    dest = kms.create_key()["KeyId"]
    blob = kms.customer.encrypt(KeyId=source, Plaintext=b"x")["CiphertextBlob"]
    kms.customer.disable_key(KeyId=dest)
    code = error_code(lambda: kms.customer.re_encrypt(CiphertextBlob=blob,
                                                      DestinationKeyId=dest))
    assert code == "DisabledException"


# --- key usage -----------------------------------------------------------------------
def test_asymmetric_key_with_symmetric_encrypt_is_invalid_usage(kms: Target) -> None:
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyId"]
    code = error_code(lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=b"x"))
    assert code == "InvalidKeyUsageException"
    code = error_code(lambda: kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256"))
    assert code == "InvalidKeyUsageException"


def test_hmac_key_cannot_generate_data_keys(kms: Target) -> None:
    key_id = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyId"]
    code = error_code(lambda: kms.customer.generate_data_key(KeyId=key_id, KeySpec="AES_256"))
    assert code == "InvalidKeyUsageException"
    code = error_code(lambda: kms.customer.encrypt(KeyId=key_id, Plaintext=b"x"))
    assert code == "InvalidKeyUsageException"


# --- rotation ------------------------------------------------------------------------
def test_on_demand_rotation_keeps_old_ciphertexts(kms: Target) -> None:
    meta = kms.create_key()
    key_id = meta["KeyId"]
    ctx = {"tenant": "acme"}
    before = kms.customer.encrypt(KeyId=key_id, Plaintext=b"before",
                                  EncryptionContext=ctx)["CiphertextBlob"]
    old_material = material_of(kms, before, EncryptionContext=ctx)
    kms.customer.rotate_key_on_demand(KeyId=key_id)
    rotations = wait_for_rotations(kms, key_id, 1)
    assert rotations[0]["RotationType"] == "ON_DEMAND"

    def rotated_blob() -> bytes:
        blob: bytes = kms.customer.encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
        if old_material is not None:
            assert material_of(kms, blob) != old_material
        return blob

    after = eventually(kms, rotated_blob)
    plain = kms.customer.decrypt(CiphertextBlob=before, EncryptionContext=ctx)
    assert plain["Plaintext"] == b"before"
    assert plain["KeyId"] == meta["Arn"]
    assert kms.customer.decrypt(CiphertextBlob=after)["Plaintext"] == b"after"
    if old_material is None:
        return  # this target does not report KeyMaterialId
    new_material = material_of(kms, after)
    assert new_material is not None
    assert new_material != old_material
    # the material id names the material, not the ciphertext
    assert material_of(kms, before, EncryptionContext=ctx) == old_material
    again = kms.customer.encrypt(KeyId=key_id, Plaintext=b"again")["CiphertextBlob"]
    assert material_of(kms, again) == new_material


def test_material_id_is_stable_without_rotation(kms: Target) -> None:
    key_id = kms.create_key()["KeyId"]
    one = kms.customer.encrypt(KeyId=key_id, Plaintext=b"1")["CiphertextBlob"]
    two = kms.customer.encrypt(KeyId=key_id, Plaintext=b"2")["CiphertextBlob"]
    first = material_of(kms, one)
    if first is None:
        pytest.skip("this target does not report KeyMaterialId")
    assert material_of(kms, two) == first


def test_automatic_rotation_after_period(kms: Target) -> None:
    local = kms.require_local("advances the clock past the rotation period")
    meta = kms.create_key()
    key_id = meta["KeyId"]
    before = kms.customer.encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]
    old_material = material_of(kms, before)
    assert old_material is not None
    kms.customer.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    status = kms.customer.get_key_rotation_status(KeyId=key_id)
    first_due = status["NextRotationDate"]
    assert kms.customer.list_key_rotations(KeyId=key_id)["Rotations"] == []

    local.advance(91 * DAY.total_seconds())

    rotations = kms.customer.list_key_rotations(KeyId=key_id)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
    assert rotations[0]["KeyId"] == meta["Arn"]
    assert abs(rotations[0]["RotationDate"] - first_due) < dt.timedelta(seconds=1)
    status = kms.customer.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90
    assert abs(status["NextRotationDate"] - first_due - 90 * DAY) < dt.timedelta(seconds=1)

    after = kms.customer.encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
    new_material = material_of(kms, after)
    assert new_material is not None
    assert new_material != old_material
    assert kms.customer.decrypt(CiphertextBlob=before)["Plaintext"] == b"before"
    assert material_of(kms, before) == old_material
    assert kms.customer.decrypt(CiphertextBlob=after)["Plaintext"] == b"after"
