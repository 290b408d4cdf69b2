"""The tables of a tenant's database. Each ``sealed`` column holds ciphertext; the other
columns are the identifiers kept in clear for routing, which docs/coverage.md lists: a
column added here belongs in that list too.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

objects = sa.Table(
    "objects", metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("object_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
users = sa.Table(
    "users", metadata,
    sa.Column("user_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("email_lookup", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
secrets_table = sa.Table(
    "tenant_secrets", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
connections = sa.Table(
    "connections", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
settings_table = sa.Table(
    "settings", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
schedules = sa.Table(
    "schedules", metadata,
    sa.Column("schedule_id", sa.String(36), primary_key=True),
    sa.Column("every_seconds", sa.Float, nullable=False),
    sa.Column("next_run_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("schedule_id", sa.String(36), nullable=False, index=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("result_key", sa.String(256), nullable=True),
    sa.Column("sealed", sa.LargeBinary, nullable=True),
)
activity = sa.Table(
    "activity", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry_id", sa.String(32), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)
