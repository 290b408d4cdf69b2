"""A tenant's scheduled queries: each run in a query process of its own, its result sealed
in the object store, its outcome in the tenant's run history.

A locked tenant's due runs are recorded as refused in the control plane (the tenant's own
store is closed); when the key is back, those slots are skipped, not run late.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from cmek.clock import Clock
from cmek.errors import CmekError, InvalidInput
from cmek.keyring import Keyring
from cmek.kms import KeyRevoked, KmsError
from cmek.platform.access import Caller
from cmek.platform.control import ControlPlane
from cmek.platform.warehouse import Warehouses
from cmek.stores.objects import ObjectStore
from cmek.stores.tenant import TenantStore


class Schedules:
    def __init__(self, control: ControlPlane, warehouses: Warehouses, objects: ObjectStore,
                 keyring: Keyring, clock: Clock, min_period: float, *,
                 store: Callable[[str], TenantStore]) -> None:
        self.control = control
        self.warehouses = warehouses
        self.objects = objects
        self.keyring = keyring
        self.clock = clock
        self.min_period = min_period
        self._store = store
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def create(self, caller: Caller, name: str, connection: str, sql: str,
               every_seconds: float) -> dict[str, Any]:
        if every_seconds < self.min_period:
            raise InvalidInput(f"every_seconds must be at least {self.min_period:g}")
        store = self._store(caller.tenant_id)
        store.get_connection(connection)  # NotFound before anything is stored
        schedule = store.create_schedule(name, connection, sql, every_seconds)
        store.log("schedule_created", caller.user_id, {"schedule_id": schedule["schedule_id"]})
        return schedule

    def run_due(self, tenant_id: str) -> int:
        """The due schedules of one tenant, one run at a time per tenant."""
        with self._guard:
            lock = self._locks.setdefault(tenant_id, threading.Lock())
        with lock:
            store = self._store(tenant_id)
            try:
                store.skip_refused_slots(self.control.next_runs(tenant_id))
                due = store.due_schedule_ids(self.clock.now())
                self.control.remember_schedules(tenant_id, store.schedule_slots())
            except CmekError:
                return 0
            for schedule_id in due:
                self._run(store, schedule_id)
            return len(due)

    def refuse_due(self, tenant_id: str) -> int:
        """A locked tenant's due runs, recorded as refused."""
        return self.control.refuse_due_runs(tenant_id, self.clock.now(),
                                            "tenant_key_unavailable")

    def _run(self, store: TenantStore, schedule_id: str) -> None:
        started = self.clock.now()
        try:
            spec = store.get_schedule(schedule_id)
            conn = store.get_connection(spec["connection"])
            result = self.warehouses.query(store.tenant, conn["type"], conn["config"],
                                           conn["credentials"], spec["sql"])
            key = f"tenants/{store.tenant}/results/run-{schedule_id}-{int(started)}"
            self.objects.put(key, self.keyring.seal(store.tenant, "warehouse_data",
                                                    key.split("/", 2)[2],
                                                    json.dumps(result.to_json()).encode()))
            store.record_run(schedule_id, started, "succeeded", None, key,
                             {"rows": len(result.rows)})
        except KmsError as e:
            code = "tenant_key_unavailable" if isinstance(e, KeyRevoked) else e.code
            store.record_run(schedule_id, started, "failed", code, None, None)
        except CmekError as e:
            store.record_run(schedule_id, started, "failed", e.code, None, None)
