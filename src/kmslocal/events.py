"""At-least-once delivery of key events to the configured targets (EventBridge stand-in).

Events wait in a durable outbox, so a restart loses none; a failed delivery is retried
with capped exponential backoff. Delivery runs beside the API on the event loop and
never delays or fails an API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from kmslocal.config import Config
from kmslocal.storage import Storage

log = logging.getLogger("kmslocal.events")

MAX_ATTEMPTS = 30
MAX_BACKOFF = 60.0


def backoff(attempts: int) -> float:
    return float(min(0.25 * 2 ** attempts, MAX_BACKOFF))


class Delivery:
    def __init__(self, storage: Storage, config: Config, timeout: float = 5.0) -> None:
        self.storage = storage
        self.config = config
        self.timeout = timeout
        self._wake = asyncio.Event()

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                self._wake.clear()
                for row_id, url, body, attempts in self.storage.due_events(time.time()):
                    await self._deliver(client, row_id, url, body, attempts)
                due = self.storage.next_event_time()
                wait = None if due is None else max(0.0, due - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(
        self, client: httpx.AsyncClient, row_id: int, url: str, body: str, attempts: int
    ) -> None:
        target = next((t for t in self.config.event_targets if t.url == url), None)
        if target is None:  # the target left the configuration
            self.storage.event_delivered(row_id)
            return
        headers = {"Content-Type": "application/json"}
        if target.secret:
            headers[target.secret_header] = target.secret
        try:
            response = await client.post(url, content=body, headers=headers)
            delivered = 200 <= response.status_code < 300
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            delivered, problem = False, type(e).__name__
        if delivered:
            self.storage.event_delivered(row_id)
        elif attempts + 1 >= MAX_ATTEMPTS:
            log.warning("giving up on an event for %s after %d attempts (%s)", url,
                        attempts + 1, problem)
            self.storage.event_delivered(row_id)
        else:
            self.storage.event_failed(row_id, attempts + 1, time.time() + backoff(attempts))
