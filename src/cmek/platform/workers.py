"""One worker thread per tenant for its jobs: a slow warehouse of one tenant never delays
another's reports, and a locked tenant's worker is stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("cmek.platform")


class TenantWorkers:
    """``run(tenant_id)`` on the tenant's own thread, whenever kicked."""

    def __init__(self, run: Callable[[str], int]) -> None:
        self._run = run
        self._events: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stopped: set[str] = set()
        self._guard = threading.Lock()

    def kick(self, tenant_id: str) -> None:
        with self._guard:
            self._stopped.discard(tenant_id)
            event = self._events.setdefault(tenant_id, threading.Event())
            thread = self._threads.get(tenant_id)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._loop, args=(tenant_id, event),
                                          name=f"cmek-jobs-{tenant_id}", daemon=True)
                self._threads[tenant_id] = thread
                thread.start()
        event.set()

    def stop(self, tenant_id: str) -> None:
        with self._guard:
            self._stopped.add(tenant_id)
            event = self._events.get(tenant_id)
        if event is not None:
            event.set()

    def stop_all(self) -> None:
        with self._guard:
            tenants = list(self._events)
        for tenant_id in tenants:
            self.stop(tenant_id)

    def _loop(self, tenant_id: str, event: threading.Event) -> None:
        while True:
            event.wait()
            event.clear()
            if tenant_id in self._stopped:
                return
            try:
                self._run(tenant_id)
            except Exception:  # one bad run must not end the tenant's worker
                log.exception("jobs of a tenant failed")
