"""Coverage-guided fuzzing of the record envelope parser (atheris / libFuzzer).

Each input either is opened as it stands, or drives edits of a valid envelope: bit flips,
byte inserts and deletes, overwrites, a cut, an extension, and a choice of key (the right
one, the next epoch of the same material, another material at the same epoch) and binding.
The property: only the untouched envelope under its own key and binding opens, to exactly
its plaintext; everything else raises the one opaque DecryptionError, nothing else.

Run: python tests/fuzz_targets/envelope_fuzz.py -runs=100000 -seed=1
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["cmek"]):
    from cmek.crypto import Binding, DataKey, envelope_epoch, open_record
    from cmek.crypto.envelope import _seal_with_nonce
    from cmek.errors import DecryptionError

EPOCH = 3
KEY = DataKey(EPOCH, bytearray(range(32)))
KEYS = [KEY, DataKey(EPOCH + 1, bytearray(range(32))),
        DataKey(EPOCH, bytearray(range(1, 33)))]
BINDING = Binding("tenant-a", "invoices", "obj-1")
BINDINGS = [BINDING, Binding("tenant-b", "invoices", "obj-1"),
            Binding("tenant-a", "invoice", "sobj-1"), Binding("tenant-a", "invoices", "obj-2")]
NONCE = bytes(12)  # fixed, so that a run is a pure function of its inputs and seed


def refused(call: object) -> bool:
    """True on the opaque error, False on success; any other exception is a finding."""
    try:
        call()  # type: ignore[operator]
    except DecryptionError as exc:
        if type(exc) is not DecryptionError or str(exc) != "decryption failed":
            raise AssertionError(f"not the opaque error: {exc!r}") from None
        return True
    return False


@atheris.instrument_func
def edit(fdp: atheris.FuzzedDataProvider, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        op = fdp.ConsumeIntInRange(0, 5)
        at = fdp.ConsumeIntInRange(0, max(len(out) - 1, 0))
        value = fdp.ConsumeIntInRange(0, 255)
        if op == 0 and out:
            out[at] ^= 1 << (value % 8)
        elif op == 1:
            out.insert(at, value)
        elif op == 2 and out:
            del out[at]
        elif op == 3 and out:
            out[at] = value
        elif op == 4:
            del out[at:]
        elif op == 5:
            out += fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 32))
    return bytes(out)


@atheris.instrument_func
def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    if fdp.ConsumeBool():  # bytes as they come
        data = fdp.ConsumeBytes(fdp.remaining_bytes())
        if not refused(lambda: open_record(KEY, BINDING, data)):
            raise AssertionError("arbitrary bytes opened")
        if not refused(lambda: envelope_epoch(data)) and (len(data) < 66 or data[:2] != b"\1R"):
            raise AssertionError("an epoch was read from a malformed header")
        return
    plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    envelope = _seal_with_nonce(KEY, BINDING, plaintext, NONCE)
    key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
    binding = BINDINGS[fdp.ConsumeIntInRange(0, len(BINDINGS) - 1)]
    data = edit(fdp, envelope)
    got: list[bytes] = []
    was_refused = refused(lambda: got.append(open_record(key, binding, data)))
    if data == envelope and key is KEY and binding is BINDING:
        if was_refused or got != [plaintext]:
            raise AssertionError("the untouched envelope did not open to its plaintext")
    elif not was_refused:
        raise AssertionError("a modified envelope, or another key or binding, opened")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
