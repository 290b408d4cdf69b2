"""What the API accepts: path parameters and request bodies, checked before any handler
runs (strict types, no unknown fields, bounded sizes, plain JSON only)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

TenantId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
ObjectId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
Kind = Annotated[str, Path(pattern=r"^(tables|models|liveboards|answers)$")]


MAX_JSON_DEPTH = 32


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    """Python's JSON parser lets NaN, infinities, lone surrogates (not UTF-8) and nesting
    deeper than responses can be encoded through; stores could not give such bodies back
    as sent, so free-form bodies refuse them at the door."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:  # UnicodeEncodeError is one too
        raise ValueError("only plain JSON: no NaN, infinities or lone surrogates") from None
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TenantCreate(Strict):
    tenant_id: str = Field(min_length=1, max_length=64)
    kms_key_arn: str = Field(min_length=1, max_length=256)
    admin_email: str = Field(min_length=3, max_length=320)
    admin_password: str = Field(min_length=8, max_length=256)


class Login(Strict):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=256)


class UserCreate(Strict):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=8, max_length=256)
    role: str = Field(pattern=r"^(admin|analyst)$")


class ConnectionPut(Strict):
    type: str = Field(pattern=r"^(duckdb|postgres)$")
    config: JsonObject
    credentials: JsonObject = Field(default_factory=dict)


class QueryIn(Strict):
    sql: str = Field(min_length=1, max_length=100_000)


class ScheduleIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    connection: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    sql: str = Field(min_length=1, max_length=100_000)
    every_seconds: float = Field(ge=1, le=366 * 86400)


class RewrapIn(Strict):
    kms_key_arn: str | None = Field(default=None, min_length=1, max_length=256)


class ClockIn(Strict):
    advance_seconds: float = Field(ge=0, allow_inf_nan=False)
