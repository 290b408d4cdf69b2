"""The operator console (``/ops``): every tenant's key state, and each tenant's key console
read-only. Signed in with the operator token, never with a tenant's session.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from cmek.errors import UnknownTenant
from cmek.platform.web import console, security
from cmek.platform.web.pages import TENANT_ID, Pages, Text


class OpsPages(Pages):
    def _routes(self) -> None:
        r = self.router
        platform = self.platform

        @r.get("/ops")
        def ops_home(request: Request) -> Response:
            if not self.ops_signed_in(request):
                return self.ops_signin(request, None, 200)
            return self.render("ops.html", title="Tenants", ops=True,
                               csrf=self.ops_csrf(request), now=console.when(
                                   platform.clock.now()), rows=console.tenant_rows(platform))

        @r.post("/ops/signin")
        def ops_signin_post(request: Request, token: Text = "", csrf: Text = "") -> Response:
            expected = platform.settings.operator_token
            if not self.signin_form_sent(request, csrf):
                return self.ops_signin(request, "The form expired; sign in again.", 403)
            if expected is None or not security.same(token, expected.get_secret_value()):
                return self.ops_signin(request, "That is not the operator token.", 401)
            response = self.redirect("/ops")
            value = security.ops_cookie_value(expected.get_secret_value(),
                                              platform.clock.now())
            security.set_cookie(response, security.OPS_COOKIE, value,
                                max_age=int(security.OPS_TTL), same_site="strict")
            security.clear_cookie(response, security.CSRF_COOKIE)
            return response

        @r.post("/ops/signout")
        def ops_signout(request: Request, csrf: Text = "") -> Response:
            if self.ops_signed_in(request) and not (security.same_origin(request) and
                                                    security.same(csrf, self.ops_csrf(request))):
                return self.error(403, "Form expired", "Open the page again and resend it.",
                                  code="csrf_failed")
            response = self.redirect("/ops")
            security.clear_cookie(response, security.OPS_COOKIE)
            return response

        @r.get("/ops/tenants/{tenant}/key")
        def ops_key(request: Request, tenant: str) -> Response:
            if not self.ops_signed_in(request):
                return self.redirect("/ops")
            if not TENANT_ID.fullmatch(tenant):
                return self.not_found()
            try:
                data = console.key_console(platform, tenant)
            except UnknownTenant:
                return self.not_found()
            return self.render("key.html", title=f"Key of {tenant}", ops=True,
                               csrf=self.ops_csrf(request), c=data)

    # --- helpers ----------------------------------------------------------------------------
    def ops_signin(self, request: Request, message: str | None, status: int) -> Response:
        return self.signin_page(request, "ops_signin.html", status, title="Operator sign-in",
                                ops=True, message=message)

    def ops_signed_in(self, request: Request) -> bool:
        expected = self.platform.settings.operator_token
        return expected is not None and security.ops_cookie_valid(
            expected.get_secret_value(), request.cookies.get(security.OPS_COOKIE),
            self.platform.clock.now())

    def ops_csrf(self, request: Request) -> str:
        expected = self.platform.settings.operator_token
        cookie = request.cookies.get(security.OPS_COOKIE)
        if expected is None or cookie is None:
            return ""
        return security.ops_csrf(expected.get_secret_value(), cookie)
