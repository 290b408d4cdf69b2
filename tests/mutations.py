"""Byte-level mutations for the property tests of the ciphertext parsers."""

from __future__ import annotations

from hypothesis import strategies as st


def mutations(max_position: int) -> st.SearchStrategy[tuple[str, int, int]]:
    """Flip a bit, insert a byte or delete a byte, at a position taken modulo the length."""
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, max_position), st.integers(0, 7)),
        st.tuples(st.just("insert"), st.integers(0, max_position), st.integers(0, 255)),
        st.tuples(st.just("delete"), st.integers(0, max_position), st.just(0)),
    )


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, position, value in ops:
        if op == "insert":
            out.insert(position % (len(out) + 1), value)
        elif out:
            at = position % len(out)
            if op == "flip":
                out[at] ^= 1 << value
            else:
                del out[at]
    return bytes(out)
