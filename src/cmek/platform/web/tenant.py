"""The tenant web app (``/t/{tenant}/...``) with its key console.

Every tenant page asks the platform first whether the tenant is served: when it is not,
the page is the locked notice (423) and nothing else, whoever asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cmek.errors import CmekError, UnknownTenant
from cmek.kms import KeyRevoked, KmsUnavailable
from cmek.lifecycle import KeyState
from cmek.platform.access import (
    Caller,
    Forbidden,
    TenantKeyUnavailable,
    TooManyAttempts,
    Unauthorized,
)
from cmek.platform.clients import of_request
from cmek.platform.indexing import object_title
from cmek.platform.web import console, security
from cmek.platform.web.charts import result_bars
from cmek.platform.web.pages import TENANT_ID, Pages, Text
from cmek.stores.objects import ObjectNotFound
from cmek.stores.tenant import OBJECT_KINDS, NotFound, StoreClosed, TenantStore

OBJECT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
KIND_NAMES = {"liveboards": "Liveboards", "answers": "Answers", "tables": "Tables",
              "models": "Models"}
KIND_ONE = {"liveboards": "Liveboard", "answers": "Answer", "tables": "Table",
            "models": "Model"}
UNAVAILABLE = (TenantKeyUnavailable, KeyRevoked, StoreClosed)
NextField = Annotated[str, Form(alias="next", max_length=1024)]


class TenantPages(Pages):
    def notice(self, request: Request, tenant: str,
               error: CmekError | None = None) -> HTMLResponse:
        """The locked notice: the key's state and reason for everyone, the countdowns only
        for the holder of an admin session that this lock ended. No tenant data."""
        view = self.platform.lifecycle.view(tenant)
        state, reason = view["state"], view["reason"]
        if KeyState(state).serving:  # the lock is landing: say what the path saw
            state = getattr(error, "key_state", "locked")
            reason = getattr(error, "reason", "unavailable")
            reason = getattr(reason, "value", reason)
        token = request.cookies.get(security.session_cookie(tenant))
        role = self.platform.sessions.ended_session_role(token, tenant) if token else None
        now = self.platform.clock.now()
        return self.render(
            "locked.html", 423, title="Service unavailable", tenant=tenant, state=state,
            reason=str(reason), state_text=console.state_text(state),
            reason_text=console.reason_text(str(reason)), since=console.when(view["since"]),
            admin=role == "admin",
            countdowns=console.countdowns(view, now) if role == "admin" else [])

    def signin_redirect(self, request: Request, tenant: str,
                        clear: bool = False) -> RedirectResponse:
        target = request.url.path
        query = f"?next={quote(target, safe='/')}" if target.startswith(f"/t/{tenant}/") else ""
        response = self.redirect(f"/t/{tenant}/signin{query}")
        if clear:
            security.clear_cookie(response, security.session_cookie(tenant))
        return response

    # --- the tenant gate --------------------------------------------------------------------
    def tenant_page(self, request: Request, tenant: str,
                    build: Callable[[Caller], Response], *, admin: bool = False) -> Response:
        """Locked notice, sign-in, role check, then the page; failures become pages."""
        token = request.cookies.get(security.session_cookie(tenant))
        if not token:
            return self.closed(request, tenant) or self.signin_redirect(request, tenant)
        if not TENANT_ID.fullmatch(tenant):
            return self.not_found()
        try:
            caller = self.platform.sessions.authenticate(token, tenant)  # guards the tenant first
        except UnknownTenant:
            return self.not_found()
        except UNAVAILABLE as e:
            return self.notice(request, tenant, e)
        except (Unauthorized, Forbidden):  # expired, signed out, or another tenant's
            return self.signin_redirect(request, tenant, clear=True)
        if admin and caller.role != "admin":
            return self.error(403, "Not allowed", "This page is for the tenant's key "
                              "admins (role admin).", tenant, "forbidden")
        return self.guarded(request, tenant, lambda: build(caller))

    def closed(self, request: Request, tenant: str) -> Response | None:
        """Before any session is looked at: an unknown tenant is a 404, an unusable key
        the locked notice."""
        if not TENANT_ID.fullmatch(tenant):
            return self.not_found()
        try:
            self.platform.guard(tenant)
        except UnknownTenant:
            return self.not_found()
        except UNAVAILABLE as e:
            return self.notice(request, tenant, e)
        return None

    def guarded(self, request: Request, tenant: str, build: Callable[[], Response]) -> Response:
        try:
            return build()
        except UNAVAILABLE as e:  # the key went away while the page was being built
            return self.notice(request, tenant, e)
        except (NotFound, ObjectNotFound, UnknownTenant):
            return self.not_found(tenant)
        except Forbidden as e:
            return self.error(403, "Not allowed", e.message, tenant, e.code)
        except KmsUnavailable:
            return self.error(503, "Try again shortly", "The key service is not answering "
                              "right now.", tenant, "kms_unavailable")
        except CmekError as e:
            return self.error(400, "That did not work", e.message, tenant, e.code)

    def tenant_context(self, caller: Caller, **context: Any) -> dict[str, Any]:
        user = self.platform.store(caller.tenant_id).get_user(caller.user_id)
        return {"tenant": caller.tenant_id, "user": user["email"], "role": caller.role,
                "csrf": security.session_csrf(caller.token), **context}

    def check_form(self, request: Request, caller: Caller, csrf: str) -> Response | None:
        if security.same_origin(request) and security.same(
                csrf, security.session_csrf(caller.token)):
            return None
        return self.error(403, "Form expired", "The form was not sent from this page's "
                          "session; open the page again and resend it.", caller.tenant_id,
                          "csrf_failed")

    # --- routes -----------------------------------------------------------------------------
    def _routes(self) -> None:
        r = self.router
        platform = self.platform

        @r.get("/t/{tenant}")
        @r.get("/t/{tenant}/")
        def home(request: Request, tenant: str) -> Response:
            def build(caller: Caller) -> Response:
                by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_NAMES}
                for o in platform.store(tenant).list_objects():
                    by_kind[o.kind].append(_summary(o.object_id, o.body))
                groups = [(kind, name, by_kind[kind]) for kind, name in KIND_NAMES.items()]
                return self.render("home.html", **self.tenant_context(
                    caller, title="Home", groups=groups))
            return self.tenant_page(request, tenant, build)

        @r.get("/t/{tenant}/signin")
        def signin_form(request: Request, tenant: str,
                        next_url: Annotated[str, Query(alias="next", max_length=1024)] = ""
                        ) -> Response:
            return self.signin(request, tenant, next_url, None, 200)

        @r.post("/t/{tenant}/signin")
        def signin_post(request: Request, tenant: str, email: Text = "", password: Text = "",
                        csrf: Text = "", next_url: NextField = "") -> Response:
            if not TENANT_ID.fullmatch(tenant):
                return self.not_found()
            if not self.signin_form_sent(request, csrf):
                return self.signin(request, tenant, next_url, "The form expired; sign in again.",
                                   403)
            try:
                token, expires = platform.sessions.login(tenant, email, password,
                                                client=of_request(request,
                                                                  platform.trusted_proxies))
            except UnknownTenant:
                return self.not_found()
            except TenantKeyUnavailable as e:
                return self.notice(request, tenant, e)
            except Unauthorized:
                return self.signin(request, tenant, next_url, "Wrong email or password.", 401,
                                   email)
            except TooManyAttempts as e:
                page = self.signin(request, tenant, next_url, "Too many failed sign-ins; try "
                                   f"again in {e.retry_after} s.", 429, email)
                page.headers["Retry-After"] = str(e.retry_after)
                return page
            except CmekError as e:
                if isinstance(e, UNAVAILABLE):
                    return self.notice(request, tenant, e)
                return self.signin(request, tenant, next_url, e.message, 400, email)
            response = self.redirect(_local(next_url, tenant))
            ttl = int((expires or platform.clock.now()) - platform.clock.now())
            security.set_cookie(response, security.session_cookie(tenant), token,
                                max_age=ttl, same_site="lax")
            security.clear_cookie(response, security.CSRF_COOKIE)
            return response

        @r.post("/t/{tenant}/signout")
        def signout(request: Request, tenant: str, csrf: Text = "") -> Response:
            def build(caller: Caller) -> Response:
                refused = self.check_form(request, caller, csrf)
                if refused is not None:
                    return refused
                platform.sessions.logout(caller)
                response = self.redirect(f"/t/{tenant}/signin")
                security.clear_cookie(response, security.session_cookie(tenant))
                return response
            return self.tenant_page(request, tenant, build)

        @r.get("/t/{tenant}/search")
        def search(request: Request, tenant: str, q: str = "") -> Response:
            def build(caller: Caller) -> Response:
                query = q.strip()[:512]
                hits = platform.search(caller, query, 50) if query else []
                return self.render("search.html", **self.tenant_context(
                    caller, title=f"Search: {query}" if query else "Search", q=query,
                    search_page=True,
                    hits=[{**h, "kind_name": KIND_ONE.get(h["kind"], h["kind"])}
                          for h in hits]))
            return self.tenant_page(request, tenant, build)

        @r.get("/t/{tenant}/key")
        def key_console(request: Request, tenant: str) -> Response:
            def build(caller: Caller) -> Response:
                return self.render("key.html", **self.tenant_context(
                    caller, title="Encryption key", ops=False,
                    c=console.key_console(platform, tenant)))
            return self.tenant_page(request, tenant, build, admin=True)

        @r.post("/t/{tenant}/key/check")
        def key_check(request: Request, tenant: str, csrf: Text = "") -> Response:
            def build(caller: Caller) -> Response:
                refused = self.check_form(request, caller, csrf)
                if refused is not None:
                    return refused
                platform.lifecycle.check(tenant, "requested")
                platform.verify_tenant_key(tenant, "requested")
                return self.redirect(f"/t/{tenant}/key")
            return self.tenant_page(request, tenant, build, admin=True)

        @r.get("/t/{tenant}/{kind}")
        def object_list(request: Request, tenant: str, kind: str) -> Response:
            if kind not in OBJECT_KINDS:
                return self.not_found()

            def build(caller: Caller) -> Response:
                items = [_summary(o.object_id, o.body)
                         for o in platform.store(tenant).list_objects(kind)]
                return self.render("list.html", **self.tenant_context(
                    caller, title=KIND_NAMES[kind], kind=kind, items=items))
            return self.tenant_page(request, tenant, build)

        @r.get("/t/{tenant}/{kind}/{object_id}")
        def object_page(request: Request, tenant: str, kind: str, object_id: str) -> Response:
            if kind not in OBJECT_KINDS or not OBJECT_ID.fullmatch(object_id):
                return self.not_found()

            def build(caller: Caller) -> Response:
                store = platform.store(tenant)
                obj = store.get_object(kind, object_id)
                body = obj.body
                context: dict[str, Any] = {
                    "kind": kind, "kind_name": KIND_ONE[kind], "id": object_id,
                    "title": object_title(body, object_id), "body": body, "version": obj.version,
                    "updated": console.when(obj.updated_at),
                    "description": body.get("description")
                    if isinstance(body.get("description"), str) else None,
                    "columns": _columns(body), "answers": [], "links": _links(body)}
                if kind == "liveboards":
                    ids = body.get("answers")
                    context["answers"] = [self.answer(store, tenant, str(a))
                                          for a in (ids if isinstance(ids, list) else [])
                                          if isinstance(a, str) and OBJECT_ID.fullmatch(a)]
                elif kind == "answers":
                    context["answers"] = [self.answer(store, tenant, object_id, body)]
                return self.render("object.html", **self.tenant_context(caller, **context))
            return self.tenant_page(request, tenant, build)

    # --- helpers ----------------------------------------------------------------------------
    def signin(self, request: Request, tenant: str, next_url: str, message: str | None,
               status: int, email: str = "") -> Response:
        refused = self.closed(request, tenant)
        if refused is not None:
            return refused
        token = request.cookies.get(security.session_cookie(tenant))
        if token and status == 200:
            try:
                self.platform.sessions.authenticate(token, tenant)
                return self.redirect(_local(next_url, tenant))
            except CmekError:
                pass  # not (or no longer) signed in: the form
        return self.signin_page(request, "signin.html", status, title="Sign in", tenant=tenant,
                                message=message, email=email[:320],
                                next=_local(next_url, tenant))

    def answer(self, store: TenantStore, tenant: str, answer_id: str,
               body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An answer with its cached result; a missing answer or result is said, not fatal.
        ``body`` when the caller has already read it."""
        if body is None:
            try:
                body = store.get_object("answers", answer_id).body
            except NotFound:
                return {"id": answer_id, "title": answer_id,
                        "missing": "This answer was deleted."}
        out: dict[str, Any] = {"id": answer_id, "title": object_title(body, answer_id),
                               "sql": body.get("sql") if isinstance(body.get("sql"), str)
                               else None, "missing": None, "columns": [], "rows": [],
                               "chart": None, "truncated": False}
        result_id = body.get("result_id")
        if not isinstance(result_id, str) or not re.fullmatch(r"[0-9a-f]{1,64}", result_id):
            out["missing"] = "This answer has no cached result yet."
            return out
        try:
            result = self.platform.cached_result(tenant, result_id)
        except ObjectNotFound:
            out["missing"] = "The cached result of this answer is gone; run it again."
            return out
        columns = [str(c) for c in result.get("columns", [])]
        rows = [list(r) for r in result.get("rows", []) if isinstance(r, list)]
        out.update(columns=columns, rows=rows[:200], truncated=bool(result.get("truncated"))
                   or len(rows) > 200, chart=result_bars(out["title"], columns, rows))
        return out


def _summary(object_id: str, body: dict[str, Any]) -> dict[str, Any]:
    description = body.get("description")
    return {"id": object_id, "title": object_title(body, object_id),
            "description": description if isinstance(description, str) else ""}


def _columns(body: dict[str, Any]) -> list[str]:
    raw = body.get("columns")
    if not isinstance(raw, list):
        return []
    return [c if isinstance(c, str) else str(c.get("name", "")) if isinstance(c, dict) else ""
            for c in raw]


def _links(body: dict[str, Any]) -> list[tuple[str, str]]:
    """References to other objects that the body names: a model's tables."""
    tables = body.get("tables")
    if isinstance(tables, list):
        return [("tables", str(t)) for t in tables if isinstance(t, str) and OBJECT_ID.fullmatch(t)]
    return []


def _local(next_url: str, tenant: str) -> str:
    """Only a page of the same tenant may be the target after sign-in (no open redirect)."""
    prefix = f"/t/{tenant}/"
    if (next_url.startswith(prefix) and "//" not in next_url and "\\" not in next_url
            and not next_url.startswith(f"{prefix}sign")):
        return next_url
    return prefix
