"""Server-rendered pages: the tenant web app with its key console, and the operator
console. Served by the API's process, left out of its OpenAPI document; see docs/web.md."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cmek.platform.service import Platform
from cmek.platform.web.ops import OpsPages
from cmek.platform.web.pages import templates
from cmek.platform.web.tenant import TenantPages

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI, platform: Platform) -> None:
    """Add the pages and their static files to the API's app."""
    app.mount("/static", StaticFiles(directory=STATIC), name="web-static")
    env = templates()
    app.include_router(TenantPages(platform, env).router)
    app.include_router(OpsPages(platform, env).router)


__all__ = ["mount"]
