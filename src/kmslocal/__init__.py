"""kmslocal: a local key service that speaks the AWS KMS wire protocol.

A development and test service, not an HSM. It never imports ``cmek``.
"""

__version__ = "0.1.0"
