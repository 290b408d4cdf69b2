"""Typed access to a request's JSON parameters, refusing bad input with AWS's codes.

Validation happens here, before a model touches state, so bad input changes nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from kmslocal.exceptions import KMSError, validation

_MISSING = object()


def _member(name: str) -> str:
    return name[:1].lower() + name[1:]


def _constraint(name: str, value: object, rule: str) -> KMSError:
    shown = "null" if value is None else repr(value) if not isinstance(value, bytes) else "*"
    return validation(
        f"1 validation error detected: Value {shown} at '{_member(name)}' failed to satisfy "
        f"constraint: {rule}"
    )


class Params:
    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def _get(self, name: str, required: bool) -> Any:
        value = self.raw.get(name, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise _constraint(name, None, "Member must not be null")
            return None
        return value

    def string(
        self, name: str, *, required: bool = False, min_len: int = 1, max_len: int = 2048,
        choices: tuple[str, ...] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise KMSError("SerializationException", f"Expected a string for {name}")
        if len(value) < min_len:
            raise _constraint(
                name, value, f"Member must have length greater than or equal to {min_len}"
            )
        if len(value) > max_len:
            raise _constraint(
                name, value[:32], f"Member must have length less than or equal to {max_len}"
            )
        if choices is not None and value not in choices:
            raise _constraint(
                name, value, f"Member must satisfy enum value set: [{', '.join(choices)}]"
            )
        return value

    def req_str(self, name: str, **kw: Any) -> str:
        value = self.string(name, required=True, **kw)
        assert value is not None
        return value

    def integer(self, name: str, *, lo: int, hi: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise KMSError("SerializationException", f"Expected an integer for {name}")
        if value < lo:
            raise _constraint(name, value, f"Member must have value greater than or equal to {lo}")
        if value > hi:
            raise _constraint(name, value, f"Member must have value less than or equal to {hi}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise KMSError("SerializationException", f"Expected a boolean for {name}")
        return value

    def blob(self, name: str, *, required: bool = False, max_len: int) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise KMSError("SerializationException", f"Expected a base64 string for {name}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise KMSError("SerializationException", f"{name} is not valid base64") from None
        if not data:
            raise _constraint(name, data, "Member must have length greater than or equal to 1")
        if len(data) > max_len:
            raise _constraint(
                name, data, f"Member must have length less than or equal to {max_len}"
            )
        return data

    def str_list(self, name: str, *, required: bool = False, max_items: int = 50) -> list[str]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise KMSError("SerializationException", f"Expected a list of strings for {name}")
        if len(value) > max_items:
            raise _constraint(
                name, len(value), f"Member must have length less than or equal to {max_items}"
            )
        return list(value)

    def context(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise KMSError("SerializationException", f"Expected a map of strings for {name}")
        if any(not k for k in value):
            raise validation("Encryption context keys must not be empty")
        if sum(len(k) + len(v) for k, v in value.items()) > 8192:
            raise validation("Encryption context must be at most 8192 characters")
        return dict(value)

    def obj(self, name: str) -> dict[str, Any] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise KMSError("SerializationException", f"Expected an object for {name}")
        return value

    def objects(self, name: str, *, required: bool = False) -> list[dict[str, Any]]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise KMSError("SerializationException", f"Expected a list of objects for {name}")
        return list(value)
