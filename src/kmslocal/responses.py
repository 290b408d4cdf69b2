"""The AWS wire protocols: JSON 1.1 for KMS and CloudTrail, the query protocol for STS.

Requests for KMS (``TrentService.*``) and CloudTrail (``...CloudTrail_20131101.*``,
LookupEvents only) carry an ``X-Amz-Target`` and a JSON body; errors are ``__type``.
STS requests carry a form body (``Action=GetCallerIdentity&Version=2011-06-15``) and are
answered in XML, errors as ``<ErrorResponse>``. All arrive on the same URL, as AWS SDKs
send them to an endpoint_url, and all are checked by the same SigV4 verification.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from kmslocal import sigv4, sts
from kmslocal.exceptions import KMSError, as_query_error, validation
from kmslocal.faults import Faults
from kmslocal.models import Backend, Caller

log = logging.getLogger("kmslocal")

KMS_TARGET = "TrentService."
CLOUDTRAIL_TARGET = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
CONTENT_TYPE = "application/x-amz-json-1.1"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_BODY = 1024 * 1024

# The query protocol as STS speaks it ("Making Query requests" and GetCallerIdentity in
# the AWS STS API Reference, https://docs.aws.amazon.com/STS/latest/APIReference/).
STS_VERSION = "2011-06-15"
STS_XMLNS = f"https://sts.amazonaws.com/doc/{STS_VERSION}/"
XML_CONTENT_TYPE = "text/xml"
# STS accepts a signing time up to 15 minutes off ("... (20220127T015928Z - 15 min.)"
# in its SignatureDoesNotMatch), where KMS allows 5.
STS_MAX_SKEW = dt.timedelta(minutes=15)
_NO_VERSION = "NO_VERSION_SPECIFIED"  # how STS names a missing Version in InvalidAction


def _reply(request_id: str, status: int, payload: dict[str, Any]) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")), status_code=status,
        media_type=CONTENT_TYPE, headers={"x-amzn-RequestId": request_id},
    )


def error_response(request_id: str, err: KMSError) -> Response:
    return _reply(request_id, err.status, {"__type": err.code, "message": err.message})


def _xml_reply(request_id: str, status: int, root: ET.Element) -> Response:
    """``Content-Type: text/xml`` exactly, as STS sends it (no charset parameter)."""
    ET.indent(root)
    return Response(
        ET.tostring(root, encoding="unicode") + "\n", status_code=status,
        headers={"Content-Type": XML_CONTENT_TYPE, "x-amzn-RequestId": request_id},
    )


def _text(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def query_response(request_id: str, action: str, result: Mapping[str, str]) -> Response:
    """``<ActionResponse><ActionResult>...</ActionResult><ResponseMetadata>``."""
    root = ET.Element(f"{action}Response", xmlns=STS_XMLNS)
    members = ET.SubElement(root, f"{action}Result")
    for name, value in result.items():
        _text(members, name, value)
    _text(ET.SubElement(root, "ResponseMetadata"), "RequestId", request_id)
    return _xml_reply(request_id, 200, root)


def query_error_response(request_id: str, err: KMSError) -> Response:
    """``<ErrorResponse><Error><Type><Code><Message></Error><RequestId>``, STS's shape."""
    err = as_query_error(err)
    root = ET.Element("ErrorResponse", xmlns=STS_XMLNS)
    error = ET.SubElement(root, "Error")
    _text(error, "Type", "Receiver" if err.status >= 500 else "Sender")
    _text(error, "Code", err.code)
    _text(error, "Message", err.message)
    _text(root, "RequestId", request_id)
    return _xml_reply(request_id, err.status, root)


def _is_query(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return "x-amz-target" not in request.headers and content_type == FORM_CONTENT_TYPE


class Protocol:
    def __init__(self, backend: Backend, faults: Faults | None) -> None:
        self.backend = backend
        self.faults = faults

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        query = _is_query(request)
        refuse = query_error_response if query else error_response
        try:
            body = await request.body()
            if len(body) > MAX_BODY:
                raise validation("Request body is too large")
            if query:
                action, result = self._query(request, body)
                return query_response(request_id, action, result)
            return _reply(request_id, 200, await self._dispatch(request, body, request_id))
        except KMSError as err:
            return refuse(request_id, err)
        except Exception:
            log.exception("internal error in request %s", request_id)
            return refuse(
                request_id, KMSError("KMSInternalException", "An internal error occurred.")
            )

    def _verify(
        self, request: Request, body: bytes, service: str,
        max_skew: dt.timedelta = sigv4.MAX_SKEW,
    ) -> sigv4.Verified:
        return sigv4.verify(
            method=request.method, path=request.scope["raw_path"].decode("latin-1"),
            query=request.url.query,
            headers=request.headers, body=body, lookup=self.backend.config.credential,
            now=self.backend.clock.real_now(), region=self.backend.region,
            services={service}, max_skew=max_skew,
        )

    def _query(self, request: Request, body: bytes) -> tuple[str, dict[str, str]]:
        """An STS call: the action, then the signature, then the answer.

        Parameters may sit in the URL or the form body (the body wins), as the query
        protocol allows. GetCallerIdentity is never refused once the caller is known,
        is not subject to injected faults, and is not written to the usage log, which
        holds KMS events (AWS logs it as an STS event of the caller's own account).
        """
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        if not action:
            raise KMSError("MissingAction", "Missing Action")
        version = params.get("Version") or _NO_VERSION
        handler = sts.ACTIONS.get(action)
        if handler is None or version != STS_VERSION:
            raise KMSError(
                "InvalidAction",
                f"Could not find operation {sigv4.echo(action)} for version "
                f"{sigv4.echo(version)}",
            )
        verified = self._verify(request, body, "sts", STS_MAX_SKEW)
        return action, handler(verified.credential.principal_arn)

    async def _dispatch(self, request: Request, body: bytes, request_id: str) -> dict[str, Any]:
        target = request.headers.get("x-amz-target", "")
        if target.startswith(KMS_TARGET):
            service, operation = "kms", target[len(KMS_TARGET):]
        elif target.startswith(CLOUDTRAIL_TARGET):
            service, operation = "cloudtrail", target[len(CLOUDTRAIL_TARGET):]
        else:
            raise KMSError("UnknownOperationException", "")
        verified = self._verify(request, body, service)
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
