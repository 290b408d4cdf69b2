"""Server-side verification of AWS Signature Version 4.

kmslocal must refuse what AWS refuses, with the same error codes, so that code which
works against kmslocal does not first fail against AWS on a signing or clock problem.
The canonical request is built as botocore builds it, so unmodified SDKs verify.
Only stdlib ``hmac``/``hashlib`` are composed here; nothing cryptographic is hand-rolled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus

from kmslocal.exceptions import KMSError

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
MAX_SKEW = dt.timedelta(minutes=5)  # KMS's window; a service may have its own
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_AMZ_FORMAT = "%Y%m%dT%H%M%SZ"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    # Kept out of repr so a logged Credential never leaks the secret.
    secret_access_key: str = field(repr=False)
    principal_arn: str


@dataclass(frozen=True)
class Verified:
    credential: Credential
    region: str
    service: str


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


def _incomplete(message: str) -> KMSError:
    return KMSError("IncompleteSignatureException", message)


def _invalid(message: str) -> KMSError:
    return KMSError("InvalidSignatureException", message)


def echo(value: str) -> str:
    """Client-supplied text made safe to quote in a one-line error message."""
    return "".join(c if c.isprintable() else "?" for c in value)[:128]


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names fold to lowercase; repeated headers join with commas, as SigV4 says."""
    folded: dict[str, str] = {}
    for name, value in headers.items():
        key = name.strip().lower()
        folded[key] = f"{folded[key]},{value}" if key in folded else value
    return folded


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported AWS 'algorithm': '{echo(algorithm)}'.")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            continue
        if key in params:
            raise _incomplete(f"Authorization header has a repeated '{echo(key)}' parameter.")
        params[key] = val.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not params.get(k)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
        )
    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5:
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{echo(credential)}'."
        )
    names = tuple(params["SignedHeaders"].split(";"))
    if any(not n or n != n.strip() for n in names):
        raise _incomplete(
            f"Authorization header has a malformed 'SignedHeaders' parameter: "
            f"'{echo(params['SignedHeaders'])}'."
        )
    return _Authorization(
        access_key_id=parts[0], date=parts[1], region=parts[2], service=parts[3],
        terminator=parts[4], signed_headers=tuple(n.lower() for n in names),
        signature=params["Signature"],
    )


def _request_time(headers: Mapping[str, str]) -> tuple[str, str, dt.datetime]:
    """The signing timestamp: which header carried it, its basic form, and aware UTC.

    ``X-Amz-Date`` wins over ``Date``. ``Date`` may also be RFC 1123, because that is what
    botocore writes when a caller sets it, and AWS accepts it too.
    """
    header = "x-amz-date" if "x-amz-date" in headers else "date"
    raw = headers.get(header, "").strip()
    if not raw:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        if _AMZ_DATE.fullmatch(raw):
            when = dt.datetime.strptime(raw, _AMZ_FORMAT).replace(tzinfo=dt.UTC)
        elif header == "date":
            when = parsedate_to_datetime(raw)
            # botocore writes "-0000", which the parser returns as naive: it means UTC.
            when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
        else:
            raise ValueError(raw)
    except (ValueError, TypeError):
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{echo(raw)}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        ) from None
    return header, when.strftime(_AMZ_FORMAT), when


def _check_freshness(
    amz_date: str, when: dt.datetime, now: dt.datetime, max_skew: dt.timedelta
) -> None:
    """Refuse replays of old requests and requests from a clock far ahead, as AWS does."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(dt.UTC)
    now_s = now.strftime(_AMZ_FORMAT)
    minutes = int(max_skew.total_seconds() // 60)
    if when < now - max_skew:
        raise _invalid(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - max_skew).strftime(_AMZ_FORMAT)} ({now_s} - {minutes} min.)"
        )
    if when > now + max_skew:
        raise _invalid(
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + max_skew).strftime(_AMZ_FORMAT)} ({now_s} + {minutes} min.)"
        )


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, plus dropping empty segments, as AWS and botocore normalize."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    lead = "/" if path.startswith("/") else ""
    trail = "/" if path.endswith("/") and out else ""
    return lead + "/".join(out) + trail


def canonical_uri(path: str) -> str:
    """``path`` is the path as sent on the wire (still percent-encoded).

    Encoding it once more is what botocore does and what AWS expects for every service
    but S3 (whose SigV4 encodes the original segments "twice").
    """
    return quote(_remove_dot_segments(path) or "/", safe="/~")


def canonical_query(query: str) -> str:
    """Decode then re-encode each key and value (RFC 3986), sorted by key then value.

    Decoding ``+`` as a space matters: botocore sends params form-encoded but signs ``%20``.
    """
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        key, _, value = item.partition("=")
        pairs.append(
            (quote(unquote_plus(key), safe="-_.~"), quote(unquote_plus(value), safe="-_.~"))
        )
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _trim(value: str) -> str:
    return " ".join(value.split())


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def verify(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    lookup: Callable[[str], Credential | None],
    now: dt.datetime,
    region: str,
    services: Collection[str],
    max_skew: dt.timedelta = MAX_SKEW,
) -> Verified:
    """Check a request's SigV4 ``Authorization`` header; return who signed it and for what.

    ``path`` and ``query`` are as received (percent-encoded); ``now`` is aware, real time;
    ``max_skew`` is how far the signing time may be from it (the service's own window).
    Raises ``KMSError`` with the code AWS would use. Messages never carry the secret or
    the expected signature, so a refusal cannot help forge one.
    """
    lowered = _lower_headers(headers)
    authorization = lowered.get("authorization", "").strip()
    if not authorization:
        raise KMSError("MissingAuthenticationTokenException", "Missing Authentication Token")
    auth = _parse_authorization(authorization)
    date_header, amz_date, when = _request_time(lowered)

    credential = lookup(auth.access_key_id)
    if credential is None:
        raise KMSError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    if auth.date != amz_date[:8]:
        raise _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{echo(auth.date)}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    _check_freshness(amz_date, when, now, max_skew)
    if auth.region != region:
        raise _invalid("Credential should be scoped to a valid region.")
    if auth.service not in services:
        expected = "' or '".join(sorted(services))
        raise _invalid(f"Credential should be scoped to correct service: '{expected}'.")
    if auth.terminator != TERMINATOR:
        raise _invalid(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{echo(auth.terminator)}'."
        )

    # Host binds the signature to this endpoint; the date header binds it to a moment.
    for required in ("host", date_header):
        if required not in auth.signed_headers:
            raise _invalid(
                f"'{required.title()}' must be a 'SignedHeader' in the AWS Authorization."
            )
    lines = []
    for name in auth.signed_headers:
        if name not in lowered:
            raise _invalid(f"Signed header '{echo(name)}' is missing from the request.")
        lines.append(f"{name}:{_trim(lowered[name])}\n")

    # The body is always covered by the signature: UNSIGNED-PAYLOAD is tolerated as a
    # header value but never lets an unsigned body through.
    body_hash = hashlib.sha256(body).hexdigest()
    declared = lowered.get("x-amz-content-sha256", "").strip()
    if declared and declared != UNSIGNED_PAYLOAD and declared.lower() != body_hash:
        raise _invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    canonical_request = "\n".join((
        method.upper(),
        canonical_uri(path),
        canonical_query(query),
        "".join(lines),
        ";".join(auth.signed_headers),
        body_hash,
    ))
    string_to_sign = "\n".join((
        ALGORITHM,
        amz_date,
        auth.scope,
        hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
    ))
    key = _signing_key(credential.secret_access_key, auth.date, auth.region, auth.service)
    expected_signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    provided = auth.signature.encode("utf-8", "replace")
    if not hmac.compare_digest(expected_signature.encode("ascii"), provided):
        raise _invalid(_MISMATCH)
    return Verified(credential=credential, region=auth.region, service=auth.service)
