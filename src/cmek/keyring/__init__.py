"""The tenant key hierarchy: data keys per tenant, category and epoch, and their cache."""
