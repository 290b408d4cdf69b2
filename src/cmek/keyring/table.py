"""The key table: tenants and their wrapped data keys, in SQLite or PostgreSQL.

Only wrapped (KMS-encrypted) data keys are stored; a plaintext data key never
touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

tenants = sa.Table(
    "cmek_tenants", metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("key_arn", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # A rewrap in progress: its target key and generation; rows below it are pending.
    sa.Column("rewrap_to", sa.String(256), nullable=True),
    sa.Column("rewrap_generation", sa.Integer, nullable=False, default=0),
    # cmek.crypto.rows over (tenant_id, key_arn, rewrap_to, rewrap_generation): the key a
    # tenant's data keys may be wrapped under is never taken from a row the platform did
    # not write.
    sa.Column("tag", sa.LargeBinary, nullable=True),
)

data_keys = sa.Table(
    "cmek_data_keys", metadata,
    sa.Column("tenant_id", sa.String(128), sa.ForeignKey("cmek_tenants.tenant_id"),
              primary_key=True),
    sa.Column("category", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("key_arn", sa.String(256), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Seals handed out so far under this epoch, reserved in chunks by each process,
    # so the nonce budget holds across processes and restarts.
    sa.Column("seals_reserved", sa.BigInteger, nullable=False, default=0),
    sa.Column("wrap_generation", sa.Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class DataKeyRow:
    tenant_id: str
    category: str
    epoch: int
    key_arn: str
    wrapped: bytes
    created_at: float
    seals_reserved: int
    wrap_generation: int


def row_to_key(row: sa.Row[Any]) -> DataKeyRow:
    m = row._mapping
    return DataKeyRow(
        str(m["tenant_id"]), str(m["category"]), int(m["epoch"]), str(m["key_arn"]),
        bytes(m["wrapped"]), float(m["created_at"]), int(m["seals_reserved"]),
        int(m["wrap_generation"]),
    )
