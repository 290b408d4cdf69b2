"""Coverage-guided fuzzing of the stream parser (atheris / libFuzzer).

Each input either is opened as a stream as it stands, or drives edits of a valid stream of
zero to three 4 KiB chunks: bit flips, byte inserts and deletes, overwrites, a cut, an
extension, chunks reordered, dropped or duplicated, and a choice of key and binding.
The property: only the untouched stream under its own key and binding opens, to exactly
its plaintext; everything else raises the one opaque DecryptionError, nothing else, after
writing at most whole authenticated chunks of the original (never all of them, and
nothing when the header, key or binding is wrong).

Run: python tests/fuzz_targets/stream_fuzz.py -runs=20000 -seed=1
"""

from __future__ import annotations

import io
import sys

import atheris

with atheris.instrument_imports(include=["cmek"]):
    from cmek.crypto import (
        MIN_CHUNK,
        STREAM_HEADER_LEN,
        Binding,
        DataKey,
        open_stream,
        stream_epoch,
    )
    from cmek.crypto.stream import _seal_stream_with_salt
    from cmek.errors import DecryptionError

EPOCH = 5
KEY = DataKey(EPOCH, bytearray(range(32)))
KEYS = [KEY, DataKey(EPOCH + 1, bytearray(range(32))),
        DataKey(EPOCH, bytearray(range(1, 33)))]
BINDING = Binding("tenant-a", "exports", "export-1")
BINDINGS = [BINDING, Binding("tenant-b", "exports", "export-1"),
            Binding("tenant-a", "export", "sexport-1"), Binding("tenant-a", "backups", "export-1")]
CHUNK = MIN_CHUNK
SEALED = CHUNK + 16
SALT = bytes(16)  # fixed, so that a run is a pure function of its inputs and seed
PATTERN = bytes(i % 251 for i in range(3 * CHUNK + 256))


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def open_bytes(key: DataKey, binding: Binding, data: bytes) -> tuple[bool, bytes]:
    """(refused, what reached dst); any exception but the opaque error is a finding."""
    sink = Sink()
    try:
        open_stream(key, binding, io.BytesIO(data), sink)
    except DecryptionError as exc:
        if type(exc) is not DecryptionError or str(exc) != "decryption failed":
            raise AssertionError(f"not the opaque error: {exc!r}") from None
        return True, bytes(sink.data)
    return False, bytes(sink.data)


def seal_bytes(plaintext: bytes) -> bytes:
    out = io.BytesIO()
    _seal_stream_with_salt(KEY, BINDING, io.BytesIO(plaintext), out, CHUNK, SALT)
    return out.getvalue()


@atheris.instrument_func
def edit(fdp: atheris.FuzzedDataProvider, data: bytes) -> bytes:
    if fdp.ConsumeBool():  # splice whole chunks: reorder, drop, duplicate
        body = data[STREAM_HEADER_LEN:]
        chunks = [body[i:i + SEALED] for i in range(0, len(body), SEALED)]
        order = [fdp.ConsumeIntInRange(0, len(chunks) - 1)
                 for _ in range(fdp.ConsumeIntInRange(0, 5))] if chunks else []
        data = data[:STREAM_HEADER_LEN] + b"".join(chunks[i] for i in order)
    out = bytearray(data)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
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
        refused, written = open_bytes(KEY, BINDING, data)
        if not refused or written:
            raise AssertionError("arbitrary bytes opened, or leaked plaintext")
        try:
            stream_epoch(data[:STREAM_HEADER_LEN])
        except DecryptionError:
            pass
        else:
            if data[:2] != b"\1S" or len(data) < STREAM_HEADER_LEN:
                raise AssertionError("an epoch was read from a malformed header")
        return
    size = fdp.ConsumeIntInRange(0, 3 * CHUNK)
    fill = fdp.ConsumeIntInRange(0, 255)
    plaintext = PATTERN[fill:fill + size]
    sealed = seal_bytes(plaintext)
    key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
    binding = BINDINGS[fdp.ConsumeIntInRange(0, len(BINDINGS) - 1)]
    data = edit(fdp, sealed)
    refused, written = open_bytes(key, binding, data)
    right = key is KEY and binding is BINDING
    if data == sealed and right:
        if refused or written != plaintext:
            raise AssertionError("the untouched stream did not open to its plaintext")
        return
    if not refused:
        raise AssertionError("a modified stream, or another key or binding, opened")
    if not right or data[:STREAM_HEADER_LEN] != sealed[:STREAM_HEADER_LEN]:
        if written:
            raise AssertionError("plaintext written under a wrong header, key or binding")
    elif (not plaintext.startswith(written) or len(written) % CHUNK
          or (written and len(written) >= len(plaintext))):
        raise AssertionError("a refused stream wrote more than whole authenticated chunks")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
