"""At-least-once delivery of key events to event targets (EventBridge stand-in).

Targets come from the config file (always in effect) and, in dev mode, from the dev
routes (the stand-in for PutRule/PutTargets), which are kept in storage across restarts.
Events wait in a durable outbox, so a restart loses none; a failed delivery is retried
with capped exponential backoff when EventBridge would retry it, and dropped otherwise.
Delivery runs beside the API on the event loop and never delays or fails an API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import httpx

from kmslocal.config import (
    Config,
    ConfigError,
    EventTarget,
    check_url_free,
    parse_event_target,
    parse_event_targets,
)
from kmslocal.storage import Storage

log = logging.getLogger("kmslocal.events")

MAX_ATTEMPTS = 30
MAX_BACKOFF = 60.0

# What an EventBridge API destination retries: timeouts and answers 401, 407, 409, 429 and
# 5xx; any other answer (1xx, 3xx, other 4xx) drops the event. See "API destination error
# codes" in https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-api-destinations.html
# Network errors are retried too, as EventBridge's retry policy does.
RETRIED_STATUSES = frozenset({401, 407, 409, 429})


def backoff(attempts: int) -> float:
    return float(min(0.25 * 2 ** attempts, MAX_BACKOFF))


def is_retried(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


class EventTargets:
    """The config file's targets, then those registered at run time; a url names one."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        fixed = self._config_urls()
        stored = storage.event_targets()
        self.runtime = tuple(t for t in stored if t.url not in fixed)
        for target in stored:
            if target.url in fixed:  # the config file gained it since: the file wins
                log.warning("a run-time event target for %s is now in the config file; "
                            "the file's one is used", target.url)
        if self.runtime:  # they apply with or without --dev, like the dev clock's offset
            log.info("%d event target(s) registered at run time are in effect",
                     len(self.runtime))

    def all(self) -> tuple[EventTarget, ...]:
        return self.config.event_targets + self.runtime

    def for_event(self, account: str, resources: Sequence[str]) -> list[EventTarget]:
        return [t for t in self.all() if t.wants(account, resources)]

    def by_url(self, url: str) -> EventTarget | None:
        return next((t for t in self.all() if t.url == url), None)

    def replace(self, body: object) -> None:
        """PUT: ``{"targets": [...]}`` becomes the run-time list. Raises ConfigError."""
        if not isinstance(body, dict) or set(body) != {"targets"}:
            raise ConfigError('body must be {"targets": [...]}')
        self._store(parse_event_targets(body["targets"], "targets", self.config.region,
                                        self._config_urls()))

    def add(self, body: object) -> None:
        """POST: one target is added, or replaces the run-time target with its url."""
        target = parse_event_target(body, "target", self.config.region)
        check_url_free(target.url, "target", self._config_urls())
        self._store((*(t for t in self.runtime if t.url != target.url), target))

    def remove(self, url: str) -> None:
        """DELETE: the run-time target with this url goes (as RemoveTargets does); events
        still waiting for it are dropped."""
        if url in self._config_urls():
            raise ConfigError(f"url {url!r} is a target of the config file, which stays")
        if not any(t.url == url for t in self.runtime):
            raise ConfigError(f"no run-time target has url {url!r}")
        self._store(tuple(t for t in self.runtime if t.url != url))

    def listing(self) -> dict[str, list[dict[str, object]]]:
        return {
            "targets": [t.describe() for t in self.runtime],
            "config_targets": [t.describe() for t in self.config.event_targets],
        }

    def _config_urls(self) -> set[str]:
        return {t.url for t in self.config.event_targets}

    def _store(self, targets: tuple[EventTarget, ...]) -> None:
        with self.storage.transaction():
            self.storage.replace_event_targets(list(targets))
        self.runtime = targets


class Delivery:
    def __init__(self, storage: Storage, targets: EventTargets, timeout: float = 5.0) -> None:
        self.storage = storage
        self.targets = targets
        self.timeout = timeout
        self._wake = asyncio.Event()

    def publish(self, account: str, resources: Sequence[str], event: str) -> None:
        """Queue one event for every target that wants it, in the caller's transaction."""
        targets = self.targets.for_event(account, resources)
        for target in targets:
            self.storage.enqueue_event(target.url, event, 0.0)
        if targets:
            self._wake.set()

    async def run(self) -> None:
        """One delivery task per target url, as EventBridge delivers to each target on its
        own: a target that is slow or gone never holds back another's events. A target's
        own events go in order."""
        draining: dict[str, asyncio.Task[None]] = {}
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                self._wake.clear()
                for url in self.storage.due_urls(time.time()):
                    if url not in draining:
                        draining[url] = asyncio.create_task(self._drain(client, url, draining))
                due = self.storage.next_event_time(busy=list(draining))
                wait = None if due is None else max(0.0, due - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _drain(self, client: httpx.AsyncClient, url: str,
                     draining: dict[str, asyncio.Task[None]]) -> None:
        """Deliver the url's due events in order; then the loop looks again."""
        try:
            while due := self.storage.due_events(url, time.time()):
                for row_id, body, attempts in due:
                    await self._deliver(client, row_id, url, body, attempts)
        except Exception:
            log.exception("delivering events to %s failed; retrying", url)
        finally:
            del draining[url]
            self._wake.set()

    async def _deliver(
        self, client: httpx.AsyncClient, row_id: int, url: str, body: str, attempts: int
    ) -> None:
        target = self.targets.by_url(url)
        if target is None:  # the target was removed
            self.storage.event_delivered(row_id)
            return
        headers = {"Content-Type": "application/json"}
        if target.secret:
            headers[target.secret_header] = target.secret
        try:
            response = await client.post(url, content=body, headers=headers)
            status: int | None = response.status_code
            problem = f"HTTP {status}"
        except httpx.HTTPError as e:  # network errors and timeouts
            status, problem = None, type(e).__name__
        if status is not None and 200 <= status < 300:
            self.storage.event_delivered(row_id)
        elif status is not None and not is_retried(status):
            log.warning("dropped an event for %s: %s is not retried", url, problem)
            self.storage.event_delivered(row_id)
        elif attempts + 1 >= MAX_ATTEMPTS:
            log.warning("giving up on an event for %s after %d attempts (%s)", url,
                        attempts + 1, problem)
            self.storage.event_delivered(row_id)
        else:
            self.storage.event_failed(row_id, attempts + 1, time.time() + backoff(attempts))
