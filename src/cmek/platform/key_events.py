"""Key events from the customer (EventBridge, or kmslocal's stand-in): authentic, and cheap.

Each tenant has its own event endpoint, ``POST /v1/tenants/{tenant}/key-events``, and its
own secret, sent in ``X-Cmek-Event-Secret`` (an EventBridge API destination's API-key
header). The secret is stored only as an HMAC under the platform's integrity key; it is
checked without the tenant's key, so events still arrive while that key is revoked.

An event is a prompt to look at the key, never a state by itself, so it costs the
customer's KMS at most one check per tenant per ``check_interval``: the first event
checks at once; the ones that follow within the interval are coalesced into one check
when it ends (run by the monitor). No event is refused for coming too often, since a
refused one would be retried late and a key change noticed late; past
``records_per_minute`` events of a tenant, the rest are coalesced without an audit entry
of their own. An event must name the tenant's own key, or it is refused (403): one
customer's events never touch another's key.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any

import sqlalchemy as sa

from cmek.audit import AuditTrail
from cmek.clock import Clock
from cmek.crypto.rows import RowAuthenticator
from cmek.db import count_in_window
from cmek.errors import CmekError, InvalidInput, UnknownTenant
from cmek.kms import KeyArn
from cmek.lifecycle import Lifecycle, TenantKeyState
from cmek.platform.access import Unauthorized
from cmek.platform.control import ControlPlane

log = logging.getLogger("cmek.platform")

HEADER = "X-Cmek-Event-Secret"
WINDOW = 60.0

metadata = sa.MetaData()

credentials = sa.Table(
    "platform_event_credentials", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("tag", sa.LargeBinary, nullable=False),
)

pacing = sa.Table(
    "platform_key_event_pacing", metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("checked_at", sa.Float, nullable=True),  # the last check an event caused
    sa.Column("owed", sa.Integer, nullable=False),  # 1: a coalesced check is due
)


class EventNotForTenant(CmekError):
    code = "event_not_for_tenant"


def check_event(event: dict[str, Any], key_arn: str) -> dict[str, str]:
    """An EventBridge KMS event about ``key_arn``, from the key's own account and Region;
    returns what the audit trail records of it."""
    resources = event.get("resources")
    if event.get("source") != "aws.kms" or not isinstance(resources, list):
        raise InvalidInput("not an EventBridge KMS event (source aws.kms, resources [...])")
    key = KeyArn.parse(key_arn)
    if key_arn not in resources or any(
            field in event and event[field] != expected
            for field, expected in (("account", key.account), ("region", key.region))):
        raise EventNotForTenant("the event is not about this tenant's key")
    detail = event.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    return {"detail_type": str(event.get("detail-type", ""))[:100],
            "event_id": str(event.get("id", ""))[:100],
            "event_name": str(detail.get("eventName", ""))[:100],
            "request_id": str(detail.get("requestID", ""))[:100]}


class KeyEventGate:
    """Credentials, the per-tenant budget and the coalescing, in the control plane: every
    platform process shares them."""

    def __init__(self, engine: sa.Engine, rows: RowAuthenticator, *, check_interval: float,
                 records_per_minute: int) -> None:
        self.engine = engine
        self.rows = rows
        self.check_interval = check_interval
        self.records_per_minute = records_per_minute
        metadata.create_all(engine)

    # --- credentials ----------------------------------------------------------------------
    def issue(self, tenant_id: str, now: float) -> str:
        """A new secret for the tenant, replacing any earlier one; shown once."""
        secret = f"cme_{secrets.token_urlsafe(32)}"
        digest = self.rows.lookup("event", secret)
        values = {"secret_hash": digest, "created_at": now,
                  "tag": self.rows.tag("event_credentials", tenant_id, digest, now)}
        with self.engine.begin() as conn:
            conn.execute(credentials.delete().where(credentials.c.tenant_id == tenant_id))
            conn.execute(credentials.insert().values(tenant_id=tenant_id, **values))
        return secret

    def authentic(self, tenant_id: str, secret: str | None) -> bool:
        if not secret:
            return False
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(credentials).where(
                credentials.c.tenant_id == tenant_id)).first()
        if row is None or not self.rows.valid("event_credentials", row.tag, tenant_id,
                                              row.secret_hash, float(row.created_at)):
            return False
        return hmac.compare_digest(str(row.secret_hash), self.rows.lookup("event", secret))

    # --- budget and coalescing ------------------------------------------------------------
    def admit(self, tenant_id: str, now: float) -> bool:
        """Count an event; whether it is within the tenant's budget of audit entries."""
        with self.engine.begin() as conn:
            events = count_in_window(conn, pacing.c.tenant_id, tenant_id, count=pacing.c.events,
                                     start=pacing.c.window_start, now=now, window=WINDOW,
                                     checked_at=None, owed=0)
        return events <= self.records_per_minute

    def claim(self, tenant_id: str, now: float) -> bool:
        """True: the caller checks the key now. False: a check ran within the interval;
        one more is owed when it ends (``owed``)."""
        with self.engine.begin() as conn:
            claimed = conn.execute(pacing.update().where(
                pacing.c.tenant_id == tenant_id,
                sa.or_(pacing.c.checked_at.is_(None),
                       pacing.c.checked_at <= now - self.check_interval))
                .values(checked_at=now, owed=0)).rowcount
            if not claimed:
                conn.execute(pacing.update().where(pacing.c.tenant_id == tenant_id)
                             .values(owed=1))
        return bool(claimed)

    def owe(self, tenant_id: str) -> None:
        """A claimed check did not happen (it failed): one more is owed."""
        with self.engine.begin() as conn:
            conn.execute(pacing.update().where(pacing.c.tenant_id == tenant_id)
                         .values(owed=1))

    def owed(self, now: float) -> list[str]:
        """Tenants whose coalesced check has come due."""
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(sa.select(pacing.c.tenant_id).where(
                pacing.c.owed == 1, pacing.c.checked_at <= now - self.check_interval))]


class KeyEvents:
    """The platform's side: issuing a tenant's credential, receiving its events, and the
    checks that coalesced or failed events left owed."""

    def __init__(self, gate: KeyEventGate, control: ControlPlane, audit: AuditTrail,
                 lifecycle: Lifecycle, clock: Clock) -> None:
        self.gate = gate
        self.control = control
        self.audit = audit
        self.lifecycle = lifecycle
        self.clock = clock

    def issue_credential(self, tenant_id: str) -> dict[str, str]:
        """A new event secret for the tenant's endpoint (the old one stops working); shown
        once, for the customer's EventBridge API destination."""
        if self.control.tenant(tenant_id) is None:
            raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
        secret = self.gate.issue(tenant_id, self.clock.now())
        self.audit.append(tenant_id, "event_credential_issued", {})
        return {"url_path": f"/v1/tenants/{tenant_id}/key-events", "header": HEADER,
                "secret": secret}

    def receive(self, tenant_id: str, secret: str | None,
                event: dict[str, Any]) -> dict[str, Any]:
        """An EventBridge KMS event for this tenant: authentic (its own secret), about its
        own key, within its budget; then at most one key check per interval. Duplicates
        and reordering are harmless: each is a prompt to look at the key."""
        row = self.control.tenant(tenant_id)
        if row is None or not self.gate.authentic(tenant_id, secret):
            raise Unauthorized(f"missing or wrong {HEADER}")
        recorded = check_event(event, row["key_arn"])
        now = self.clock.now()
        if self.gate.admit(tenant_id, now):
            self.audit.append(tenant_id, "key_event", recorded)
        if not self.gate.claim(tenant_id, now):
            return {"tenant_id": tenant_id, "check": "coalesced"}
        state = self._check(tenant_id)
        return {"tenant_id": tenant_id, "check": "done", "state": state.state.value}

    def run_owed(self) -> int:
        """The checks that coalesced (or failed) events left owed, once their interval
        has passed."""
        done = 0
        now = self.clock.now()
        for tenant_id in self.gate.owed(now):
            if self.gate.claim(tenant_id, now):
                try:
                    self._check(tenant_id)
                except CmekError as e:
                    log.warning("the owed key check of %s failed (%s); owed again", tenant_id,
                                e.code)
                done += 1
        return done

    def _check(self, tenant_id: str) -> TenantKeyState:
        """The check an event claimed; if it fails, it stays owed, so the key is looked at
        again whether or not the sender retries."""
        try:
            return self.lifecycle.check(tenant_id, cause="event")
        except Exception:
            self.gate.owe(tenant_id)
            raise
