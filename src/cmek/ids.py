"""Identifiers every layer checks the same way (a tenant id is in URLs, table rows,
encryption contexts and key policies, so it has one rule)."""

from __future__ import annotations

from cmek.errors import InvalidInput

TENANT_ID_MAX = 64
_TENANT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def validate_tenant_id(tenant: object) -> str:
    if (not isinstance(tenant, str) or not 1 <= len(tenant) <= TENANT_ID_MAX
            or not set(tenant) <= _TENANT_ID_CHARS or tenant[0] in "-_"):
        raise InvalidInput(
            f"tenant id must be 1-{TENANT_ID_MAX} characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return tenant
