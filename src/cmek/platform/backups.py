"""A tenant's backups: made on demand and every ``backup_interval``, restored by the
operator or by the lifecycle (a key that came back after the live-store grace).

A restore is journaled (cmek.stores.backup): one a crash cut short is finished before the
tenant is served again, and until then its requests answer 423 ``tenant_store_closed``.
A tenant whose key is not usable waits: its own restore brings it back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cmek import crashpoints
from cmek.clock import Clock
from cmek.errors import CmekError
from cmek.lifecycle import KeyState, Lifecycle
from cmek.platform.indexing import SearchIndexes
from cmek.stores.backup import (
    BackupInfo,
    RestoreJournal,
    create_backup,
    list_backups,
    restore_backup,
)
from cmek.stores.objects import ObjectStore
from cmek.stores.tenant import TenantStore

log = logging.getLogger("cmek.platform")


class Backups:
    def __init__(self, objects: ObjectStore, journal: RestoreJournal, indexes: SearchIndexes,
                 lifecycle: Lifecycle, clock: Clock, interval: float, *,
                 guard: Callable[[str], None], store: Callable[[str], TenantStore],
                 tenant_ids: Callable[[], list[str]]) -> None:
        """``guard`` refuses a tenant that is not served; ``store`` opens its store."""
        self.objects = objects
        self.journal = journal
        self.indexes = indexes
        self.lifecycle = lifecycle
        self.clock = clock
        self.interval = interval
        self._guard = guard
        self._store = store
        self._tenant_ids = tenant_ids
        self._unrestored: set[str] = set()  # a restore cut short, not yet finished
        self._lock = threading.Lock()

    def create(self, tenant_id: str, actor: str) -> BackupInfo:
        self._guard(tenant_id)  # never of a locked tenant, even when a restart reopened it
        store = self._store(tenant_id)
        info = create_backup(store, self.objects)
        crashpoints.reached("backup.published")
        store.log("backup_created", actor, {"backup_id": info.backup_id})
        return info

    def list(self, tenant_id: str) -> list[BackupInfo]:
        self._store(tenant_id)  # UnknownTenant first
        return list_backups(tenant_id, self.objects)

    def restore(self, tenant_id: str, backup_id: str,
                actor: str = "operator") -> dict[str, Any]:
        store = self._store(tenant_id)
        report = restore_backup(store, self.objects, backup_id, self.journal)
        self.indexes.drop(tenant_id)
        self.indexes.mark_stale(tenant_id)  # the indexing job rebuilds it
        with self._lock:
            self._unrestored.discard(tenant_id)
        store.log("backup_restored", actor, {"backup_id": backup_id})
        return {"backup_id": backup_id, **report}

    def restoring(self, tenant_id: str) -> bool:
        """A restore of the tenant was cut short and is not finished yet."""
        with self._lock:
            return tenant_id in self._unrestored

    def forget(self, tenant_id: str) -> None:
        """A destroyed tenant has nothing left to restore."""
        self.journal.forget(tenant_id)

    def run_due(self) -> int:
        if self.interval <= 0:
            return 0
        made = 0
        for tenant_id in self._tenant_ids():
            if not self.lifecycle.state(tenant_id).state.serving:
                continue  # nothing to open, and one tenant's failure must not stop the rest
            try:
                latest = max((b.created_at for b in list_backups(tenant_id, self.objects)),
                             default=0.0)
                if self.clock.now() - latest >= self.interval:
                    self.create(tenant_id, "scheduler")
                    made += 1
            except CmekError:
                continue
        return made

    def resume(self) -> int:
        """Finish the restores that a crash cut short, here or in another process."""
        done = 0
        for tenant_id, backup_id in self.journal.abandoned():
            state = self.lifecycle.state(tenant_id).state
            if state is KeyState.DESTROYED:
                self.journal.forget(tenant_id)
            elif state.serving:
                with self._lock:
                    self._unrestored.add(tenant_id)
                try:
                    self.restore(tenant_id, backup_id, actor="recovery")
                    done += 1
                except CmekError as e:
                    log.warning("finishing a restore of %s failed (%s); retrying", tenant_id,
                                e.code)
        return done
