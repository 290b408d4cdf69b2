"""What locking, restoring and destroying do to a tenant on this platform.

The lifecycle engine decides (cmek.lifecycle); this carries it out: in the process that
saw the change (``lock``, ``restart``, ``restore_from_backup``, ``destroy``), and in every
other process when the cluster announces it (``announced``). It also remembers when this
process began each lock, so that a request the lock cut short is answered as a refusal of
a locked tenant (``lock_met``), not as whatever failed inside it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cmek import crashpoints
from cmek.keyring.table import data_keys
from cmek.lifecycle import TenantKeyState
from cmek.stores.backup import list_backups

if TYPE_CHECKING:
    from cmek.platform.service import Platform


class TenantEnforcer:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._recent_locks: dict[str, tuple[float, TenantKeyState]] = {}
        self._lock = threading.Lock()

    def lock(self, tenant_id: str, state: TenantKeyState) -> None:
        """In order of urgency; the steps taken are recorded in the audit trail."""
        p = self.platform
        self._note_lock(tenant_id, state)
        purged = p.keyring.purge(tenant_id, reason=f"locked:{state.reason}")
        revoked = p.control.revoke_tenant(tenant_id, p.clock.now())
        self._close_here(tenant_id)
        p.databases.close(tenant_id)
        p.audit.append(tenant_id, "tenant_locked", {
            "state": state.state.value, "reason": state.reason,
            "steps": ["data_keys_purged", "requests_refused", "tokens_revoked",
                      "worker_stopped", "stores_closed"],
            "data_keys_purged": purged, "tokens_revoked": revoked})

    def restart(self, tenant_id: str) -> None:
        p = self.platform
        p.databases.open(tenant_id)
        p.stores.reopen(tenant_id)

    def announced(self, tenant_id: str) -> None:
        """Another process changed the tenant's key state: act on it in this one."""
        p = self.platform
        state = p.lifecycle.state(tenant_id)
        if state.state.serving:
            p.stores.reopen(tenant_id)
            return
        self._note_lock(tenant_id, state)
        p.keyring.purge(tenant_id, reason=f"announced:{state.state.value}")
        self._close_here(tenant_id)

    def _close_here(self, tenant_id: str) -> None:
        """What this process holds of the tenant: its worker, index and store."""
        p = self.platform
        p.workers.stop(tenant_id)
        p.indexes.drop(tenant_id)
        p.stores.close(tenant_id)

    def _note_lock(self, tenant_id: str, state: TenantKeyState) -> None:
        with self._lock:
            self._recent_locks[tenant_id] = (time.monotonic(), state)

    def lock_met(self, tenant_id: str, since: float) -> TenantKeyState | None:
        """Why a request of the tenant that began at ``since`` (monotonic) was cut short,
        if a lock did it: the state now if the key is still away, else the state of a lock
        that began while the request ran (it may be over by the time the request answers).
        None if no lock touched it. Reads a state; never writes one."""
        current = self.platform.lifecycle.states.get(tenant_id)
        if current is not None and not current.state.serving:
            return current
        with self._lock:
            recent = self._recent_locks.get(tenant_id)
        return recent[1] if recent is not None and recent[0] >= since else None

    def restore_from_backup(self, tenant_id: str) -> dict[str, Any]:
        self.restart(tenant_id)
        p = self.platform
        backups = list_backups(tenant_id, p.objects)
        if not backups:
            return {"backup_id": None, "note": "no backup: live stores kept as they were"}
        latest = backups[-1]
        report = p.backups.restore(tenant_id, latest.backup_id)
        return {"backup_id": latest.backup_id, "backup_created_at": latest.created_at,
                "changes_lost_after": latest.created_at, "rows": report["rows"]}

    def destroy(self, tenant_id: str) -> dict[str, Any]:
        """Crypto-shredding: every wrapped data key and every backup of the tenant goes;
        its id stays reserved in the control plane."""
        p = self.platform
        p.keyring.purge(tenant_id, reason="destroyed")
        with p.engine.begin() as conn:
            keys = conn.execute(data_keys.delete().where(
                data_keys.c.tenant_id == tenant_id)).rowcount
        crashpoints.reached("shred.data_keys_deleted")
        prefix = f"tenants/{tenant_id}/"
        objects = p.objects.sweep(prefix) + p.objects.delete_prefix(prefix)
        crashpoints.reached("shred.objects_deleted")
        warehouse_files = p.warehouses.remove(tenant_id)
        p.stores.close(tenant_id, forget=True)
        database_dropped = p.databases.drop(tenant_id)
        p.backups.forget(tenant_id)
        p.control.revoke_tenant(tenant_id, p.clock.now())
        with p.engine.connect() as conn:  # what the attestation attests: nothing is left
            keys_left = conn.execute(sa.select(sa.func.count()).select_from(data_keys).where(
                data_keys.c.tenant_id == tenant_id)).scalar_one()
        return {"data_keys_deleted": int(keys), "objects_deleted": objects,
                "warehouse_files_deleted": warehouse_files,
                "tenant_database_dropped": database_dropped,
                "data_keys_remaining": int(keys_left),
                "objects_remaining": len(p.objects.list(prefix))}
