"""The KMS port: the provider's calls to the customer's key, and their error taxonomy."""
