"""Who is calling and what they may do: the caller of a request, its role, the rules for
the credentials and single sign-on an admin sets, and the refusals every door answers
with (the API and the pages turn each into the same status)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cmek.errors import CmekError, InvalidInput
from cmek.lifecycle import TenantKeyState

SESSION_TTL = 8 * 3600.0
ROLES = ("admin", "analyst")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


class KeyVerificationFailed(CmekError):
    code = "key_verification_failed"

    def __init__(self, findings: list[dict[str, Any]]) -> None:
        super().__init__("the key did not pass verification")
        self.findings = findings


class TenantKeyUnavailable(CmekError):
    """Every request of a tenant whose key is not usable: with the state and the reason."""

    code = "tenant_key_unavailable"

    def __init__(self, key_state: str, reason: str) -> None:
        super().__init__(f"the tenant's key is unavailable ({key_state}: {reason})")
        self.key_state = key_state
        self.reason = reason

    @classmethod
    def of(cls, state: TenantKeyState) -> TenantKeyUnavailable:
        return cls(state.state.value, state.reason)


class Unauthorized(CmekError):
    code = "unauthorized"


class Forbidden(CmekError):
    code = "forbidden"


class TooManyAttempts(CmekError):
    """Sign-ins refused for a while after repeated failures: the same answer whether or
    not the email exists, and whether or not the password is right."""

    code = "too_many_attempts"

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed sign-ins; try again later")
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    user_id: str
    role: str
    kind: str  # session | api
    token: str


def validate_email(email: str) -> str:
    if not isinstance(email, str) or not _EMAIL.match(email):
        raise InvalidInput("email must look like name@domain")
    return email


def validate_password(password: str) -> str:
    if not isinstance(password, str) or not 8 <= len(password) <= 256:
        raise InvalidInput("password must be 8 to 256 characters")
    return password


def require_admin(caller: Caller) -> None:
    if caller.role != "admin":
        raise Forbidden("this needs the admin role")


def user_view(user: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": user["user_id"], "email": user["email"], "role": user["role"],
            "created_at": user["created_at"]}


def validate_sso(config: dict[str, Any]) -> dict[str, Any]:
    """SAML needs an entity id, an https SSO URL and a PEM certificate; OIDC an https
    issuer, a client id and a client secret. Nothing else is kept."""
    def text(name: str, max_len: int = 2048) -> str:
        value = config.get(name)
        if not isinstance(value, str) or not 1 <= len(value) <= max_len:
            raise InvalidInput(f"sso.{name} must be a non-empty string")
        return value

    kind = config.get("type")
    if kind == "saml":
        out = {"type": "saml", "entity_id": text("entity_id"), "sso_url": text("sso_url"),
               "certificate": text("certificate", 16384)}
        if not out["sso_url"].startswith("https://"):
            raise InvalidInput("sso.sso_url must be an https URL")
        if "-----BEGIN CERTIFICATE-----" not in out["certificate"]:
            raise InvalidInput("sso.certificate must be a PEM certificate")
    elif kind == "oidc":
        out = {"type": "oidc", "issuer": text("issuer"), "client_id": text("client_id", 256),
               "client_secret": text("client_secret", 1024)}
        if not out["issuer"].startswith("https://"):
            raise InvalidInput("sso.issuer must be an https URL")
    else:
        raise InvalidInput("sso.type must be 'saml' or 'oidc'")
    extra = set(config) - set(out)
    if extra:
        raise InvalidInput(f"unknown sso fields: {', '.join(sorted(extra))[:200]}")
    return out
