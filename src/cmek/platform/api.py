"""The platform's HTTP API (JSON, documented by its OpenAPI schema and docs/api.md).

Every refusal is ``{"error": <stable code>, "message": <one line>}``; no handler ever
returns a stack trace. Responses that carry tenant data are marked non-cacheable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cmek.errors import CmekError
from cmek.kms import KeyRevoked, RevocationReason
from cmek.platform.access import (
    Caller,
    KeyVerificationFailed,
    TenantKeyUnavailable,
    TooManyAttempts,
    Unauthorized,
    require_admin,
)
from cmek.platform.api_models import (
    ClockIn,
    ConnectionPut,
    JsonObject,
    Kind,
    Login,
    ObjectId,
    QueryIn,
    RewrapIn,
    ScheduleIn,
    TenantCreate,
    TenantId,
    UserCreate,
)
from cmek.platform.clients import of_request
from cmek.platform.service import Platform
from cmek.platform.web import mount as mount_web
from cmek.platform.web.security import same as same_secret
from cmek.stores.tenant import StoreClosed

log = logging.getLogger("cmek.platform")
JOB_TICK_SECONDS = 1.0
MONITOR_TICK_SECONDS = 0.2

STATUS: dict[str, int] = {
    "invalid_input": 400, "record_too_large": 400, "invalid_connection": 400,
    "sql_not_read_only": 400, "warehouse_error": 400, "warehouse_auth_failed": 400,
    "warehouse_unreachable": 502, "warehouse_tls_failed": 502, "egress_denied": 403,
    "query_timeout": 504, "query_resources_exceeded": 422, "query_result_too_large": 422,
    "too_many_queries": 429, "unauthorized": 401, "forbidden": 403,
    "not_found": 404, "unknown_tenant": 404, "object_not_found": 404,
    "unknown_category": 400, "conflict": 409, "tenant_exists": 409,
    "key_verification_failed": 422, "body_too_large": 413,
    "tenant_key_unavailable": 423, "tenant_store_closed": 423, "backup_invalid": 422,
    "rewrap_in_progress": 409,
    "too_many_attempts": 429, "event_not_for_tenant": 403,
    "kms_unavailable": 503, "object_store_unavailable": 503,
    "decryption_failed": 500,  # stored ciphertext that does not open: tampered or misplaced
    "row_not_authentic": 500,  # a control-plane row the platform did not write
    "internal_error": 500,
}

def _internal_error(exc: BaseException) -> JSONResponse:
    """Logs where it failed (frames only): an exception's message may carry request data
    or a secret, so it is left out of the log as it is left out of the answer."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s in a request\n%s", type(exc).__name__, frames.rstrip())
    return error("internal_error", "the request failed; the error was logged")


def error(code: str, message: str, **extra: Any) -> JSONResponse:
    status = STATUS.get(code, 400)
    if status >= 500:  # the operator hears of every server-side failure, with its code
        log.error("answered %d %s: %s", status, code, message)
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def unavailable(refusal: TenantKeyUnavailable) -> JSONResponse:
    """The one answer of a tenant whose key is not usable, however it was met."""
    return error(refusal.code, refusal.message, key_state=refusal.key_state,
                 reason=refusal.reason)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send Authorization: Bearer <token>")
    return authorization.removeprefix("Bearer ").strip()


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _is_operator(request: Request, token: str) -> bool:
    expected = _platform(request).settings.operator_token
    return same_secret(token, expected.get_secret_value() if expected else None)


def _operator(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    if not _is_operator(request, _bearer(authorization)):
        raise Unauthorized("not the operator token")


async def _caller(request: Request, tenant: TenantId,
                  authorization: Annotated[str | None, Header()] = None) -> Caller:
    return await run_in_threadpool(_platform(request).sessions.authenticate, _bearer(authorization),
                                   tenant)


async def _operator_or_admin(request: Request, tenant: TenantId,
                             authorization: Annotated[str | None, Header()] = None) -> None:
    """The operator, or an admin of this tenant (who sets up the customer's side)."""
    token = _bearer(authorization)
    if _is_operator(request, token):
        return
    require_admin(await run_in_threadpool(_platform(request).sessions.authenticate, token, tenant))


# Dependencies as types, at module level so that FastAPI can resolve the annotations.
Op = Annotated[None, Depends(_operator)]
Me = Annotated[Caller, Depends(_caller)]
OperatorOrAdmin = Annotated[None, Depends(_operator_or_admin)]


def create_app(platform: Platform) -> FastAPI:
    settings = platform.settings

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def every(seconds: float, work: Callable[[], int], what: str) -> None:
            while True:  # each on the injected clock; the loop only paces the looking
                try:
                    await run_in_threadpool(work)
                except Exception:
                    log.exception("%s failed; retrying", what)
                await asyncio.sleep(seconds)

        def jobs() -> int:  # one process runs the jobs: the same one as the monitor; each
            # rebuilds the search indexes it marked stale, since it holds them in memory
            if platform.cluster.is_leader():
                return platform.run_due_jobs(in_workers=True)
            return platform.indexes.run_due()

        try:  # before serving: nothing half done is ever served
            await run_in_threadpool(platform.recover)
        except Exception:
            log.exception("recovery at start failed; the job runner retries")
        platform.cluster.start()
        tasks = [asyncio.create_task(every(JOB_TICK_SECONDS, jobs, "jobs")),
                 asyncio.create_task(every(MONITOR_TICK_SECONDS, platform.run_monitor,
                                           "key monitor"))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="cmek platform", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.platform = platform
    mount_web(app, platform)  # the pages (docs/web.md), outside the OpenAPI document

    async def locked(request: Request) -> JSONResponse | None:
        """The answer for a tenant whose key went away while this request was in flight:
        whatever failed inside (a closed store, a terminated database session), the
        refusal says why, with the state, as every other refusal of a locked tenant does,
        even when the key is back by the time it answers."""
        tenant = request.path_params.get("tenant")
        if not isinstance(tenant, str):
            return None
        started = float(request.scope.get("cmek.started", 0.0))
        try:
            state = await run_in_threadpool(platform.enforcer.lock_met, tenant, started)
        except Exception:  # the control plane is out too: the original answer stands
            return None
        return None if state is None else unavailable(TenantKeyUnavailable.of(state))

    @app.exception_handler(CmekError)
    async def _cmek_error(request: Request, exc: CmekError) -> JSONResponse:
        if isinstance(exc, StoreClosed):
            return await locked(request) or error(exc.code, exc.message)
        if isinstance(exc, KeyVerificationFailed):
            return error(exc.code, exc.message, findings=exc.findings)
        if isinstance(exc, TooManyAttempts):
            refused = error(exc.code, exc.message)
            refused.headers["Retry-After"] = str(exc.retry_after)
            return refused
        if isinstance(exc, TenantKeyUnavailable):
            return unavailable(exc)
        if isinstance(exc, KeyRevoked):  # met on the data path: the tenant is being locked
            state = ("pending_deletion" if exc.reason is RevocationReason.PENDING_DELETION
                     else "locked")
            return unavailable(TenantKeyUnavailable(state, exc.reason.value))
        return error(exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # loc is then (body, character offset)
            at = first.get("loc", ("body", "?"))[-1]
            why = first.get("ctx", {}).get("error", "not JSON")
            return error("invalid_input", f"the body is not valid JSON: {why} at character "
                         f"{at}; send a JSON object with Content-Type: application/json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error("invalid_input", f"{where or 'request'}: {first.get('msg', 'invalid')}"[:300])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's own refusals (no such route, wrong method, a body that is not
        JSON or not UTF-8) in the same shape as every other refusal."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                 "invalid_input")
        return JSONResponse({"error": code, "message": str(exc.detail)[:300]},
                            status_code=exc.status_code,
                            headers={**(exc.headers or {}), "Cache-Control": "no-store"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return await locked(request) or _internal_error(exc)

    @app.middleware("http")
    async def _limits(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.scope["cmek.started"] = time.monotonic()  # what a lock is compared with
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error("body_too_large",
                         f"request bodies are limited to {settings.max_body_bytes} bytes")
        try:
            response = await call_next(request)
        except Exception as exc:  # answered here, so the server does not log it again
            response = await locked(request) or _internal_error(exc)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    call = run_in_threadpool  # handlers do blocking work (SQL, KMS) off the event loop

    @app.get("/healthz", response_model=None)
    async def healthz() -> dict[str, str] | JSONResponse:
        """Ok only while every store answers: failing stores are named (the details go to
        the log, not to anyone who asks)."""
        failing = await call(platform.health)
        if failing:
            return JSONResponse({"status": "unavailable", "failing": failing},
                                status_code=503)
        return {"status": "ok"}

    # --- operator -------------------------------------------------------------------------
    @app.post("/v1/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, _: Op) -> dict[str, Any]:
        return await call(platform.provision, body.tenant_id, body.kms_key_arn,
                          body.admin_email, body.admin_password)

    @app.get("/v1/tenants")
    async def list_tenants(_: Op) -> dict[str, Any]:
        return {"tenants": await call(platform.tenant_views)}

    @app.get("/v1/tenants/{tenant}")
    async def get_tenant(tenant: TenantId, _: Op) -> dict[str, Any]:
        view = await call(platform.tenant_view, tenant)
        return {**view, "key": await call(platform.lifecycle.view, tenant)}

    @app.get("/v1/tenants/{tenant}/key")
    async def key_state(tenant: TenantId, _: Op) -> dict[str, Any]:
        await call(platform.tenant_view, tenant)
        return await call(platform.lifecycle.view, tenant)

    @app.post("/v1/tenants/{tenant}/key/check")
    async def key_check(tenant: TenantId, _: Op) -> dict[str, Any]:
        await call(platform.tenant_view, tenant)
        await call(platform.lifecycle.check, tenant, "requested")
        return await call(platform.lifecycle.view, tenant)

    @app.post("/v1/tenants/{tenant}/key/rewrap")
    async def key_rewrap(tenant: TenantId, body: RewrapIn, _: Op) -> dict[str, Any]:
        return await call(platform.rewrap, tenant, body.kms_key_arn)

    @app.post("/v1/tenants/{tenant}/key-events", status_code=202)
    async def key_events(tenant: TenantId, event: JsonObject,
                         x_cmek_event_secret: Annotated[str | None, Header()] = None
                         ) -> dict[str, Any]:
        return await call(platform.events.receive, tenant, x_cmek_event_secret, event)

    @app.post("/v1/tenants/{tenant}/key-events/credential", status_code=201)
    async def event_credential(tenant: TenantId, _: OperatorOrAdmin) -> dict[str, str]:
        return await call(platform.events.issue_credential, tenant)

    # --- sessions and tokens --------------------------------------------------------------
    @app.post("/v1/tenants/{tenant}/sessions", status_code=201)
    async def login(tenant: TenantId, body: Login, request: Request) -> dict[str, Any]:
        token, expires = await call(platform.sessions.login, tenant, body.email, body.password,
                                    of_request(request, platform.trusted_proxies))
        return {"token": token, "expires_at": expires}

    @app.delete("/v1/tenants/{tenant}/sessions", status_code=204)
    async def logout(me: Me) -> Response:
        await call(platform.sessions.logout, me)
        return Response(status_code=204)

    @app.post("/v1/tenants/{tenant}/api-tokens", status_code=201)
    async def api_token(me: Me) -> dict[str, Any]:
        token, _ = await call(platform.sessions.api_token, me)
        return {"token": token, "expires_at": None}

    # --- users ----------------------------------------------------------------------------
    @app.post("/v1/tenants/{tenant}/users", status_code=201)
    async def add_user(body: UserCreate, me: Me) -> dict[str, Any]:
        return await call(platform.add_user, me, body.email, body.password, body.role)

    @app.get("/v1/tenants/{tenant}/users")
    async def users(me: Me) -> dict[str, Any]:
        return {"users": await call(platform.users, me)}

    # --- metadata -------------------------------------------------------------------------
    @app.put("/v1/tenants/{tenant}/objects/{kind}/{object_id}")
    async def put_object(kind: Kind, object_id: ObjectId, body: JsonObject,
                         me: Me) -> dict[str, Any]:
        stored = await call(platform.put_object, me, kind, object_id, body)
        return {"kind": kind, "id": object_id, "version": stored.version,
                "updated_at": stored.updated_at, "body": stored.body}

    @app.get("/v1/tenants/{tenant}/objects/{kind}/{object_id}")
    async def get_object(kind: Kind, object_id: ObjectId, me: Me) -> dict[str, Any]:
        stored = await call(lambda: platform.store(me.tenant_id).get_object(kind, object_id))
        return {"kind": kind, "id": object_id, "version": stored.version,
                "updated_at": stored.updated_at, "body": stored.body}

    @app.delete("/v1/tenants/{tenant}/objects/{kind}/{object_id}", status_code=204)
    async def delete_object(kind: Kind, object_id: ObjectId, me: Me) -> Response:
        await call(platform.delete_object, me, kind, object_id)
        return Response(status_code=204)

    @app.get("/v1/tenants/{tenant}/objects/{kind}")
    async def list_objects(kind: Kind, me: Me) -> dict[str, Any]:
        objs = await call(lambda: platform.store(me.tenant_id).list_objects(kind))
        return {"objects": [{"id": o.object_id, "version": o.version,
                             "updated_at": o.updated_at,
                             "title": o.body.get("title", o.object_id)} for o in objs]}

    @app.get("/v1/tenants/{tenant}/search")
    async def search(me: Me, q: Annotated[str, Query(min_length=1, max_length=512)],
                     limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
        return {"hits": await call(platform.search, me, q, limit)}

    # --- connections ----------------------------------------------------------------------
    @app.put("/v1/tenants/{tenant}/connections/{name}")
    async def put_connection(name: ObjectId, body: ConnectionPut, me: Me) -> dict[str, Any]:
        await call(platform.put_connection, me, name, body.type, body.config,
                   body.credentials)
        return await call(platform.connection_view, me, name)

    @app.get("/v1/tenants/{tenant}/connections/{name}")
    async def get_connection(name: ObjectId, me: Me) -> dict[str, Any]:
        return await call(platform.connection_view, me, name)

    @app.get("/v1/tenants/{tenant}/connections")
    async def list_connections(me: Me) -> dict[str, Any]:
        store = await call(platform.store, me.tenant_id)
        return {"connections": await call(store.list_connections)}

    @app.delete("/v1/tenants/{tenant}/connections/{name}", status_code=204)
    async def delete_connection(name: ObjectId, me: Me) -> Response:
        require_admin(me)
        await call(lambda: platform.store(me.tenant_id).delete_connection(name))
        return Response(status_code=204)

    @app.post("/v1/tenants/{tenant}/connections/{name}/query")
    async def query(name: ObjectId, body: QueryIn, me: Me) -> dict[str, Any]:
        return await call(platform.query, me, name, body.sql)

    # --- auth configuration ---------------------------------------------------------------
    @app.put("/v1/tenants/{tenant}/auth/sso")
    async def put_sso(body: JsonObject, me: Me) -> dict[str, Any]:
        return await call(platform.put_sso, me, body)

    @app.get("/v1/tenants/{tenant}/auth/sso")
    async def get_sso(me: Me) -> dict[str, Any]:
        return await call(platform.sso_view, me)

    # --- backups --------------------------------------------------------------------------
    @app.post("/v1/tenants/{tenant}/backups", status_code=201)
    async def create_backup(me: Me) -> dict[str, Any]:
        require_admin(me)
        return (await call(platform.backups.create, me.tenant_id, me.user_id)).to_json()

    @app.get("/v1/tenants/{tenant}/backups")
    async def list_backups(me: Me) -> dict[str, Any]:
        return {"backups": [b.to_json() for b in await call(platform.backups.list, me.tenant_id)]}

    @app.post("/v1/tenants/{tenant}/backups/{backup_id}/restore")
    async def restore(tenant: TenantId, backup_id: ObjectId, _: Op) -> dict[str, Any]:
        return await call(platform.backups.restore, tenant, backup_id)

    # --- schedules ------------------------------------------------------------------------
    @app.post("/v1/tenants/{tenant}/schedules", status_code=201)
    async def create_schedule(body: ScheduleIn, me: Me) -> dict[str, Any]:
        return await call(platform.schedules.create, me, body.name, body.connection, body.sql,
                          body.every_seconds)

    @app.get("/v1/tenants/{tenant}/schedules")
    async def list_schedules(me: Me) -> dict[str, Any]:
        store = await call(platform.store, me.tenant_id)
        return {"schedules": await call(store.list_schedules)}

    @app.get("/v1/tenants/{tenant}/schedules/{schedule_id}/runs")
    async def list_runs(schedule_id: ObjectId, me: Me) -> dict[str, Any]:
        store = await call(platform.store, me.tenant_id)
        await call(store.get_schedule, schedule_id)
        runs = await call(store.list_runs, schedule_id)
        refused = await call(platform.control.refused, me.tenant_id, schedule_id)
        return {"runs": sorted(runs + refused, key=lambda r: -r["started_at"])}

    # --- activity -------------------------------------------------------------------------
    @app.get("/v1/tenants/{tenant}/activity")
    async def activity(me: Me, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                       ) -> dict[str, Any]:
        return {"activity": await call(lambda: platform.store(me.tenant_id).activity(limit))}

    if settings.dev:  # controls for tests and demos: not part of the documented API
        @app.get("/_dev/clock", include_in_schema=False)
        async def dev_clock() -> dict[str, float]:
            return {"now": platform.clock.now()}

        @app.post("/_dev/clock", include_in_schema=False)
        async def dev_clock_advance(body: ClockIn) -> dict[str, float]:
            advance = getattr(platform.clock, "advance", None)
            if advance is None:
                raise CmekError("this clock cannot be moved")
            advance(body.advance_seconds)
            return {"now": platform.clock.now()}

        @app.get("/_dev/cluster", include_in_schema=False)
        async def dev_cluster() -> dict[str, bool]:
            return {"leader": await call(platform.cluster.is_leader)}

        @app.post("/_dev/jobs/run", include_in_schema=False)
        async def dev_run_jobs() -> dict[str, int]:
            return {"ran": await call(platform.run_due_jobs)}

    return app
