"""cmek: every byte of a tenant's data under a key the customer owns in its own KMS.

Data flows one way: platform -> stores -> keyring -> crypto/kms.
"""

__version__ = "0.1.0"
