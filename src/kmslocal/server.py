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
from kmslocal.config import Config
from kmslocal.events import Delivery
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
    faults: Faults | None


def open_service(data_dir: Path, config: Config, dev: bool) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(data_dir / "kmslocal.sqlite3")
    offset = float(storage.get_meta("clock_offset") or 0.0)
    clock = Clock(offset)
    delivery = Delivery(storage, config)
    backend = Backend(storage, crypto.RootKey(data_dir / "root.key"), clock, config,
                      delivery.notify)
    return Service(storage, clock, backend, delivery, Faults() if dev else None)


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


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
        ]
    return Starlette(routes=routes, lifespan=lifespan)
