"""The control plane: which tenants exist, with which key, and who holds a live token.

Tokens (sessions and API tokens) are stored only as an HMAC of the token under the
platform's integrity key (``cmek.crypto.rows``): a database reader learns nothing
usable, and a database writer cannot add a token it could present. Tenant and token
rows carry a tag over their fields, so an edited row (another tenant, another role, a
later expiry) is refused like a forged one.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cmek.crypto.rows import RowAuthenticator
from cmek.db import count_in_window
from cmek.files import created_once
from cmek.platform.config import Settings

log = logging.getLogger("cmek.platform.control")

metadata = sa.MetaData()

tenants = sa.Table(
    "platform_tenants", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("key_arn", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("tag", sa.LargeBinary, nullable=True),  # over tenant_id, key_arn, created_at
)

tokens = sa.Table(
    "platform_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # session | api
    sa.Column("role", sa.String(16), nullable=False),  # the user's role when issued
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),  # None: until revoked (API tokens)
    sa.Column("revoked_at", sa.Float, nullable=True),
    # over every column above but revoked_at (a revocation is written in bulk at a lock)
    sa.Column("tag", sa.LargeBinary, nullable=True),
)


schedule_slots = sa.Table(
    "platform_schedule_slots", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("schedule_id", sa.String(36), primary_key=True),
    sa.Column("next_run_at", sa.Float, nullable=False),
    sa.Column("every_seconds", sa.Float, nullable=False),
)

refused_runs = sa.Table(
    "platform_refused_runs", metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
    sa.Column("schedule_id", sa.String(36), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=False),
)

login_failures = sa.Table(
    "platform_login_failures", metadata,
    # A SHA-256 of what is counted (the tenant and the keyed email hash, or the client
    # address), so the control plane holds no email address.
    sa.Column("subject", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=True),
)


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class TokenInfo:
    tenant_id: str
    user_id: str
    kind: str
    role: str


class ControlPlane:
    def __init__(self, engine: sa.Engine, rows: RowAuthenticator) -> None:
        self.engine = engine
        self.rows = rows
        metadata.create_all(engine)

    # --- tenants --------------------------------------------------------------------------
    def _tenant_tag(self, tenant_id: str, key_arn: str, created_at: float) -> bytes:
        return self.rows.tag("platform_tenants", tenant_id, key_arn, created_at)

    def _authentic_tenant(self, row: sa.Row[Any]) -> dict[str, Any] | None:
        """A tenant row the platform wrote, without its tag; None (and a warning) else."""
        m = dict(row._mapping)
        tag = m.pop("tag")
        if self.rows.valid("platform_tenants", tag, m["tenant_id"], m["key_arn"],
                           float(m["created_at"])):
            return m
        log.warning("a tenant row not written by the platform is ignored")
        return None

    def add_tenant(self, tenant_id: str, key_arn: str, now: float) -> bool:
        """False when the tenant id is taken (ids stay reserved, even after destruction)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(tenants.insert().values(
                    tenant_id=tenant_id, key_arn=key_arn, created_at=now,
                    tag=self._tenant_tag(tenant_id, key_arn, now)))
        except sa.exc.IntegrityError:
            return False
        return True

    def set_key_arn(self, tenant_id: str, key_arn: str) -> None:
        """The last step of a rewrap to another key: the tenant is now under that key."""
        row = self.tenant(tenant_id)
        if row is None:
            return
        with self.engine.begin() as conn:
            conn.execute(tenants.update().where(tenants.c.tenant_id == tenant_id).values(
                key_arn=key_arn, tag=self._tenant_tag(tenant_id, key_arn, row["created_at"])))

    def tenant(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant, if the platform wrote its row: a forged one is no tenant."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.tenant_id == tenant_id)).first()
        return None if row is None else self._authentic_tenant(row)

    def list_tenants(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = list(conn.execute(sa.select(tenants).order_by(tenants.c.tenant_id)))
        return [m for m in (self._authentic_tenant(r) for r in rows) if m is not None]

    # --- tokens ---------------------------------------------------------------------------
    def issue(self, tenant_id: str, user_id: str, role: str, kind: str, now: float,
              ttl: float | None) -> tuple[str, float | None]:
        token = new_token("cms" if kind == "session" else "cma")
        expires = None if ttl is None else now + ttl
        row = {"token_hash": self.token_hash(token), "tenant_id": tenant_id,
               "user_id": user_id, "kind": kind, "role": role, "created_at": now,
               "expires_at": expires}
        with self.engine.begin() as conn:
            conn.execute(tokens.insert().values(**row, tag=self._token_tag(row)))
        return token, expires

    def token_hash(self, token: str) -> str:
        return self.rows.lookup("token", token)

    def _token_tag(self, row: dict[str, Any]) -> bytes:
        return self.rows.tag("platform_tokens", *_token_fields(row))

    def resolve(self, token: str, now: float) -> TokenInfo | None:
        row = self._unexpired(token, now)
        if row is None or row.revoked_at is not None:
            return None
        return TokenInfo(row.tenant_id, row.user_id, row.kind, row.role)

    def ended(self, token: str, now: float) -> tuple[TokenInfo, float] | None:
        """A revoked token that has not yet expired, with when it was revoked."""
        row = self._unexpired(token, now)
        if row is None or row.revoked_at is None:
            return None
        return TokenInfo(row.tenant_id, row.user_id, row.kind, row.role), float(row.revoked_at)

    def _unexpired(self, token: str, now: float) -> sa.Row[Any] | None:
        """Looked up by the token's hash: the database compares hashes, never the token."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens).where(
                tokens.c.token_hash == self.token_hash(token))).first()
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if not self.rows.valid("platform_tokens", row.tag, *_token_fields(dict(row._mapping))):
            log.warning("a token row not written by the platform is refused")
            return None
        return row

    def revoke(self, token: str, now: float) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(tokens.update().where(
                tokens.c.token_hash == self.token_hash(token), tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)).rowcount)

    def revoke_tenant(self, tenant_id: str, now: float) -> int:
        """End every session and API token of a tenant at once."""
        with self.engine.begin() as conn:
            return int(conn.execute(tokens.update().where(
                tokens.c.tenant_id == tenant_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)).rowcount)

    # --- jobs of locked tenants -----------------------------------------------------------
    def remember_schedules(self, tenant_id: str,
                           slots: list[tuple[str, float, float]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(schedule_slots.delete().where(schedule_slots.c.tenant_id == tenant_id))
            if slots:
                conn.execute(schedule_slots.insert(), [
                    {"tenant_id": tenant_id, "schedule_id": sid, "next_run_at": nxt,
                     "every_seconds": every} for sid, nxt, every in slots])

    def next_runs(self, tenant_id: str) -> dict[str, float]:
        with self.engine.connect() as conn:
            return {str(r.schedule_id): float(r.next_run_at) for r in conn.execute(
                sa.select(schedule_slots).where(schedule_slots.c.tenant_id == tenant_id))}

    def refuse_due_runs(self, tenant_id: str, now: float, error_code: str) -> int:
        """Record, for each due schedule of a locked tenant, a run refused with a code."""
        import uuid

        count = 0
        with self.engine.begin() as conn:
            due = list(conn.execute(sa.select(schedule_slots).where(
                schedule_slots.c.tenant_id == tenant_id, schedule_slots.c.next_run_at <= now)))
            for slot in due:
                conn.execute(refused_runs.insert().values(
                    run_id=str(uuid.uuid4()), tenant_id=tenant_id,
                    schedule_id=slot.schedule_id, started_at=now, error_code=error_code))
                conn.execute(schedule_slots.update().where(
                    schedule_slots.c.tenant_id == tenant_id,
                    schedule_slots.c.schedule_id == slot.schedule_id)
                    .values(next_run_at=now + slot.every_seconds))
                count += 1
        return count

    def refused(self, tenant_id: str, schedule_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [{"run_id": r.run_id, "schedule_id": r.schedule_id,
                     "started_at": r.started_at, "finished_at": r.started_at,
                     "status": "failed", "error_code": r.error_code, "result_key": None}
                    for r in conn.execute(sa.select(refused_runs).where(
                        refused_runs.c.tenant_id == tenant_id,
                        refused_runs.c.schedule_id == schedule_id))]

    # --- login throttling -----------------------------------------------------------------
    def login_locked_until(self, subjects: list[str], now: float) -> float | None:
        """The end of the latest lockout in force on any of the subjects, if any."""
        with self.engine.connect() as conn:
            until = conn.execute(sa.select(sa.func.max(login_failures.c.locked_until)).where(
                login_failures.c.subject.in_(subjects),
                login_failures.c.locked_until > now)).scalar()
        return None if until is None else float(until)

    def login_failed(self, limits: list[tuple[str, int, bool]], now: float,
                     window: float, backoff: float = 1.0) -> None:
        """Count a failed sign-in against each (subject, limit, backs_off). Failures are
        counted over ``window`` seconds from the first. At the limit, a subject that backs
        off waits ``backoff`` seconds, then twice as long after each further failure
        (never more than ``window``): it slows guessing down without ever locking anyone
        else out. Any other subject is refused for ``window`` seconds, then starts afresh.
        Atomic in one transaction."""
        expired = login_failures.c.window_start <= now - window
        with self.engine.begin() as conn:  # subjects in a fixed order, so no deadlock
            for subject, limit, backs_off in limits:
                failures = count_in_window(
                    conn, login_failures.c.subject, subject, count=login_failures.c.failures,
                    start=login_failures.c.window_start, now=now, window=window,
                    locked_until=None)
                if failures < limit:
                    continue
                if backs_off:
                    wait = min(window, backoff * 2.0 ** min(failures - limit, 32))
                    conn.execute(login_failures.update().where(
                        login_failures.c.subject == subject).values(locked_until=now + wait))
                else:
                    conn.execute(login_failures.update().where(
                        login_failures.c.subject == subject).values(
                            failures=0, window_start=now, locked_until=now + window))
        with self.engine.begin() as conn:  # forget the idle: never waiting on a row in use
            idle = sa.select(login_failures.c.subject).where(expired, sa.or_(
                login_failures.c.locked_until.is_(None), login_failures.c.locked_until <= now)
            ).with_for_update(skip_locked=True)
            conn.execute(login_failures.delete().where(login_failures.c.subject.in_(idle)))

    def login_succeeded(self, subject: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(login_failures.delete().where(login_failures.c.subject == subject))


def _token_fields(row: Mapping[str, Any]) -> tuple[str | float | None, ...]:
    """What a token row's tag covers, in order."""
    expires = row["expires_at"]
    return (row["token_hash"], row["tenant_id"], row["user_id"], row["kind"], row["role"],
            float(row["created_at"]), None if expires is None else float(expires))


def integrity_key(settings: Settings) -> bytes:
    """The key that tags control-plane rows: the setting, or for a single process on
    SQLite a random one made once in data_dir (0600), never in the database."""
    if settings.integrity_key is not None:
        return settings.integrity_key.get_secret_value().encode()
    return created_once(settings.data_dir / "integrity.key",
                        lambda: secrets.token_hex(32)).strip().encode()
