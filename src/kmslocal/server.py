"""The ASGI application: the AWS endpoint, health, and the dev controls.

Everything runs on one event loop thread; handlers are short and synchronous inside,
so SQLite needs no locking and each call is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kmslocal import crypto
from kmslocal.clock import Clock
from kmslocal.config import Config, ConfigError
from kmslocal.events import Delivery, EventTargets
from kmslocal.faults import Faults, FaultSpecError
from kmslocal.faults import parse as parse_fault
from kmslocal.models import Backend
from kmslocal.responses import Protocol
from kmslocal.storage import Storage

log = logging.getLogger("kmslocal")

TICK_SECONDS = 1.0


@dataclass
class Service:
    storage: Storage
    clock: Clock
    backend: Backend
    delivery: Delivery
    targets: EventTargets
    faults: Faults | None


def open_service(data_dir: Path, config: Config, dev: bool) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = Storage(data_dir / "kmslocal.sqlite3")
    offset = float(storage.get_meta("clock_offset") or 0.0)
    clock = Clock(offset)
    targets = EventTargets(config, storage)
    delivery = Delivery(storage, targets)
    backend = Backend(storage, crypto.RootKey(data_dir / "root.key"), clock, config,
                      delivery.publish)
    return Service(storage, clock, backend, delivery, targets, Faults() if dev else None)


def _bad(message: str, code: str | None = None) -> JSONResponse:
    body = {"error": message} if code is None else {"error": message, "code": code}
    return JSONResponse(body, status_code=400)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None


def create_app(service: Service, dev: bool) -> Starlette:
    protocol = Protocol(service.backend, service.faults)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def now_payload() -> dict[str, str]:
        return {"now": service.clock.now().isoformat().replace("+00:00", "Z")}

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            body = await _json_body(request)
            seconds = body.get("advance_seconds") if isinstance(body, dict) else None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                return _bad("advance_seconds must be a non-negative number")
            service.clock.advance(float(seconds))
            with service.storage.transaction():
                service.storage.set_meta("clock_offset", repr(service.clock.offset))
            service.backend.tick()
        return JSONResponse(now_payload())

    async def faults(request: Request) -> Response:
        assert service.faults is not None
        if request.method == "DELETE":
            service.faults.clear()
            return JSONResponse({"faults": []})
        try:
            fault = parse_fault(await _json_body(request))
        except FaultSpecError as e:
            return _bad(str(e))
        service.faults.add(fault)
        return JSONResponse({"faults": [f.describe() for f in service.faults.active]})

    async def event_targets(request: Request) -> Response:
        """The stand-in for EventBridge PutRule/PutTargets/RemoveTargets: PUT replaces the
        run-time targets, POST adds or replaces one, DELETE ?url= removes one; the config
        file's stay in effect."""
        try:
            if request.method == "DELETE":
                service.targets.remove(request.query_params.get("url", ""))
            elif request.method != "GET":
                change = (service.targets.replace if request.method == "PUT"
                          else service.targets.add)
                change(await _json_body(request))
        except ConfigError as e:
            return _bad(str(e), "invalid_event_target")
        return JSONResponse(service.targets.listing())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                try:
                    service.backend.tick()
                except Exception:
                    log.exception("scheduled key work failed; retrying")
                await asyncio.sleep(TICK_SECONDS)

        tasks = [asyncio.create_task(ticker()), asyncio.create_task(service.delivery.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if service.faults is not None:
                service.faults.clear()
            service.storage.close()

    routes = [
        Route("/", protocol.handle, methods=["POST"]),
        Route("/_kmslocal/health", health, methods=["GET"]),
    ]
    if dev:
        routes += [
            Route("/_kmslocal/clock", clock, methods=["GET", "POST"]),
            Route("/_kmslocal/faults", faults, methods=["POST", "DELETE"]),
            Route("/_kmslocal/event-targets", event_targets,
                  methods=["GET", "PUT", "POST", "DELETE"]),
        ]
    return Starlette(routes=routes, lifespan=lifespan)
