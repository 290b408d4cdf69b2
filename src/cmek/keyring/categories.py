"""The data categories of a tenant; each has its own data keys, so each shows up
separately in the customer's usage log and can be purged or re-keyed on its own."""

from __future__ import annotations

from enum import StrEnum

from cmek.errors import UnknownCategory


class Category(StrEnum):
    WAREHOUSE_DATA = "warehouse_data"  # cached query results and extracts
    WAREHOUSE_CREDENTIALS = "warehouse_credentials"  # connection configuration and secrets
    METADATA = "metadata"  # tables, models, liveboards, answers
    SEARCH_INDEX = "search_index"
    AUTH = "auth"  # local users, password hashes, SAML/OIDC settings
    BACKUPS = "backups"
    LOGS = "logs"  # the tenant's activity log

    @classmethod
    def parse(cls, value: str) -> Category:
        found = _BY_VALUE.get(value)
        if found is not None:
            return found
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(c.value for c in cls)
            raise UnknownCategory(
                f"unknown data category {value[:64]!r} (one of: {names})"
            ) from None


_BY_VALUE: dict[str, Category] = {c.value: c for c in Category}
_NAMES: dict[str, str] = {c.value: c.value for c in Category}


def category_name(value: str) -> str:
    """The category's plain name, or UnknownCategory: cheap enough for every record."""
    name = _NAMES.get(value)
    return name if name is not None else Category.parse(value).value
