"""Server-rendered pages: the tenant web app with its key console, and the operator
console. Mounted on the API's app by :func:`mount`; see docs/web.md."""

from cmek.platform.web.routes import mount

__all__ = ["mount"]
