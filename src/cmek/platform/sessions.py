"""Signing in, and the tokens that follow: sessions (8 hours) and API tokens.

Failed sign-ins are counted per account and client, which backs off, and per client
across accounts, which is refused for a while (cmek.platform.control). A token issued
while a lock lands never outlives the lock, and a token of another tenant is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cmek.clock import Clock
from cmek.lifecycle import Lifecycle
from cmek.platform.access import SESSION_TTL, Caller, Forbidden, TooManyAttempts, Unauthorized
from cmek.platform.config import Settings
from cmek.platform.control import ControlPlane, TokenInfo
from cmek.stores.tenant import TenantStore

_DUMMY_HASH = PasswordHasher().hash("not a real password: equalizes login timing")


class Sessions:
    def __init__(self, control: ControlPlane, lifecycle: Lifecycle, hasher: PasswordHasher,
                 settings: Settings, clock: Clock, *, guard: Callable[[str], None],
                 store: Callable[[str], TenantStore]) -> None:
        """``guard`` refuses a tenant that is not served; ``store`` opens its store."""
        self.control = control
        self.lifecycle = lifecycle
        self.hasher = hasher
        self.settings = settings
        self.clock = clock
        self._guard = guard
        self._store = store

    def login(self, tenant_id: str, email: str, password: str,
              client: str | None = None) -> tuple[str, float | None]:
        """``client`` is the caller's address (cmek.platform.clients): failures are
        counted per account and client, which backs off (login_backoff, then doubling), and per
        client across accounts, which is refused for a while. Nobody can lock an account
        out for anyone else: a guesser slows down only its own attempts."""
        self._guard(tenant_id)
        store = self._store(tenant_id)
        client = client or "unknown"
        account = _subject("account", tenant_id, store.email_lookup(email), client)
        limits = [(account, self.settings.login_max_failures, True),
                  (_subject("client", client), self.settings.login_max_failures_per_client,
                   False)]
        now = self.clock.now()
        locked_until = self.control.login_locked_until([s for s, _, _ in limits], now)
        if locked_until is not None:  # checked before the password: a right one is refused
            store.log("login_throttled", "anonymous", {})
            raise TooManyAttempts(locked_until - now)
        user = store.find_user(email)
        try:
            if user is None:
                self.hasher.verify(_DUMMY_HASH, password)  # same work whether or not found
                raise VerifyMismatchError
            self.hasher.verify(user["password_hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            self.control.login_failed(limits, self.clock.now(), self.settings.login_lockout,
                                      self.settings.login_backoff)
            store.log("login_failed", "anonymous", {})
            raise Unauthorized("wrong email or password") from None
        self.control.login_succeeded(account)
        store.log("login", user["user_id"], {})
        return self._issue(tenant_id, user["user_id"], str(user["role"]), "session",
                           SESSION_TTL)

    def api_token(self, caller: Caller) -> tuple[str, float | None]:
        self._store(caller.tenant_id).log("api_token_created", caller.user_id, {})
        return self._issue(caller.tenant_id, caller.user_id, caller.role, "api", None)

    def _issue(self, tenant_id: str, user_id: str, role: str, kind: str,
               ttl: float | None) -> tuple[str, float | None]:
        """A lock saves the state first, then revokes every token. A token issued while a
        lock lands is either seen by that revocation or sees the state here: it never
        outlives the lock."""
        token, expires = self.control.issue(tenant_id, user_id, role, kind, self.clock.now(),
                                            ttl)
        if not self.lifecycle.state(tenant_id).state.serving:
            self.control.revoke(token, self.clock.now())
            self._guard(tenant_id)  # 423 with the state and reason
        return token, expires

    def authenticate(self, token: str, tenant_id: str) -> Caller:
        self._guard(tenant_id)
        info: TokenInfo | None = self.control.resolve(token, self.clock.now())
        if info is None:
            self._guard(tenant_id)  # revoked by a lock that landed meanwhile: say so (423)
            raise Unauthorized("missing, expired or revoked token")
        if info.tenant_id != tenant_id:
            raise Forbidden("this token belongs to another tenant")
        return Caller(tenant_id, info.user_id, info.role, info.kind, token)

    def ended_session_role(self, token: str, tenant_id: str) -> str | None:
        """The role of the tenant's session that its current lock ended, else None: so a
        locked tenant's notice can show the key admin the countdowns, and nothing more."""
        state = self.lifecycle.state(tenant_id)
        ended = self.control.ended(token, self.clock.now())
        if state.state.serving or state.unusable_since is None or ended is None:
            return None
        info, revoked_at = ended
        if info.tenant_id != tenant_id or info.kind != "session" or (
                revoked_at < state.unusable_since):
            return None  # another tenant's, an API token, or signed out before the lock
        return info.role

    def logout(self, caller: Caller) -> None:
        self.control.revoke(caller.token, self.clock.now())
        self._store(caller.tenant_id).log("logout", caller.user_id, {})


def _subject(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
