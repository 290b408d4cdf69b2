"""``cmek serve``: the platform on uvicorn, printing its address once it serves."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from cmek import crashpoints
from cmek.clock import Clock, OffsetClock, SystemClock
from cmek.platform.api import create_app
from cmek.platform.config import ConfigError, load_settings
from cmek.platform.service import Platform


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._announce, flush=True)


def serve(*, config_file: Path | None, host: str | None, port: int | None,
          dev: bool | None) -> int:
    settings = load_settings(config_file, host=host, port=port, dev=dev)
    _arm_crash_point(os.environ.get(crashpoints.ENV_VAR, ""), settings.dev)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    clock: Clock = OffsetClock() if settings.dev else SystemClock()
    platform = Platform(settings, clock)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        print(f"cmek: cannot listen on {settings.host}:{settings.port}: {e.strerror}",
              file=sys.stderr)
        return 2
    bound_host, bound_port = sock.getsockname()[:2]
    app = create_app(platform)
    server = _Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                       timeout_graceful_shutdown=3,
                       proxy_headers=False),  # the platform reads them: trusted_proxies
        f"cmek listening on http://{bound_host}:{bound_port}",
    )
    try:
        server.run(sockets=[sock])
    finally:
        platform.close()
    return 0


def _arm_crash_point(spec: str, dev: bool) -> None:
    """Crash points exist for the crash tests of a development process, never otherwise."""
    if not spec.strip():
        return
    if not dev:
        raise ConfigError(f"{crashpoints.ENV_VAR}: crash points need --dev (CMEK_DEV)")
    try:
        crashpoints.arm(spec)
    except ValueError as e:
        raise ConfigError(f"{crashpoints.ENV_VAR}: {e}") from None
