"""``cmek serve``: the platform on uvicorn, printing its address once it serves.

Before it listens it checks what it will serve from: the settings, the data folder, the
control plane (it must answer) and the object store (it must take a write). Anything
wrong stops it with one line that names the setting, never a stack trace. Once it
listens it prints ``cmek listening on <url>`` and a summary of where its data goes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import uvicorn

from cmek import crashpoints
from cmek.clock import Clock, OffsetClock, SystemClock
from cmek.db import redact_url
from cmek.errors import CmekError
from cmek.platform.api import create_app
from cmek.platform.config import ENV_VARS, ConfigError, Settings, load_settings
from cmek.platform.service import Platform


class StartupFailed(CmekError):
    """A store or the listening socket is not usable; the message names the setting."""

    code = "startup_failed"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._announce, flush=True)


def summary(settings: Settings, url: str) -> dict[str, Any]:
    """Where this process serves from; no secret."""
    return {
        "listening": url, "data_dir": str(settings.data_dir),
        "control_plane": redact_url(settings.database_url),
        "object_store": settings.object_store,
        "kms": settings.kms_endpoint_url or f"AWS KMS in {settings.kms_region}",
        "kms_region": settings.kms_region, "dev": settings.dev,
        "operator_api": "open" if settings.operator_token else "closed (no operator_token)",
        "warehouse_dir": str(settings.warehouse_dir),
    }


def serve(*, config_file: Path | None, host: str | None, port: int | None,
          dev: bool | None, as_json: bool = False) -> int:
    settings = load_settings(config_file, host=host, port=port, dev=dev)
    _arm_crash_point(os.environ.get(crashpoints.ENV_VAR, ""), settings.dev)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if settings.log_level != "DEBUG":  # its INFO lines are about itself, not the platform
        logging.getLogger("botocore").setLevel(logging.WARNING)
    clock: Clock = OffsetClock() if settings.dev else SystemClock()
    platform = Platform(settings, clock)
    problems = platform.store_problems()
    if problems:
        platform.close()
        which, why = next(iter(problems.items()))
        setting = {"control_plane": "database_url"}.get(which, which)
        raise StartupFailed(f"{setting} ({ENV_VARS[setting]}): {why}")
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        platform.close()
        where = "--port" if port is not None else f"port ({ENV_VARS['port']})"
        raise StartupFailed(f"cannot listen on {settings.host}:{settings.port}: {e.strerror} "
                            f"(choose another with {where})") from None
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host}:{bound_port}"
    facts = summary(settings, url)
    announce = (json.dumps(facts) if as_json else f"cmek listening on {url}\n" + "\n".join(
        f"  {name.replace('_', ' ')}: {value}" for name, value in facts.items()
        if name != "listening"))
    app = create_app(platform)
    server = _Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                       timeout_graceful_shutdown=3,
                       proxy_headers=False),  # the platform reads them: trusted_proxies
        announce,
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

