"""The tenant key hierarchy: data keys per tenant, category and epoch, and their cache."""

from cmek.ids import validate_tenant_id
from cmek.keyring.categories import Category
from cmek.keyring.keyring import Keyring, RewrapInProgress, RewrapReport, encryption_context

__all__ = [
    "Category", "Keyring", "RewrapInProgress", "RewrapReport", "encryption_context",
    "validate_tenant_id",
]
