"""Row authentication: the control plane's rows carry a MAC, so a row the platform did not
write (inserted or edited by someone with write access to the database) grants nothing.

The key is the platform's integrity key, a secret that lives in the platform's settings
and never in the database. Per table, a subkey is derived with HKDF-SHA256
(``info = "cmek rows v1 " + table``); a row's tag is HMAC-SHA256 under that subkey over
its fields in a fixed order, each encoded as::

    type (1 byte: n none, s str, b bytes, i int, f float)  |  length (4 bytes, big-endian)
    |  value (UTF-8; raw bytes; decimal int; float.hex())

so no two rows with different fields share an encoding. Secrets looked up by value (API
tokens, event credentials) are stored as an HMAC of the secret under a subkey of their
own (:meth:`RowAuthenticator.lookup`): a database reader cannot make a valid one.

A MAC says a row was written by a holder of the key; it does not say it is the latest
such row. Someone who copied an earlier row can put it back (docs/security.md lists
what that allows).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Field = str | bytes | int | float | None
MIN_KEY_BYTES = 32
TAG_BYTES = 32


def _encode(value: Field) -> bytes:
    if value is None:
        kind, data = b"n", b""
    elif isinstance(value, str):
        kind, data = b"s", value.encode()
    elif isinstance(value, bytes):
        kind, data = b"b", value
    elif isinstance(value, bool):
        raise TypeError("booleans are stored as integers: pass an int")
    elif isinstance(value, int):
        kind, data = b"i", str(value).encode()
    elif isinstance(value, float):
        kind, data = b"f", value.hex().encode()
    else:
        raise TypeError(f"cannot authenticate a {type(value).__name__}")
    return kind + struct.pack(">I", len(data)) + data


class RowAuthenticator:
    """Tags and checks rows; one instance per process, built from the integrity key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the integrity key must be at least {MIN_KEY_BYTES} bytes")
        self._key = bytes(key)
        self._subkeys: dict[str, bytes] = {}

    def _subkey(self, purpose: str) -> bytes:
        subkey = self._subkeys.get(purpose)
        if subkey is None:
            subkey = HKDF(hashes.SHA256(), 32, salt=None,
                          info=b"cmek rows v1 " + purpose.encode()).derive(self._key)
            self._subkeys[purpose] = subkey
        return subkey

    def tag(self, table: str, *fields: Field) -> bytes:
        message = b"".join(_encode(f) for f in fields)
        return hmac.new(self._subkey(table), message, hashlib.sha256).digest()

    def valid(self, table: str, tag: bytes | None, *fields: Field) -> bool:
        """Constant-time; a missing tag is never valid."""
        return tag is not None and hmac.compare_digest(bytes(tag), self.tag(table, *fields))

    def lookup(self, purpose: str, secret: str) -> str:
        """What a secret is stored and found by: hex, 64 characters."""
        return hmac.new(self._subkey("lookup " + purpose), secret.encode(),
                        hashlib.sha256).hexdigest()
