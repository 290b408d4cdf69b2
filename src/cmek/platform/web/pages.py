"""What the tenant pages and the operator console share: one template environment, the
headers of every page, error pages, redirects and the sign-in form's CSRF token.

Handlers are plain functions: FastAPI runs them on its thread pool, as the blocking service
calls need.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from cmek.platform.service import Platform
from cmek.platform.web import security
from cmek.platform.web.charts import cell

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
Text = Annotated[str, Form(max_length=1024)]


def templates() -> Environment:
    env = Environment(loader=PackageLoader("cmek.platform.web", "templates"),
                      autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = cell
    return env


class Pages:
    """A set of pages on its own router; :meth:`_routes` adds them."""

    def __init__(self, platform: Platform, env: Environment) -> None:
        self.platform = platform
        self.env = env
        self.router = APIRouter(include_in_schema=False)
        self._routes()

    def _routes(self) -> None:
        raise NotImplementedError

    # --- rendering --------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, status: int, heading: str, detail: str, tenant: str | None = None,
              code: str | None = None) -> HTMLResponse:
        return self.render("error.html", status, title=heading, heading=heading,
                           detail=detail, tenant=tenant, code=code)

    def not_found(self, tenant: str | None = None) -> HTMLResponse:
        return self.error(404, "Not found", "There is no such page.", tenant, "not_found")

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)

    # --- sign-in forms (no session yet: a double-submit token) -------------------------------
    def signin_page(self, request: Request, template: str, status: int,
                    **context: Any) -> Response:
        form_token = request.cookies.get(security.CSRF_COOKIE) or security.new_form_token()
        response = self.render(template, status, signin=True, csrf=form_token, **context)
        security.set_cookie(response, security.CSRF_COOKIE, form_token, max_age=3600,
                            same_site="strict")
        return response

    def signin_form_sent(self, request: Request, csrf: str) -> bool:
        """The sign-in form came from one of our pages: same origin, same token."""
        return security.same_origin(request) and security.same(
            csrf, request.cookies.get(security.CSRF_COOKIE))
