"""Cookies and CSRF tokens of the web pages.

- A tenant's web session is the platform's own session token (``Sessions.login``), kept in
  an HttpOnly, Secure, SameSite=Lax cookie named for the tenant; revoking the token (sign
  out, or the tenant's lock) ends the web session with it.
- Forms of a signed-in page carry an HMAC of the session token as their CSRF token: only
  a page served to the session's holder can show it, and every platform process derives
  the same one without shared state.
- Sign-in forms (no session yet) use a double-submit token: a random ``__Host-`` cookie
  (which no other origin, sibling subdomains included, can set) repeated in a hidden field.
- The operator's cookie never holds the operator token: it holds an expiry and a MAC
  keyed by the token, so changing the token ends every operator web session.

Every POST also has its ``Origin`` (when the browser sends one) checked against ``Host``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "__Host-cmek-csrf"
OPS_COOKIE = "__Host-cmek-ops"
OPS_TTL = 8 * 3600.0
_SESSION_CSRF_KEY = b"cmek web: csrf token of a tenant session"


def session_cookie(tenant: str) -> str:
    """One cookie per tenant (Path=/ as the ``__Host-`` prefix wants): a browser may be
    signed in to several tenants, and each page reads only its own tenant's cookie."""
    return f"__Host-cmek-t-{tenant}"


def set_cookie(response: Response, name: str, value: str, *, max_age: int,
               same_site: str) -> None:
    response.set_cookie(name, value, max_age=max(0, max_age), path="/", secure=True,
                        httponly=True, samesite=same_site)  # type: ignore[arg-type]


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="lax")


def session_csrf(token: str) -> str:
    return hmac.new(_SESSION_CSRF_KEY, token.encode(), hashlib.sha256).hexdigest()


def new_form_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def same_origin(request: Request) -> bool:
    """A POST from a page of another origin is refused even before its token is looked at;
    browsers that send no Origin are left to the token check."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc == host


def ops_cookie_value(operator_token: str, now: float) -> str:
    expires = int(now + OPS_TTL)
    nonce = secrets.token_urlsafe(16)
    return f"{expires}.{nonce}.{_ops_mac(operator_token, f'{expires}.{nonce}')}"


def ops_cookie_valid(operator_token: str, value: str | None, now: float) -> bool:
    if not value or value.count(".") != 2:
        return False
    expires, nonce, mac = value.split(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(mac.encode(), _ops_mac(operator_token,
                                                      f"{expires}.{nonce}").encode())


def ops_csrf(operator_token: str, cookie_value: str) -> str:
    return _ops_mac(operator_token, f"csrf:{cookie_value}")


def _ops_mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), f"cmek web operator: {message}".encode(),
                    hashlib.sha256).hexdigest()
