"""Several platform processes over one PostgreSQL control plane.

- One process runs the key monitor: the holder of a PostgreSQL advisory lock, taken on a
  dedicated session, so it passes to another process when the holder dies.
- A change of a tenant's key state is announced with NOTIFY; every process LISTENs and
  enforces locally at once (purges its cached keys, closes its stores, stops its worker).
  Requests are refused in every process anyway, since each reads the state per request.

With SQLite there is one process: it is the leader and nothing needs announcing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg

CHANNEL = "cmek_key_state"
LEADER_LOCK = 0x636D656B  # "cmek"

log = logging.getLogger("cmek.platform.cluster")


class Cluster:
    def __init__(self, database_url: str, on_change: Callable[[str], None]) -> None:
        self.postgres = database_url.startswith("postgresql://")
        self.url = database_url
        self.on_change = on_change
        self._leader: psycopg.Connection[tuple[object, ...]] | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None

    # --- leadership ---------------------------------------------------------------------
    def is_leader(self) -> bool:
        """Try to be (or stay) the leader; cheap when already leading."""
        if not self.postgres:
            return True
        try:
            if self._leader is not None and not self._leader.closed:
                self._leader.execute("SELECT 1")
                return True
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            if row and row[0]:
                self._leader = conn
                log.info("this process now runs the key monitor")
                return True
            conn.close()
        except psycopg.Error:
            self._leader = None
        return False

    # --- announcements ------------------------------------------------------------------
    def announce(self, tenant_id: str) -> None:
        if not self.postgres:
            return
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, tenant_id))

    def start(self) -> None:
        if self.postgres and self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="cmek-listen",
                                              daemon=True)
            self._listener.start()

    def stop(self) -> None:
        self._stop.set()
        if self._leader is not None:
            with contextlib.suppress(psycopg.Error):
                self._leader.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.on_change(note.payload)
            except psycopg.Error:
                log.warning("lost the notification connection; reconnecting")
                self._stop.wait(1.0)
