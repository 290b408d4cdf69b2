"""cmek: every byte of a tenant's data under a key the customer owns in its own KMS.

Data flows one way: platform -> stores -> keyring -> crypto/kms. The library entry
point is ``connect``, which returns a ``Keyring`` (see docs/library.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cmek.clock import Clock
    from cmek.keyring import Keyring
    from cmek.kms import Kms, KmsSettings


def connect(
    database_url: str, kms: KmsSettings | Kms, *, integrity_key: str | bytes,
    clock: Clock | None = None, data_key_ttl: float = 300.0, refresh_ahead: float = 30.0,
    rewrap_with_reencrypt: bool = False,
) -> Keyring:
    """A keyring over a key table (``sqlite:///...`` or ``postgresql://...``) and a KMS.

    ``integrity_key`` (at least 32 bytes; every process of a deployment uses the same)
    authenticates the key table's rows: a tenant's key is never taken from a row written
    without it. The audit trail lives in the same database, as ``keyring.audit``.
    """
    from cmek.audit import AuditTrail
    from cmek.clock import SystemClock
    from cmek.crypto.rows import RowAuthenticator
    from cmek.db import create_engine
    from cmek.keyring import Keyring
    from cmek.kms import BotoKms, KmsSettings

    engine = create_engine(database_url)
    clock = clock or SystemClock()
    client = BotoKms(kms) if isinstance(kms, KmsSettings) else kms
    key = integrity_key.encode() if isinstance(integrity_key, str) else integrity_key
    return Keyring(client, engine, clock, AuditTrail(engine, clock),
                   rows=RowAuthenticator(key), ttl=data_key_ttl,
                   refresh_ahead=min(refresh_ahead, data_key_ttl / 2),
                   rewrap_with_reencrypt=rewrap_with_reencrypt)
