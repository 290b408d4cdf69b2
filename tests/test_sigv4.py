"""SigV4 verification against requests signed by botocore's real signer.

If kmslocal and botocore disagree on any byte of the canonical request, unmodified SDKs
stop working; if kmslocal accepts what AWS rejects, code passes locally and fails on AWS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from kmslocal.exceptions import KMSError
from kmslocal.sigv4 import Credential, Verified, canonical_query, canonical_uri, verify

ENDPOINT = "http://127.0.0.1:4599"
REGION = "us-west-2"
AKID = "AKIAKMSLOCALTEST0001"
SECRET = "kmslocal-test-secret/with+odd=chars"
PRINCIPAL = "arn:aws:iam::111111111111:role/cmek-platform"
CRED = Credential(access_key_id=AKID, secret_access_key=SECRET, principal_arn=PRINCIPAL)
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


def lookup(access_key_id: str) -> Credential | None:
    return CRED if access_key_id == AKID else None


@dataclass
class Signed:
    """What a server receives: method, raw path and query, headers, body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    signed_at: dt.datetime

    def verify(self, **overrides: Any) -> Verified:
        kwargs: dict[str, Any] = {
            "method": self.method, "path": self.path, "query": self.query,
            "headers": self.headers, "body": self.body, "lookup": lookup,
            "now": self.signed_at, "region": REGION, "services": {"kms"},
        }
        kwargs.update(overrides)
        return verify(**kwargs)


def sign(
    *,
    body: bytes | None = None,
    url: str = ENDPOINT + "/",
    method: str = "POST",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    secret: str = SECRET,
    access_key: str = AKID,
    token: str | None = None,
    region: str = REGION,
    service: str = "kms",
) -> Signed:
    if body is None:
        body = json.dumps({"KeyId": "alias/test", "Plaintext": "aGVsbG8="}).encode()
    all_headers = {
        "X-Amz-Target": "TrentService.Encrypt",
        "Content-Type": "application/x-amz-json-1.1",
        **(headers or {}),
    }
    request = AWSRequest(
        method=method, url=url, data=body, headers=all_headers, params=params or {}
    )
    SigV4Auth(Credentials(access_key, secret, token), service, region).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    received = dict(prepared.headers.items())
    received["Host"] = parts.netloc  # added by the HTTP client, as on the wire
    received["User-Agent"] = "Boto3/1.34 (unsigned by botocore)"
    if "X-Amz-Date" in received:
        signed_at = dt.datetime.strptime(received["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        signed_at = signed_at.replace(tzinfo=dt.UTC)
    else:
        signed_at = parsedate_to_datetime(received["Date"]).replace(tzinfo=dt.UTC)
    raw = prepared.body
    raw_body = raw if isinstance(raw, bytes) else (raw or "").encode()
    return Signed(method, parts.path, parts.query, received, raw_body, signed_at)


def refused(signed: Signed, code: str, **overrides: Any) -> str:
    with pytest.raises(KMSError) as caught:
        signed.verify(**overrides)
    err = caught.value
    assert err.code == code, err.message
    assert SECRET not in err.message
    assert "\n" not in err.message
    return err.message


def with_header(signed: Signed, name: str, value: str | None) -> Signed:
    headers = {k: v for k, v in signed.headers.items() if k.lower() != name.lower()}
    if value is not None:
        headers[name] = value
    return replace(signed, headers=headers)


# --- accepted ---------------------------------------------------------------


def test_valid_request_returns_principal_region_and_service() -> None:
    result = sign().verify()
    assert result == Verified(credential=CRED, region=REGION, service="kms")
    assert result.credential.principal_arn == PRINCIPAL


def test_header_names_in_any_case_and_unsigned_headers_ignored() -> None:
    signed = sign()
    upper = {k.upper(): v for k, v in signed.headers.items()}
    upper["X-Unsigned-Extra"] = "anything"
    assert signed.verify(headers=upper).credential == CRED


def test_cloudtrail_scope_accepted_when_listed() -> None:
    signed = sign(service="cloudtrail", headers={
        "X-Amz-Target": "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents",
    })
    result = signed.verify(services={"kms", "cloudtrail"})
    assert result.service == "cloudtrail"


def test_security_token_is_signed_and_allowed() -> None:
    signed = sign(token="FQoGZXIvYXdzE-session-token")
    assert signed.headers["X-Amz-Security-Token"] == "FQoGZXIvYXdzE-session-token"
    assert signed.verify().credential == CRED
    tampered = with_header(signed, "X-Amz-Security-Token", "other-token")
    assert refused(tampered, "InvalidSignatureException") == MISMATCH


def test_empty_body() -> None:
    assert sign(body=b"").verify().credential == CRED


def test_header_values_are_trimmed_and_spaces_collapsed() -> None:
    signed = sign(headers={"X-Amz-Meta": "  a   b  c "})
    assert signed.verify().credential == CRED
    assert with_header(signed, "X-Amz-Meta", "a b c").verify().credential == CRED
    assert refused(with_header(signed, "X-Amz-Meta", "a bc"), "InvalidSignatureException")


def test_date_header_in_rfc1123_as_botocore_writes_it() -> None:
    signed = sign(headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert "X-Amz-Date" not in signed.headers
    assert signed.verify().credential == CRED


def test_matching_content_sha256_header() -> None:
    body = b'{"KeyId":"alias/x"}'
    signed = sign(body=body, headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert signed.verify().credential == CRED


# --- refused ---------------------------------------------------------------


def test_wrong_secret() -> None:
    signed = sign(secret="not-the-secret")
    assert refused(signed, "InvalidSignatureException") == MISMATCH


def test_unknown_access_key_id() -> None:
    signed = sign(access_key="AKIAUNKNOWNKEY000000")
    message = refused(signed, "UnrecognizedClientException")
    assert message == "The security token included in the request is invalid."


def test_tampered_body() -> None:
    signed = sign()
    tampered = replace(signed, body=signed.body.replace(b"alias/test", b"alias/evil"))
    assert refused(tampered, "InvalidSignatureException") == MISMATCH


def test_tampered_signed_header() -> None:
    signed = sign()
    assert "x-amz-target" in signed.headers["Authorization"]
    tampered = with_header(signed, "X-Amz-Target", "TrentService.Decrypt")
    assert refused(tampered, "InvalidSignatureException") == MISMATCH


def test_tampered_method_path_and_query() -> None:
    signed = sign(url=ENDPOINT + "/a/b?x=1")
    assert refused(signed, "InvalidSignatureException", method="PUT") == MISMATCH
    assert refused(signed, "InvalidSignatureException", path="/a/c") == MISMATCH
    assert refused(signed, "InvalidSignatureException", query="x=2") == MISMATCH


def test_signed_header_missing_from_request() -> None:
    signed = with_header(sign(), "Content-Type", None)
    message = refused(signed, "InvalidSignatureException")
    assert "content-type" in message


def test_wrong_region() -> None:
    signed = sign(region="us-east-1")
    message = refused(signed, "InvalidSignatureException")
    assert message == "Credential should be scoped to a valid region."


def test_wrong_service() -> None:
    signed = sign(service="s3")
    message = refused(signed, "InvalidSignatureException")
    assert message == "Credential should be scoped to correct service: 'kms'."


def test_expired_after_five_minutes() -> None:
    signed = sign()
    amz = signed.headers["X-Amz-Date"]
    assert signed.verify(now=signed.signed_at + dt.timedelta(minutes=5)).credential == CRED
    now = signed.signed_at + dt.timedelta(minutes=6)
    message = refused(signed, "InvalidSignatureException", now=now)
    earliest = (now - dt.timedelta(minutes=5)).strftime("%Y%m%dT%H%M%SZ")
    assert message == (
        f"Signature expired: {amz} is now earlier than {earliest} "
        f"({now.strftime('%Y%m%dT%H%M%SZ')} - 5 min.)"
    )
    just_over = signed.signed_at + dt.timedelta(minutes=5, seconds=1)
    refused(signed, "InvalidSignatureException", now=just_over)


def test_not_yet_current_when_from_the_future() -> None:
    signed = sign()
    assert signed.verify(now=signed.signed_at - dt.timedelta(minutes=5)).credential == CRED
    message = refused(
        signed, "InvalidSignatureException", now=signed.signed_at - dt.timedelta(minutes=6)
    )
    assert message.startswith(f"Signature not yet current: {signed.headers['X-Amz-Date']} ")


def test_now_in_another_timezone_is_converted() -> None:
    signed = sign()
    tokyo = signed.signed_at.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert signed.verify(now=tokyo).credential == CRED


def test_missing_authorization() -> None:
    signed = with_header(sign(), "Authorization", None)
    message = refused(signed, "MissingAuthenticationTokenException")
    assert message == "Missing Authentication Token"


def test_presigned_query_auth_is_treated_as_missing() -> None:
    signed = with_header(sign(), "Authorization", None)
    query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=" + "0" * 64
    refused(signed, "MissingAuthenticationTokenException", query=query)


def _authorization_parts(signed: Signed) -> tuple[str, str, str]:
    value = signed.headers["Authorization"]
    params = dict(p.strip().split("=", 1) for p in value.split(" ", 1)[1].split(","))
    return params["Credential"], params["SignedHeaders"], params["Signature"]


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("AWS4-HMAC-SHA256 Credential={c}, Signature={s}", "SignedHeaders"),
        ("AWS4-HMAC-SHA256 SignedHeaders={h}, Signature={s}", "Credential"),
        ("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={h}", "Signature"),
        ("AWS4-HMAC-SHA256 Credential={c},SignedHeaders={h},Signature=", "Signature"),
        ("AWS4-HMAC-SHA1 Credential={c}, SignedHeaders={h}, Signature={s}", "algorithm"),
        ("Bearer abc", "algorithm"),
        ("AWS4-HMAC-SHA256", "Credential"),
        ("AWS4-HMAC-SHA256 Credential=AKID/20240101/kms/aws4_request, SignedHeaders={h}, "
         "Signature={s}", "5 slash-delimited"),
        ("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=host;;x-amz-date, Signature={s}",
         "SignedHeaders"),
    ],
)
def test_malformed_authorization(template: str, named: str) -> None:
    signed = sign()
    c, h, s = _authorization_parts(signed)
    bad = with_header(signed, "Authorization", template.format(c=c, h=h, s=s))
    message = refused(bad, "IncompleteSignatureException")
    assert named in message


def test_spaces_after_commas_are_tolerated() -> None:
    signed = sign()
    c, h, s = _authorization_parts(signed)
    for sep in (",", ", ", ",   "):
        value = f"AWS4-HMAC-SHA256 Credential={c}{sep}SignedHeaders={h}{sep}Signature={s}"
        assert with_header(signed, "Authorization", value).verify().credential == CRED


def test_bad_terminator() -> None:
    signed = sign()
    c, h, s = _authorization_parts(signed)
    c = c.replace("/aws4_request", "/aws5_request")
    bad = with_header(signed, "Authorization", f"AWS4-HMAC-SHA256 Credential={c}, "
                      f"SignedHeaders={h}, Signature={s}")
    assert "terminator" in refused(bad, "InvalidSignatureException")


@pytest.mark.parametrize("dropped", ["host", "x-amz-date"])
def test_host_and_date_must_be_signed(dropped: str) -> None:
    signed = sign()
    c, h, s = _authorization_parts(signed)
    h = ";".join(n for n in h.split(";") if n != dropped)
    bad = with_header(signed, "Authorization", f"AWS4-HMAC-SHA256 Credential={c}, "
                      f"SignedHeaders={h}, Signature={s}")
    message = refused(bad, "InvalidSignatureException")
    assert "must be a 'SignedHeader'" in message


def test_missing_or_malformed_date() -> None:
    signed = sign()
    message = refused(with_header(signed, "X-Amz-Date", None), "IncompleteSignatureException")
    assert "X-Amz-Date" in message
    bad = with_header(signed, "X-Amz-Date", "2024-01-01T00:00:00Z")
    assert "ISO-8601" in refused(bad, "IncompleteSignatureException")


def test_date_must_match_credential_scope() -> None:
    signed = sign()
    next_day = signed.signed_at + dt.timedelta(days=1)
    moved = with_header(signed, "X-Amz-Date", next_day.strftime("%Y%m%dT%H%M%SZ"))
    message = refused(moved, "InvalidSignatureException", now=next_day)
    assert "Credential scope" in message


def test_content_sha256_mismatch() -> None:
    signed = sign(headers={"X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()})
    message = refused(signed, "InvalidSignatureException")
    assert "x-amz-content-sha256" in message
    assert message != MISMATCH


def test_unsigned_payload_never_leaves_the_body_unsigned() -> None:
    signed = sign(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert refused(signed, "InvalidSignatureException") == MISMATCH


def test_secret_and_expected_signature_never_in_messages() -> None:
    signed = sign()
    c, h, _ = _authorization_parts(signed)
    right = _authorization_parts(signed)[2]
    wrong = "0" * 64
    bad = with_header(signed, "Authorization",
                      f"AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={h}, Signature={wrong}")
    message = refused(bad, "InvalidSignatureException")
    assert right not in message
    assert str(CRED).find(SECRET) == -1  # not even in a logged Credential


# --- paths and query strings ------------------------------------------------


def test_query_string_and_path_needing_encoding() -> None:
    path = "/keys/" + quote("alias/my key é+~!*", safe="") + "/grants"
    signed = sign(url=ENDPOINT + path + "?Marker=a%2Fb%20c&Limit=10&Limit=2&Empty=",
                  method="GET", body=b"")
    assert "%20" in signed.path
    assert signed.verify().credential == CRED
    # The path is taken as received (still encoded): decoding it first would break it.
    assert refused(signed, "InvalidSignatureException", path=unquote(signed.path)) == MISMATCH


def test_form_encoded_params_sign_as_percent_twenty() -> None:
    signed = sign(url=ENDPOINT + "/", params={"b": "two words", "a": "x/y=z&w", "é": "~ü"})
    assert "+" in signed.query  # botocore sends params form-encoded
    assert signed.verify().credential == CRED


def test_canonical_forms_match_the_spec() -> None:
    assert canonical_uri("") == "/"
    assert canonical_uri("/") == "/"
    assert canonical_uri("/a b/%2F/./c/../d//") == "/a%20b/%252F/d/"
    assert canonical_query("b=2&a=z&a=y&c") == "a=y&a=z&b=2&c="
    assert canonical_query("k=a+b%2Bc%7e") == "k=a%20b%2Bc~"


segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(segment, min_size=0, max_size=4),
    params=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
)
def test_any_path_and_params_verify(segments: list[str], params: dict[str, str]) -> None:
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    signed = sign(url=ENDPOINT + path, params=params, method="GET", body=b"")
    assert signed.verify().credential == CRED
