"""Tenant key states, persisted in the control plane, each transition in the audit trail.

    active ──transient KMS errors──> degraded ──outage_grace over──> locked
       │                                │
       └──disabled / access denied / grant gone──> locked ──deletion scheduled──> pending_deletion
    locked / pending_deletion ──key usable again──> restoring ──> active
    key deleted, or restore_window over ──> destroyed (data keys and backups shredded)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from cmek.crypto.rows import RowAuthenticator

log = logging.getLogger("cmek.lifecycle")


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
    sa.Column("tag", sa.LargeBinary, nullable=True),  # cmek.crypto.rows, over the above
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

    def tagged_fields(self) -> tuple[str | int | float | None, ...]:
        """What a state row's tag covers, in column order, typed as the database reads
        them back (times are floats)."""
        return tuple(v if v is None or isinstance(v, str) or k == "version" else float(v)
                     for k, v in self.to_row().items())


class StateStore:
    """Key states with a tag each: a state row the platform did not write reads as
    ``locked`` (reason ``state_not_authentic``), never as what it claims, so a forged
    row can neither serve a revoked tenant nor start a shred; the next check replaces
    it with an authentic one."""

    def __init__(self, engine: sa.Engine, rows: RowAuthenticator) -> None:
        self.engine = engine
        self.rows = rows
        metadata.create_all(engine)

    def _state(self, row: sa.Row[Any]) -> TenantKeyState:
        m = dict(row._mapping)
        tag = m.pop("tag")
        try:
            claimed: TenantKeyState | None = TenantKeyState(**{**m, "state": KeyState(m["state"])})
        except ValueError:
            claimed = None
        if claimed is not None and self.rows.valid("lifecycle_states", tag,
                                                   *claimed.tagged_fields()):
            return claimed
        log.warning("a key state row not written by the platform reads as locked")
        return TenantKeyState(str(m["tenant_id"]), KeyState.LOCKED, "state_not_authentic",
                              float(m["since"]), version=int(m["version"]))

    def get(self, tenant_id: str) -> TenantKeyState | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(states).where(states.c.tenant_id == tenant_id)).first()
        return None if row is None else self._state(row)

    def all(self) -> list[TenantKeyState]:
        with self.engine.connect() as conn:
            return [self._state(r) for r in conn.execute(
                sa.select(states).order_by(states.c.tenant_id))]

    def put(self, new: TenantKeyState) -> bool:
        """Write if nobody else changed the row meanwhile (optimistic: ``version``)."""
        values = {**new.to_row(),
                  "tag": self.rows.tag("lifecycle_states", *new.tagged_fields())}
        if new.version == 1:
            try:
                with self.engine.begin() as conn:
                    conn.execute(states.insert().values(**values))
            except sa.exc.IntegrityError:
                return False
            return True
        with self.engine.begin() as conn:
            done = conn.execute(states.update().where(
                states.c.tenant_id == new.tenant_id, states.c.version == new.version - 1)
                .values(**values)).rowcount
        return bool(done)
