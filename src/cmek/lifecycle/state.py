"""Tenant key states, persisted in the control plane, each transition in the audit trail.

    active ──transient KMS errors──> degraded ──outage_grace over──> locked
       │                                │
       └──disabled / access denied / grant gone──> locked ──deletion scheduled──> pending_deletion
    locked / pending_deletion ──key usable again──> restoring ──> active
    key deleted, or restore_window over ──> destroyed (data keys and backups shredded)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa


class KeyState(StrEnum):
    ACTIVE = "active"
    DEGRADED = "degraded"
    LOCKED = "locked"
    PENDING_DELETION = "pending_deletion"
    RESTORING = "restoring"
    DESTROYED = "destroyed"

    @property
    def serving(self) -> bool:
        """Whether the tenant's data may be served in this state."""
        return self in (KeyState.ACTIVE, KeyState.DEGRADED)


metadata = sa.MetaData()

states = sa.Table(
    "lifecycle_states", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("last_checked_at", sa.Float, nullable=True),
    sa.Column("last_ok_at", sa.Float, nullable=True),
    sa.Column("unusable_since", sa.Float, nullable=True),
    sa.Column("degraded_since", sa.Float, nullable=True),
    sa.Column("deletion_date", sa.Float, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
)


@dataclass(frozen=True)
class TenantKeyState:
    tenant_id: str
    state: KeyState
    reason: str
    since: float
    last_checked_at: float | None = None
    last_ok_at: float | None = None
    unusable_since: float | None = None
    degraded_since: float | None = None
    deletion_date: float | None = None
    version: int = 0

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["state"] = self.state.value
        return row

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> TenantKeyState:
        m = dict(row._mapping)
        m["state"] = KeyState(m["state"])
        return cls(**m)


class StateStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def get(self, tenant_id: str) -> TenantKeyState | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(states).where(states.c.tenant_id == tenant_id)).first()
        return None if row is None else TenantKeyState.from_row(row)

    def all(self) -> list[TenantKeyState]:
        with self.engine.connect() as conn:
            return [TenantKeyState.from_row(r) for r in conn.execute(
                sa.select(states).order_by(states.c.tenant_id))]

    def put(self, new: TenantKeyState) -> bool:
        """Write if nobody else changed the row meanwhile (optimistic: ``version``)."""
        if new.version == 1:
            try:
                with self.engine.begin() as conn:
                    conn.execute(states.insert().values(**new.to_row()))
            except sa.exc.IntegrityError:
                return False
            return True
        with self.engine.begin() as conn:
            done = conn.execute(states.update().where(
                states.c.tenant_id == new.tenant_id, states.c.version == new.version - 1)
                .values(**new.to_row())).rowcount
        return bool(done)
