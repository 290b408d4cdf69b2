"""The key lifecycle engine: one decision procedure fed by polling, key events and the
data path, and the rules for locking, restoring and destroying a tenant.

A check is DescribeKey plus a canary Decrypt of one of the tenant's wrapped data keys
(with the tenant's encryption context, as any real use). Errors are classified by code
(cmek.kms): revoked-class errors lock at once; transient ones degrade, and only an
outage longer than ``outage_grace`` locks (reason ``kms_unavailable``).

What locking and restoring *do* (purge keys, refuse requests, revoke sessions, close
stores, rebuild from a backup, shred) is the platform's ``Enforcer``; this module
decides *when*, records every transition in the audit trail, and persists the state.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import sqlalchemy as sa

from cmek.audit import AuditTrail
from cmek.clock import Clock
from cmek.keyring import Keyring, encryption_context
from cmek.keyring.table import data_keys
from cmek.kms import KeyRevoked, Kms, KmsError, KmsUnavailable, RevocationReason
from cmek.lifecycle.state import KeyState, StateStore, TenantKeyState

DAY = 86400.0
log = logging.getLogger("cmek.lifecycle")


@dataclass(frozen=True)
class Durations:
    check_interval: float = 5.0
    outage_grace: float = 300.0
    restore_window: float = 30 * DAY
    live_store_grace: float = 7 * DAY
    request_budget: float = 100.0  # KMS requests per second the monitor may spend


class Enforcer(Protocol):
    def lock(self, tenant_id: str, state: TenantKeyState) -> None: ...
    def restart(self, tenant_id: str) -> None: ...
    def restore_from_backup(self, tenant_id: str) -> dict[str, Any]: ...
    def destroy(self, tenant_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Observation:
    """What one check saw of the key."""

    usable: bool
    state: KeyState
    reason: str
    request_id: str | None = None
    deletion_date: float | None = None


class Lifecycle:
    def __init__(self, kms: Kms, engine: sa.Engine, keyring: Keyring, audit: AuditTrail,
                 clock: Clock, durations: Durations, enforcer: Enforcer,
                 on_change: Callable[[TenantKeyState], None] | None = None) -> None:
        self.kms = kms
        self.engine = engine
        self.keyring = keyring
        self.audit = audit
        self.clock = clock
        self.durations = durations
        self.enforcer = enforcer
        self.on_change = on_change
        self.states = StateStore(engine, keyring.rows)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._next_check: dict[str, float] = {}
        self._rng = random.Random()

    # --- reading ------------------------------------------------------------------------
    def state(self, tenant_id: str) -> TenantKeyState:
        found = self.states.get(tenant_id)
        if found is None:
            now = self.clock.now()
            found = TenantKeyState(tenant_id, KeyState.ACTIVE, "provisioned", now,
                                   last_ok_at=now, version=1)
            if not self.states.put(found):
                found = self.states.get(tenant_id)
                assert found is not None
        return found

    def view(self, tenant_id: str) -> dict[str, Any]:
        return self.view_of(self.state(tenant_id))

    def view_of(self, s: TenantKeyState) -> dict[str, Any]:
        """A state with its deadlines, which follow from when the key became unusable."""
        restore = live = None
        if s.unusable_since is not None and s.state is not KeyState.DESTROYED:
            restore = s.unusable_since + self.durations.restore_window
            live = s.unusable_since + self.durations.live_store_grace
        return {"state": s.state.value, "reason": s.reason, "since": s.since,
                "last_checked_at": s.last_checked_at, "last_ok_at": s.last_ok_at,
                "restore_deadline": restore, "live_store_deadline": live,
                "deletion_date": s.deletion_date}

    # --- detection ----------------------------------------------------------------------
    def check(self, tenant_id: str, cause: str = "poll") -> TenantKeyState:
        """Look at the key now and apply the rules; one check per tenant at a time."""
        with self._tenant_lock(tenant_id):
            current = self.state(tenant_id)
            if current.state is KeyState.DESTROYED:
                return current
            return self._apply(current, self._observe(tenant_id), cause)

    def report(self, tenant_id: str, err: KmsError, cause: str = "data_path") -> None:
        """A KMS error met on the data path: revoked-class locks at once."""
        if isinstance(err, KeyRevoked):
            with self._tenant_lock(tenant_id):
                current = self.state(tenant_id)
                if current.state.serving:
                    self._apply(current, _revoked(err), cause)
        elif isinstance(err, KmsUnavailable):
            with self._tenant_lock(tenant_id):
                current = self.state(tenant_id)
                if current.state is KeyState.ACTIVE:
                    self._apply(current, Observation(False, KeyState.DEGRADED, "kms_unavailable",
                                                     err.request_id), cause)

    def _observe(self, tenant_id: str) -> Observation:
        key_arn = self.keyring.key_arn(tenant_id)
        try:
            described = self.kms.describe_key(key_arn)
        except KmsError as err:
            return _failed(err)
        if described.key_state == "PendingDeletion":
            return Observation(False, KeyState.PENDING_DELETION, "pending_deletion",
                               described.request_id, described.deletion_date)
        if described.key_state != "Enabled":
            return Observation(False, KeyState.LOCKED, described.key_state.lower(),
                               described.request_id)
        canary = self._canary(tenant_id)
        if canary is None:
            return Observation(True, KeyState.ACTIVE, "key_usable", described.request_id)
        category, epoch, wrapped, arn = canary
        try:
            out = self.kms.decrypt(arn, wrapped, encryption_context(tenant_id, category, epoch))
        except KmsError as err:
            return _failed(err)
        out.plaintext[:] = bytes(len(out.plaintext))
        return Observation(True, KeyState.ACTIVE, "key_usable", out.request_id)

    def _canary(self, tenant_id: str) -> tuple[str, int, bytes, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(data_keys.c.category, data_keys.c.epoch,
                                         data_keys.c.wrapped, data_keys.c.key_arn)
                               .where(data_keys.c.tenant_id == tenant_id)
                               .order_by(data_keys.c.created_at.desc()).limit(1)).first()
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]), str(row[3]))

    # --- the rules ----------------------------------------------------------------------
    def _apply(self, current: TenantKeyState, seen: Observation, cause: str) -> TenantKeyState:
        now = self.clock.now()
        checked = replace(current, last_checked_at=now)
        if seen.usable:
            checked = replace(checked, last_ok_at=now)
            if current.state is KeyState.ACTIVE:
                return self._save(checked, None, cause, seen)
            if current.state is KeyState.DEGRADED:
                return self._save(replace(checked, state=KeyState.ACTIVE, reason="kms_recovered",
                                          since=now, degraded_since=None), current, cause, seen)
            return self._restore(checked, current, cause, seen)
        if seen.reason == "not_found" and current.state is not KeyState.ACTIVE:
            return self._destroy(checked, current, cause, seen, "key_deleted")
        if seen.reason == "not_found":
            # Deleted while we served: lock now; the next check confirms and destroys.
            seen = replace(seen, state=KeyState.LOCKED)
        if seen.state is KeyState.DEGRADED:
            if current.state is KeyState.ACTIVE:
                return self._save(replace(checked, state=KeyState.DEGRADED, reason=seen.reason,
                                          since=now, degraded_since=now), current, cause, seen)
            if current.state is KeyState.DEGRADED:
                assert current.degraded_since is not None
                if now - current.degraded_since < self.durations.outage_grace:
                    return self._save(checked, None, cause, seen)
                return self._lock(checked, current, cause, replace(
                    seen, state=KeyState.LOCKED, reason="kms_unavailable"))
            return self._expire_or_keep(checked, current, cause, seen)
        if current.state.serving or current.state is KeyState.RESTORING:
            return self._lock(checked, current, cause, seen)
        if (current.state, current.reason, current.deletion_date) != (
                seen.state, seen.reason, seen.deletion_date):
            moved = replace(checked, state=seen.state, reason=seen.reason, since=now,
                            deletion_date=seen.deletion_date)
            return self._expire_or_keep(self._save(moved, current, cause, seen), None, cause,
                                        seen)
        return self._expire_or_keep(checked, None, cause, seen)

    def _lock(self, checked: TenantKeyState, previous: TenantKeyState, cause: str,
              seen: Observation) -> TenantKeyState:
        now = self.clock.now()
        locked = replace(checked, state=seen.state, reason=seen.reason, since=now,
                         unusable_since=checked.unusable_since or now, degraded_since=None,
                         deletion_date=seen.deletion_date)
        saved = self._save(locked, previous, cause, seen)
        self.enforcer.lock(saved.tenant_id, saved)
        return saved

    def _expire_or_keep(self, checked: TenantKeyState, previous: TenantKeyState | None,
                        cause: str, seen: Observation) -> TenantKeyState:
        """While unusable: past the restore window, the tenant is destroyed."""
        since = checked.unusable_since
        if since is not None and self.clock.now() - since >= self.durations.restore_window:
            return self._destroy(checked, previous or checked, cause, seen,
                                 "restore_window_over")
        return self._save(checked, previous, cause, seen)

    def _restore(self, checked: TenantKeyState, previous: TenantKeyState, cause: str,
                 seen: Observation) -> TenantKeyState:
        now = self.clock.now()
        away = now - (previous.unusable_since or now)
        if away >= self.durations.restore_window:
            return self._destroy(checked, previous, cause, seen, "restore_window_over")
        restoring = self._save(replace(checked, state=KeyState.RESTORING, reason="key_usable",
                                       since=now), previous, cause, seen)
        if away < self.durations.live_store_grace:
            self.enforcer.restart(checked.tenant_id)
            detail: dict[str, Any] = {"mode": "restart", "away_seconds": away}
        else:
            detail = {"mode": "from_backup", "away_seconds": away,
                      **self.enforcer.restore_from_backup(checked.tenant_id)}
        self.audit.append(checked.tenant_id, "tenant_restored", detail)
        return self._save(replace(restoring, state=KeyState.ACTIVE, reason=f"restored:"
                                  f"{detail['mode']}", since=self.clock.now(),
                                  unusable_since=None, deletion_date=None), restoring, cause,
                          seen)

    def _destroy(self, checked: TenantKeyState, previous: TenantKeyState, cause: str,
                 seen: Observation, why: str) -> TenantKeyState:
        """Shred first, then record: a crash in between leaves the tenant unusable but not
        yet destroyed, and the next check shreds again (idempotent) before recording it."""
        destroyed = replace(checked, state=KeyState.DESTROYED, reason=why,
                            since=self.clock.now())
        if previous.state.serving:
            self.enforcer.lock(destroyed.tenant_id, destroyed)
        # On the record before anything goes: a shred that a crash cuts short shows as
        # started, and the next run's attestation (which counts only what is left to
        # delete) is read against it.
        self.audit.append(destroyed.tenant_id, "crypto_shred_started", {"reason": why})
        attestation = self.enforcer.destroy(destroyed.tenant_id)
        self.audit.append(destroyed.tenant_id, "crypto_shred_attestation",
                          {"reason": why, **attestation})
        return self._save(destroyed, previous, cause, seen)

    def _save(self, new: TenantKeyState, previous: TenantKeyState | None, cause: str,
              seen: Observation) -> TenantKeyState:
        stored = replace(new, version=new.version + 1)
        if not self.states.put(stored):  # another process moved first: theirs stands
            latest = self.states.get(new.tenant_id)
            assert latest is not None
            return latest
        if stored.state is KeyState.DEGRADED and stored.degraded_since is not None:
            self.keyring.set_grace(stored.tenant_id,
                                   stored.degraded_since + self.durations.outage_grace)
        else:
            self.keyring.set_grace(stored.tenant_id, None)
        if (previous is not None and previous.state is not stored.state) or (
                previous is not None and previous.reason != stored.reason):
            assert previous is not None
            self.audit.append(stored.tenant_id, "key_state_changed", {
                "from": previous.state.value, "to": stored.state.value,
                "reason": stored.reason, "cause": cause, "request_id": seen.request_id})
            log.log(logging.INFO if stored.state.serving else logging.WARNING,
                    "tenant %s: key %s -> %s (%s; seen by %s)", stored.tenant_id,
                    previous.state.value, stored.state.value, stored.reason, cause)
            if self.on_change is not None:
                self.on_change(stored)
        return stored

    def _tenant_lock(self, tenant_id: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(tenant_id)
            if lock is None:
                lock = self._locks[tenant_id] = threading.Lock()
            return lock

    # --- the monitor --------------------------------------------------------------------
    def effective_interval(self, tenants: int) -> float:
        """Each check costs two KMS requests; the budget stretches the interval."""
        return max(self.durations.check_interval,
                   2.0 * tenants / self.durations.request_budget)

    def due(self, tenant_ids: list[str]) -> list[str]:
        """Tenants whose next check has come; the first check of each is jittered across
        one interval, so thousands of tenants do not all hit KMS in the same second."""
        now = self.clock.now()
        interval = self.effective_interval(len(tenant_ids))
        out = []
        for tenant_id in tenant_ids:
            when = self._next_check.get(tenant_id)
            if when is None:
                when = self._next_check[tenant_id] = now + self._rng.uniform(0, interval)
            if when <= now:
                out.append(tenant_id)
                self._next_check[tenant_id] = now + interval * self._rng.uniform(0.9, 1.1)
        return out


def _failed(err: KmsError) -> Observation:
    """A check's KMS call failed: revoked-class locks, transient degrades."""
    if isinstance(err, KeyRevoked):
        return _revoked(err)
    if isinstance(err, KmsUnavailable):
        return Observation(False, KeyState.DEGRADED, "kms_unavailable", err.request_id)
    return Observation(False, KeyState.LOCKED, f"kms_error:{err.kms_code or err.code}",
                       err.request_id)


def _revoked(err: KeyRevoked) -> Observation:
    if err.reason is RevocationReason.PENDING_DELETION:
        return Observation(False, KeyState.PENDING_DELETION, "pending_deletion", err.request_id)
    if err.reason is RevocationReason.NOT_FOUND:
        return Observation(False, KeyState.LOCKED, "not_found", err.request_id)
    return Observation(False, KeyState.LOCKED, err.reason.value, err.request_id)
