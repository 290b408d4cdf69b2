"""The AWS JSON 1.1 protocol: target header, SigV4, JSON bodies, errors as ``__type``.

Requests for KMS (``TrentService.*``) and CloudTrail (``...CloudTrail_20131101.*``,
LookupEvents only) arrive on the same URL, as AWS SDKs send them to an endpoint_url.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kmslocal import sigv4
from kmslocal.exceptions import KMSError
from kmslocal.faults import Faults
from kmslocal.models import Backend, Caller

log = logging.getLogger("kmslocal")

KMS_TARGET = "TrentService."
CLOUDTRAIL_TARGET = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_BODY = 1024 * 1024


def _reply(request_id: str, status: int, payload: dict[str, Any]) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")), status_code=status,
        media_type=CONTENT_TYPE, headers={"x-amzn-RequestId": request_id},
    )


def error_response(request_id: str, err: KMSError) -> Response:
    return _reply(request_id, err.status, {"__type": err.code, "message": err.message})


class Protocol:
    def __init__(self, backend: Backend, faults: Faults | None) -> None:
        self.backend = backend
        self.faults = faults

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            return _reply(request_id, 200, await self._dispatch(request, request_id))
        except KMSError as err:
            return error_response(request_id, err)
        except Exception:
            log.exception("internal error in request %s", request_id)
            return error_response(
                request_id, KMSError("KMSInternalException", "An internal error occurred.")
            )

    async def _dispatch(self, request: Request, request_id: str) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise KMSError("ValidationException", "Request body is too large")
        target = request.headers.get("x-amz-target", "")
        if target.startswith(KMS_TARGET):
            service, operation = "kms", target[len(KMS_TARGET):]
        elif target.startswith(CLOUDTRAIL_TARGET):
            service, operation = "cloudtrail", target[len(CLOUDTRAIL_TARGET):]
        else:
            raise KMSError("UnknownOperationException", "")
        verified = sigv4.verify(
            method=request.method, path=request.scope["raw_path"].decode("latin-1"),
            query=request.url.query,
            headers=request.headers, body=body, lookup=self.backend.config.credential,
            now=self.backend.clock.real_now(), region=self.backend.region, services={service},
        )
        try:
            raw = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise KMSError("SerializationException", "Start of structure or map found where "
                           "not expected") from None
        if not isinstance(raw, dict):
            raise KMSError("SerializationException", "Request body must be a JSON object")
        if self.faults is not None:
            await self.faults.apply(operation)
        caller = Caller(
            verified.credential.principal_arn, verified.credential.access_key_id,
            request.client.host if request.client else "127.0.0.1",
            request.headers.get("user-agent", "")[:256],
        )
        if service == "cloudtrail":
            if operation != "LookupEvents":
                raise KMSError("UnknownOperationException", "")
            self.backend.tick()
            return self.backend.trail.lookup(caller.arn, raw, self.backend.clock.timestamp())
        return self.backend.call(operation, raw, caller, request_id)
