"""Fuzzing the two ciphertext parsers with a fixed, reproducible budget.

The property, for records and streams alike: opening returns the exact original plaintext
only for the unmodified ciphertext under its own key and binding; anything else (arbitrary
bytes, flipped bits, cuts, extensions, rewritten header fields, spliced chunks, another
tenant, category, object id, epoch or data key) raises the one opaque ``DecryptionError``,
and never any other exception. A stream that fails never hands out more than whole
authenticated chunks of the original, always fewer than all of them, and nothing at all
when the header, key or binding is wrong.

Budgets are explicit and derandomized, so every run executes the same cases; each test
counts the cases its body really ran and records them once its assertions held. The same
property is also checked coverage-guided, by the atheris targets in tests/fuzz_targets/,
run here in a subprocess with a fixed number of runs and a fixed seed.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmek.crypto import (
    MIN_CHUNK,
    STREAM_HEADER_LEN,
    Binding,
    DataKey,
    envelope_epoch,
    open_record,
    open_stream,
    seal,
    seal_stream,
    stream_epoch,
)
from cmek.errors import DecryptionError
from tests.mutations import mutate, mutations
from tests.reliability import record

EPOCH = 9
MATERIAL = bytes(range(32))
KEY = DataKey(EPOCH, bytearray(MATERIAL))
NEXT_EPOCH_SAME_MATERIAL = DataKey(EPOCH + 1, bytearray(MATERIAL))
SAME_EPOCH_OTHER_MATERIAL = DataKey(EPOCH, bytearray(os.urandom(32)))
PREVIOUS_EPOCH_OTHER_MATERIAL = DataKey(EPOCH - 1, bytearray(os.urandom(32)))
KEYS = [KEY, NEXT_EPOCH_SAME_MATERIAL, SAME_EPOCH_OTHER_MATERIAL, PREVIOUS_EPOCH_OTHER_MATERIAL]
TENANT, CATEGORY, OBJECT_ID = "tenant-a", "invoices", "obj-1"
BINDING = Binding(TENANT, CATEGORY, OBJECT_ID)
CHUNK = MIN_CHUNK
SEALED_CHUNK = CHUNK + 16

RECORD_FIELDS = {"version": (0, 1), "type": (1, 1), "epoch": (2, 4), "commitment": (6, 32),
                 "nonce": (38, 12), "tag": (-16, 16)}
STREAM_FIELDS = {"version": (0, 1), "type": (1, 1), "epoch": (2, 4), "chunk_size": (6, 4),
                 "commitment": (10, 32), "salt": (42, 16)}

RECORD_BUDGET = {"arbitrary": 2500, "mutated": 1500}
STREAM_BUDGET = {"arbitrary": 1200, "mutated": 1200, "spliced": 500}


def budget(examples: int) -> settings:
    """A fixed number of derandomized examples: the same cases on every run."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def opaque(call: Callable[[], object]) -> bool:
    """True if ``call`` raised the one opaque error; False if it returned. Nothing else."""
    caught: DecryptionError | None = None
    try:
        call()
    except DecryptionError as exc:
        caught = exc
    if caught is None:
        return False
    assert type(caught) is DecryptionError
    assert str(caught) == "decryption failed"
    assert caught.code == "decryption_failed"
    assert caught.__cause__ is None  # raised `from None`: no inner error rides along
    return True


# --- strategies -------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
near_names = st.sampled_from([TENANT, CATEGORY, OBJECT_ID, "tenant-b", "invoice", "sobj-1",
                              "Tenant-a", "obj-1 ", "obj-\u0131"])
field_values = st.one_of(near_names, names)
which_fields = st.sets(st.integers(0, 2), max_size=3)


@st.composite
def bindings(draw: st.DrawFn) -> Binding:
    """Mostly the right binding; otherwise one or more fields changed, sometimes subtly."""
    fields = [TENANT, CATEGORY, OBJECT_ID]
    for i in draw(which_fields):
        fields[i] = draw(field_values)
    return Binding(*fields)


def field_changes(fields: dict[str, tuple[int, int]]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """Overwrite named header fields with drawn bytes of the field's own width."""
    one = st.one_of(*(st.tuples(st.just(name), st.binary(min_size=size, max_size=size))
                      for name, (_, size) in sorted(fields.items())))
    return st.lists(one, max_size=2)


def rewrite(data: bytes, fields: dict[str, tuple[int, int]],
            changes: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(data)
    for name, value in changes:
        offset, size = fields[name]
        start = offset if offset >= 0 else len(out) + offset
        if start >= 0 and start + size <= len(out):
            out[start:start + size] = value
    return bytes(out)


Edit = tuple[list[tuple[str, int, int]], list[tuple[str, bytes]], int | None, bytes]


def edits(fields: dict[str, tuple[int, int]], max_position: int) -> st.SearchStrategy[Edit]:
    """Bit flips, byte inserts and deletes, header field rewrites, a cut and an extension."""
    return st.tuples(st.lists(mutations(max_position), max_size=3), field_changes(fields),
                     st.one_of(st.none(), st.integers(0, max_position)),
                     st.one_of(st.just(b""), st.binary(min_size=1, max_size=40)))


def apply(edit: Edit, fields: dict[str, tuple[int, int]], data: bytes) -> bytes:
    ops, changes, cut, extra = edit
    out = mutate(rewrite(data, fields, changes), ops)
    if cut is not None:
        out = out[:cut % (len(out) + 1)]
    return out + extra


# --- records ----------------------------------------------------------------------------


def test_fuzz_record_arbitrary_bytes() -> None:
    """Arbitrary bytes, bare or behind a plausible header of the right key, never open."""
    prefix = seal(KEY, BINDING, b"")[:50]
    ran = 0

    @budget(RECORD_BUDGET["arbitrary"])
    @given(head=st.sampled_from([b"", prefix[:2], prefix[:38], prefix]),
           body=st.binary(max_size=400), key=st.sampled_from(KEYS))
    def case(head: bytes, body: bytes, key: DataKey) -> None:
        nonlocal ran
        data = head + body
        assert opaque(lambda: open_record(key, BINDING, data))
        epoch: list[int] = []
        if not opaque(lambda: epoch.append(envelope_epoch(data))):
            # It only routes: it answers for well-formed headers and says nothing else.
            assert len(data) >= 66
            assert data[:2] == b"\x01\x52"
            assert epoch == [int.from_bytes(data[2:6], "big")]
        ran += 1

    case()
    assert ran >= RECORD_BUDGET["arbitrary"] // 2
    record("fuzz", "parser_cases", ran)


def test_fuzz_record_mutations_and_wrong_bindings() -> None:
    """Only the untouched envelope, under its own key and binding, gives the plaintext back."""
    ran = 0
    opened = 0

    @budget(RECORD_BUDGET["mutated"])
    @given(plaintext=st.binary(max_size=300), edit=edits(RECORD_FIELDS, 400),
           key=st.sampled_from(KEYS), binding=bindings())
    def case(plaintext: bytes, edit: Edit, key: DataKey,
             binding: Binding) -> None:
        nonlocal ran, opened
        envelope = seal(KEY, BINDING, plaintext)
        data = apply(edit, RECORD_FIELDS, envelope)
        intact = data == envelope and key is KEY and binding == BINDING
        got: list[bytes] = []
        refused = opaque(lambda: got.append(open_record(key, binding, data)))
        if intact:
            assert not refused
            assert got == [plaintext]
            opened += 1
        else:
            assert refused
            assert got == []
        ran += 1

    case()
    assert ran >= RECORD_BUDGET["mutated"] // 2
    assert 0 < opened < ran  # the budget really covered both outcomes
    record("fuzz", "parser_cases", ran)


# --- streams ----------------------------------------------------------------------------


class Sink:
    """A dst that keeps every write, so a refusal can be checked for what leaked before it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def open_stream_outcome(key: DataKey, binding: Binding, data: bytes
                        ) -> tuple[bool, bytes]:
    """(refused, bytes written to dst)."""
    sink = Sink()
    refused = opaque(lambda: open_stream(key, binding, io.BytesIO(data), sink))
    return refused, bytes(sink.data)


def seal_bytes(plaintext: bytes) -> bytes:
    out = io.BytesIO()
    seal_stream(KEY, BINDING, io.BytesIO(plaintext), out, CHUNK)
    return out.getvalue()


def check_refusal(written: bytes, plaintext: bytes, header_intact: bool) -> None:
    """A refused stream leaked at most whole authenticated chunks of the original, never all."""
    if not header_intact:
        assert written == b""
        return
    assert plaintext.startswith(written)
    assert len(written) % CHUNK == 0
    assert len(written) < len(plaintext) or written == b""


# Bodies around one sealed chunk long: a drawn pattern repeated, cheaper to draw than 4 KiB.
chunk_sized_bodies = st.tuples(st.binary(min_size=1, max_size=32),
                               st.integers(SEALED_CHUNK - 2, 2 * SEALED_CHUNK + 2)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[:t[1]])


def test_fuzz_stream_arbitrary_bytes() -> None:
    """Arbitrary bytes, bare or behind a plausible header of the right key, never open."""
    header = seal_bytes(b"")[:STREAM_HEADER_LEN]
    ran = 0

    @budget(STREAM_BUDGET["arbitrary"])
    @given(head=st.sampled_from([b"", header[:2], header[:10], header[:42], header]),
           body=st.one_of(st.binary(max_size=300), chunk_sized_bodies),
           key=st.sampled_from(KEYS))
    def case(head: bytes, body: bytes, key: DataKey) -> None:
        nonlocal ran
        data = head + body
        refused, written = open_stream_outcome(key, BINDING, data)
        assert refused
        assert written == b""
        epoch: list[int] = []
        if not opaque(lambda: epoch.append(stream_epoch(data[:STREAM_HEADER_LEN]))):
            size = struct.unpack(">I", data[6:10])[0]
            assert data[:2] == b"\x01\x53"
            assert MIN_CHUNK <= size <= 16 * 1024 * 1024
            assert epoch == [int.from_bytes(data[2:6], "big")]
        ran += 1

    case()
    assert ran >= STREAM_BUDGET["arbitrary"] // 2
    record("fuzz", "parser_cases", ran)


def test_fuzz_stream_mutations_and_wrong_bindings() -> None:
    """Edits anywhere in a one- to three-chunk stream, other keys and bindings: all refused."""
    ran = 0
    opened = 0

    @budget(STREAM_BUDGET["mutated"])
    @given(size=st.sampled_from([0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK,
                                 2 * CHUNK + 77, 3 * CHUNK]),
           seed=st.integers(0, 255), edit=edits(STREAM_FIELDS, 3 * SEALED_CHUNK + 80),
           key=st.sampled_from(KEYS), binding=bindings())
    def case(size: int, seed: int, edit: Edit, key: DataKey,
             binding: Binding) -> None:
        nonlocal ran, opened
        plaintext = bytes((seed + i) % 251 for i in range(size))
        sealed = seal_bytes(plaintext)
        data = apply(edit, STREAM_FIELDS, sealed)
        refused, written = open_stream_outcome(key, binding, data)
        if data == sealed and key is KEY and binding == BINDING:
            assert not refused
            assert written == plaintext
            opened += 1
        else:
            assert refused
            header_intact = (data[:STREAM_HEADER_LEN] == sealed[:STREAM_HEADER_LEN]
                             and key is KEY and binding == BINDING)
            check_refusal(written, plaintext, header_intact)
        ran += 1

    case()
    assert ran >= STREAM_BUDGET["mutated"] // 2
    assert 0 < opened < ran
    record("fuzz", "parser_cases", ran)


def test_fuzz_stream_spliced_chunks() -> None:
    """Chunks reordered, dropped, duplicated or borrowed from another stream never open."""
    plaintext = bytes(i % 253 for i in range(3 * CHUNK + 500))
    sealed = seal_bytes(plaintext)
    other = seal_bytes(plaintext)  # same key, binding and plaintext; another salt
    def chunks_of(s: bytes) -> list[bytes]:
        body = s[STREAM_HEADER_LEN:]
        return [body[i:i + SEALED_CHUNK] for i in range(0, len(body), SEALED_CHUNK)]

    pool = chunks_of(sealed) + chunks_of(other)  # 0..3 ours, 4..7 the other stream's
    headers = [sealed[:STREAM_HEADER_LEN], other[:STREAM_HEADER_LEN]]
    ran = 0

    @budget(STREAM_BUDGET["spliced"])
    @given(which=st.integers(0, 1), order=st.lists(st.integers(0, 7), max_size=6))
    def case(which: int, order: list[int]) -> None:
        nonlocal ran
        data = headers[which] + b"".join(pool[i] for i in order)
        expected_order = [0, 1, 2, 3] if which == 0 else [4, 5, 6, 7]
        refused, written = open_stream_outcome(KEY, BINDING, data)
        if order == expected_order:
            assert not refused
            assert written == plaintext
        else:
            assert refused
            check_refusal(written, plaintext, header_intact=True)
        ran += 1

    case()
    assert ran >= STREAM_BUDGET["spliced"] // 2
    record("fuzz", "parser_cases", ran)


# --- coverage-guided: atheris -----------------------------------------------------------

FUZZ_TARGETS = Path(__file__).resolve().parent / "fuzz_targets"
ATHERIS_RUNS = {"envelope_fuzz.py": 100_000, "stream_fuzz.py": 40_000}


@pytest.mark.parametrize("target", sorted(ATHERIS_RUNS))
def test_atheris_target(target: str, tmp_path: Path) -> None:
    """libFuzzer drives the harness for a fixed number of runs from a fixed seed."""
    pytest.importorskip("atheris", reason="atheris installs only on Linux x86_64")
    runs = ATHERIS_RUNS[target]
    proc = subprocess.run(
        [sys.executable, str(FUZZ_TARGETS / target), f"-runs={runs}", "-seed=1",
         "-max_len=512", "-timeout=30", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*"))
    done = re.search(r"^Done (\d+) runs in", proc.stderr, re.MULTILINE)
    assert done is not None, proc.stderr[-2000:]
    assert int(done.group(1)) == runs
    # Instrumentation took: the fuzzer found inputs reaching more of cmek than the first.
    coverage = [int(c) for c in re.findall(r"cov: (\d+)", proc.stderr)]
    assert coverage[-1] > coverage[0]
    record("fuzz", "atheris_cases", runs)
