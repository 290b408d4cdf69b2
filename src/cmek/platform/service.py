"""The platform, composed once per process: the composition root.

``Platform`` builds every part (control plane, keyring, audit, object store, lifecycle,
cluster) and the services the request handlers call: ``sessions``, ``events``,
``backups``, ``schedules`` and ``indexes``, each in a module of its own, and its own
methods for tenants, users, metadata, connections and recovery. The callbacks between
the parts (a KMS refusal to the lifecycle, a state change to the cluster, the cluster's
news to the enforcer) are wired here and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from argon2 import PasswordHasher

from cmek import crashpoints
from cmek.audit import AuditTrail
from cmek.clock import Clock
from cmek.crypto.rows import RowAuthenticator
from cmek.customer.keys import VerifyReport, verify_key
from cmek.db import create_engine, redact_url, unreachable
from cmek.errors import CmekError, InvalidInput, StoreUnreachable, TenantExists, UnknownTenant
from cmek.files import private_dir
from cmek.keyring import Keyring, validate_tenant_id
from cmek.kms import BotoKms, Kms, KmsSettings
from cmek.lifecycle import Durations, Lifecycle
from cmek.platform.access import (
    ROLES,
    Caller,
    KeyVerificationFailed,
    TenantKeyUnavailable,
    require_admin,
    user_view,
    validate_email,
    validate_password,
    validate_sso,
)
from cmek.platform.addresses import parse_networks
from cmek.platform.backups import Backups
from cmek.platform.cluster import Cluster
from cmek.platform.config import ENV_VARS, ConfigError, Settings
from cmek.platform.control import ControlPlane, integrity_key
from cmek.platform.enforcement import TenantEnforcer
from cmek.platform.indexing import SearchIndexes
from cmek.platform.key_events import KeyEventGate, KeyEvents
from cmek.platform.schedules import Schedules
from cmek.platform.sessions import Sessions
from cmek.platform.tenant_db import OpenStores, TenantDatabases
from cmek.platform.warehouse import (
    EgressPolicy,
    QueryLimits,
    QueryRunner,
    Warehouses,
    connection_view,
)
from cmek.platform.warehouse.egress import database_endpoints
from cmek.platform.workers import TenantWorkers
from cmek.stores.backup import (
    RestoreJournal,
)
from cmek.stores.objects import ObjectStore, open_object_store
from cmek.stores.tenant import StoreClosed, StoredObject, TenantStore

log = logging.getLogger("cmek.platform")
HEALTH_TTL = 5.0  # seconds a store probe stands for /healthz


class Platform:
    def __init__(self, settings: Settings, clock: Clock, kms: Kms | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._health: tuple[float, list[str]] | None = None
        try:
            private_dir(settings.data_dir)
        except OSError as e:
            raise ConfigError(f"data_dir ({ENV_VARS['data_dir']}): cannot use "
                              f"{settings.data_dir}: {e.strerror}") from None
        self.engine = create_engine(settings.database_url)
        if (why := unreachable(self.engine)) is not None:
            self.engine.dispose()
            raise StoreUnreachable(
                f"database_url ({ENV_VARS['database_url']}): cannot connect to "
                f"{redact_url(settings.database_url)}: {why}")
        self.rows = RowAuthenticator(integrity_key(settings))
        self.control = ControlPlane(self.engine, self.rows)
        self.audit = AuditTrail(self.engine, clock)
        self.kms: Kms = kms or BotoKms(KmsSettings(
            region=settings.kms_region, endpoint_url=settings.kms_endpoint_url,
            connect_timeout=settings.kms_connect_timeout,
            read_timeout=settings.kms_read_timeout))
        self.keyring = Keyring(self.kms, self.engine, clock, self.audit, rows=self.rows,
                               ttl=settings.data_key_ttl,
                               refresh_ahead=min(30.0, settings.data_key_ttl / 2))
        self.databases = TenantDatabases(self.engine, settings.database_url, settings.data_dir,
                                         self.keyring)
        self.objects: ObjectStore = open_object_store(
            settings.object_store, s3_endpoint_url=settings.s3_endpoint_url)
        self.hasher = PasswordHasher()
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.enforcer = TenantEnforcer(self)
        self.lifecycle = Lifecycle(
            self.kms, self.engine, self.keyring, self.audit, clock,
            Durations(check_interval=settings.check_interval,
                      outage_grace=settings.outage_grace,
                      restore_window=settings.restore_window,
                      live_store_grace=settings.live_store_grace),
            self.enforcer)
        self.keyring.on_revoked = self.keyring.on_unavailable = self.lifecycle.report
        self.cluster = Cluster(settings.database_url, self.enforcer.announced)
        self.lifecycle.on_change = lambda state: self.cluster.announce(state.tenant_id)
        self.stores = OpenStores(self._open_store)
        self._known_tenants: set[str] = set()
        self.indexes = SearchIndexes(self.objects, self.keyring, self.store)
        self._lock = threading.Lock()
        self._rewrap_locks: dict[str, threading.Lock] = {}
        self.sessions = Sessions(self.control, self.lifecycle, self.hasher, settings, clock,
                                 guard=self.guard, store=self.store)
        self.events = KeyEvents(
            KeyEventGate(self.engine, self.rows, check_interval=settings.event_check_interval,
                         records_per_minute=settings.event_records_per_minute),
            self.control, self.audit, self.lifecycle, clock)
        self.backups = Backups(self.objects, RestoreJournal(self.engine), self.indexes,
                               self.lifecycle, clock, settings.backup_interval,
                               guard=self.guard, store=self.store, tenant_ids=self.tenant_ids)
        self.warehouses = Warehouses(
            settings.warehouse_dir,
            EgressPolicy.parse(settings.warehouse_allow,
                               blocked=database_endpoints(settings.database_url)),
            QueryRunner(QueryLimits(
                max_rows=settings.query_max_rows,
                max_result_bytes=settings.query_max_result_bytes,
                wall_seconds=settings.query_timeout, cpu_seconds=settings.query_cpu_seconds,
                memory_bytes=settings.query_memory_mb << 20),
                max_running=settings.query_max_running, per_tenant=settings.query_per_tenant))
        self.schedules = Schedules(self.control, self.warehouses, self.objects, self.keyring,
                                   clock, settings.schedule_min_period, store=self.store)
        self.workers = TenantWorkers(self.schedules.run_due)

    def store_problems(self) -> dict[str, str]:
        """What keeps this process from serving, by store: the control plane must answer
        and the object store must take a write (a probe, deleted again). Empty: serving."""
        problems: dict[str, str] = {}
        if (why := unreachable(self.engine)) is not None:
            problems["control_plane"] = why
        probe = f"health/{os.getpid()}"
        try:
            self.objects.put(probe, b"probe")
            self.objects.delete(probe)
        except CmekError as e:
            problems["object_store"] = e.message
        return problems

    def health(self) -> list[str]:
        """The stores failing now, by name, for /healthz: probed at most every
        HEALTH_TTL seconds, so that anyone asking often cannot make it a load."""
        now = self.clock.now()
        cached = self._health
        if cached is None or now - cached[0] >= HEALTH_TTL:
            problems = self.store_problems()
            for store, why in problems.items():
                log.error("health: the %s is failing: %s", store.replace("_", " "), why)
            cached = self._health = (now, sorted(problems))
        return cached[1]

    def close(self) -> None:
        self.cluster.stop()
        self.workers.stop_all()
        self.warehouses.close()
        self.stores.close_all()
        self.engine.dispose()

    # --- tenants --------------------------------------------------------------------------
    def provision(self, tenant_id: str, key_arn: str, admin_email: str,
                  admin_password: str) -> dict[str, Any]:
        validate_tenant_id(tenant_id)
        validate_email(admin_email)
        validate_password(admin_password)
        existing = self.control.tenant(tenant_id)
        if existing is not None and not self._unfinished(tenant_id, existing, key_arn):
            raise TenantExists(f"tenant {tenant_id} already exists")
        report = self._verify(key_arn, tenant_id)
        if not report.ok:
            raise KeyVerificationFailed(report.findings())
        if existing is None and not self.control.add_tenant(tenant_id, key_arn,
                                                            self.clock.now()):
            raise TenantExists(f"tenant {tenant_id} already exists")
        self.audit.append(tenant_id, "key_verified", _verification(report, "provisioning"))
        with contextlib.suppress(TenantExists):  # registered before a crash cut this short
            self.keyring.register_tenant(tenant_id, key_arn)
        crashpoints.reached("provision.registered")
        self.warehouses.prepare(tenant_id)
        store = self.store(tenant_id)
        admin = store.create_user(admin_email, self.hasher.hash(admin_password), "admin")
        store.log("tenant_provisioned", "operator", {"admin_user": admin["user_id"]})
        return self.tenant_view(tenant_id)

    def _unfinished(self, tenant_id: str, row: dict[str, Any], key_arn: str) -> bool:
        """A provisioning a crash cut short (no admin yet) is finished by provisioning
        again with the same key; any other existing id stays taken."""
        return row["key_arn"] == key_arn and not self.store(tenant_id).has_users()

    def tenant_view(self, tenant_id: str) -> dict[str, Any]:
        row = self.control.tenant(tenant_id)
        if row is None:
            raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
        return _tenant_view(row)

    def tenant_views(self) -> list[dict[str, Any]]:
        return [_tenant_view(row) for row in self.control.list_tenants()]

    def tenant_ids(self) -> list[str]:
        return [t["tenant_id"] for t in self.control.list_tenants()]

    def guard(self, tenant_id: str) -> None:
        """Refuse (423) everything of a tenant whose key is not usable; read from the
        control plane, so every process refuses as soon as one has locked."""
        self._known(tenant_id)
        state = self.lifecycle.state(tenant_id)
        if not state.state.serving:
            raise TenantKeyUnavailable.of(state)
        if self.backups.restoring(tenant_id):
            raise StoreClosed(f"the stores of tenant {tenant_id} are being restored")

    def _known(self, tenant_id: str) -> None:
        """Tenant ids are never released, so a known one need not be looked up again."""
        if tenant_id in self._known_tenants:
            return
        if self.control.tenant(tenant_id) is None:
            raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
        self._known_tenants.add(tenant_id)

    def store(self, tenant_id: str) -> TenantStore:
        return self.stores.get(tenant_id)

    def _open_store(self, tenant_id: str) -> TenantStore:
        if self.control.tenant(tenant_id) is None:
            raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
        return TenantStore(tenant_id, self.keyring, self.databases.engine(tenant_id),
                           self.clock)

    # --- rewrap ---------------------------------------------------------------------------
    def rewrap(self, tenant_id: str, new_key_arn: str | None) -> dict[str, Any]:
        """Re-wrap the tenant's data keys under ``new_key_arn``, verified first as at
        provisioning, or under its own key's newest material after a rotation. The data is
        untouched. Progress is kept in the key table, so a rewrap cut short by a crash is
        finished by ``recover`` (at start and by the job runner)."""
        self.guard(tenant_id)
        if new_key_arn is not None and new_key_arn != self.keyring.key_arn(tenant_id):
            report = self._verify(new_key_arn, tenant_id)
            if not report.ok:
                raise KeyVerificationFailed(report.findings())
            self.audit.append(tenant_id, "key_verified", _verification(report, "rewrap"))
        with self._rewrap_lock(tenant_id):
            done = self.keyring.rewrap(tenant_id, new_key_arn)
            crashpoints.reached("rewrap.finished")
            self.control.set_key_arn(tenant_id, done.key_arn)
        return {"tenant_id": tenant_id, "kms_key_arn": done.key_arn,
                "rewrapped": done.rewrapped, "total": done.total, "resumed": done.resumed}

    def _rewrap_lock(self, tenant_id: str) -> threading.Lock:
        with self._lock:
            return self._rewrap_locks.setdefault(tenant_id, threading.Lock())

    def _verify(self, key_arn: str, tenant_id: str) -> VerifyReport:
        """``cmek key verify`` as the platform runs it: its Region, its own account."""
        return verify_key(self.kms, key_arn, region=self.settings.kms_region,
                          tenant=tenant_id, provider_account=self.settings.provider_account)

    def verify_tenant_key(self, tenant_id: str, cause: str) -> dict[str, Any]:
        """Verify the tenant's key as at provisioning, and record the result (with the key's
        properties as DescribeKey shows them) in the audit trail as ``key_verified``."""
        key_arn = self.tenant_view(tenant_id)["kms_key_arn"]
        report = self._verify(key_arn, tenant_id)
        return self.audit.append(tenant_id, "key_verified", _verification(report, cause)).data

    # --- users ----------------------------------------------------------------------------
    def add_user(self, caller: Caller, email: str, password: str, role: str) -> dict[str, Any]:
        require_admin(caller)
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        store = self.store(caller.tenant_id)
        user = store.create_user(validate_email(email),
                                 self.hasher.hash(validate_password(password)), role)
        store.log("user_created", caller.user_id, {"user_id": user["user_id"]})
        return user_view(user)

    def users(self, caller: Caller) -> list[dict[str, Any]]:
        return [user_view(u) for u in self.store(caller.tenant_id).list_users()]

    # --- metadata and search --------------------------------------------------------------
    def put_object(self, caller: Caller, kind: str, object_id: str,
                   body: dict[str, Any]) -> StoredObject:
        store = self.store(caller.tenant_id)
        stored = store.put_object(kind, object_id, body)
        crashpoints.reached("write.object_committed")
        # The object is saved: whatever fails from here, the write is acknowledged (a client
        # that retried would write it twice) and the indexing job catches the index up.
        with self._after_commit(caller.tenant_id, "saving"):
            store.log("object_saved", caller.user_id, {"kind": kind, "object_id": object_id})
            self.indexes.put(caller.tenant_id, kind, object_id, body, stored.version)
        return stored

    def delete_object(self, caller: Caller, kind: str, object_id: str) -> None:
        store = self.store(caller.tenant_id)
        store.delete_object(kind, object_id)
        with self._after_commit(caller.tenant_id, "deleting"):
            store.log("object_deleted", caller.user_id, {"kind": kind, "object_id": object_id})
            self.indexes.remove(caller.tenant_id, kind, object_id)

    @contextlib.contextmanager
    def _after_commit(self, tenant_id: str, what: str) -> Iterator[None]:
        """The steps after a committed write: a failure there is logged and left to the
        indexing job (the index is marked for a rebuild), never answered as an error."""
        try:
            yield
        except Exception as e:
            self.indexes.mark_stale(tenant_id)
            code = e.code if isinstance(e, CmekError) else type(e).__name__
            log.warning("after %s an object of %s, updating its index failed (%s); the "
                        "indexing job rebuilds it", what, tenant_id, code)

    def search(self, caller: Caller, query: str, limit: int) -> list[dict[str, Any]]:
        hits = self.indexes.search(caller.tenant_id, query, limit)
        self.store(caller.tenant_id).log("search", caller.user_id, {"q": query})
        return [{"kind": h.kind, "id": h.doc_id.split("/", 1)[1], "title": h.title,
                 "score": round(h.score, 4)} for h in hits]

    # --- connections ----------------------------------------------------------------------
    def put_connection(self, caller: Caller, name: str, kind: str, config: dict[str, Any],
                       credentials: dict[str, Any]) -> None:
        require_admin(caller)
        stored = self.warehouses.check(caller.tenant_id, kind, config, credentials)
        store = self.store(caller.tenant_id)
        store.put_connection(name, kind, stored, credentials)
        store.log("connection_saved", caller.user_id, {"name": name})

    def connection_view(self, caller: Caller, name: str) -> dict[str, Any]:
        conn = self.store(caller.tenant_id).get_connection(name)
        return {"name": name, "type": conn["type"],
                "config": connection_view(conn["type"], conn["config"])}

    def query(self, caller: Caller, name: str, sql: str) -> dict[str, Any]:
        store = self.store(caller.tenant_id)
        conn = store.get_connection(name)
        result = self.warehouses.query(caller.tenant_id, conn["type"], conn["config"],
                                       conn["credentials"], sql)
        payload = result.to_json()
        result_id = _result_id(name, sql)
        self.objects.put(f"tenants/{caller.tenant_id}/results/{result_id}", self.keyring.seal(
            caller.tenant_id, "warehouse_data", f"result/{result_id}",
            json.dumps(payload).encode()))
        store.log("query", caller.user_id, {"connection": name, "sql": sql})
        return {**payload, "result_id": result_id}

    def cached_result(self, tenant_id: str, result_id: str) -> dict[str, Any]:
        sealed = self.objects.get(f"tenants/{tenant_id}/results/{result_id}")
        return dict(json.loads(self.keyring.open(tenant_id, "warehouse_data",
                                                 f"result/{result_id}", sealed)))


    # --- auth configuration ---------------------------------------------------------------
    def put_sso(self, caller: Caller, config: dict[str, Any]) -> dict[str, Any]:
        require_admin(caller)
        store = self.store(caller.tenant_id)
        store.put_setting("sso", validate_sso(config))
        store.log("sso_saved", caller.user_id, {"type": config["type"]})
        return self.sso_view(caller)

    def sso_view(self, caller: Caller) -> dict[str, Any]:
        config = self.store(caller.tenant_id).get_setting("sso")
        if config is None:
            return {"configured": False}
        view = {k: v for k, v in config.items() if k != "client_secret"}
        if config["type"] == "oidc":
            view["client_secret_set"] = True
        return {"configured": True, **view}

    # --- jobs and recovery ----------------------------------------------------------------
    def run_due_jobs(self, *, in_workers: bool = False) -> int:
        """Run every due schedule, backup and indexing job once. A locked tenant's due
        schedules are recorded as refused; with ``in_workers`` each serving tenant's
        schedules run on that tenant's own worker thread instead of here."""
        resumed = self.resume_interrupted()
        count = self.backups.run_due() + self.indexes.run_due() + sum(resumed.values())
        for tenant_id in self.tenant_ids():
            if not self.lifecycle.state(tenant_id).state.serving:
                self.workers.stop(tenant_id)
                count += self.schedules.refuse_due(tenant_id)
            elif in_workers:
                self.workers.kick(tenant_id)
            else:
                count += self.schedules.run_due(tenant_id)
        return count

    def recover(self) -> dict[str, int]:
        """At start, before serving: sweep what writes that a crash cut short left behind
        (staging files), and finish the restores and rewraps it interrupted."""
        return {"staging_files_swept": self.objects.sweep(), **self.resume_interrupted()}

    def resume_interrupted(self) -> dict[str, int]:
        """Finish the restores and rewraps that a crash cut short, here or in another
        process; at start and on every run of the job runner. Until its restore is
        finished, a tenant's requests are refused (423 ``tenant_store_closed``). A tenant
        whose key is not usable waits: its own restore brings it back."""
        restores, rewraps = self.backups.resume(), 0
        pending = self.keyring.pending_rewraps()
        for tenant_id in pending:
            lock = self._rewrap_lock(tenant_id)
            if not self.lifecycle.state(tenant_id).state.serving or not lock.acquire(
                    blocking=False):
                continue  # locked tenants wait; a rewrap running here finishes itself
            try:
                rewraps += self.keyring.resume_rewrap(tenant_id) is not None
            except CmekError as e:
                log.warning("finishing a rewrap of %s failed (%s); retrying", tenant_id,
                            e.code)
            finally:
                lock.release()
        keys = self.keyring.tenant_keys()  # a rewrap's last step: the control plane's key
        unfinished = set(self.keyring.pending_rewraps()) if pending else set()
        for row in self.control.list_tenants():
            key = keys.get(row["tenant_id"])
            if key is not None and key != row["key_arn"] and row["tenant_id"] not in unfinished:
                self.control.set_key_arn(row["tenant_id"], key)
        return {"restores_resumed": restores, "rewraps_resumed": rewraps}

    def run_monitor(self) -> int:
        """Poll the tenants whose check is due (spread with jitter, within the budget);
        only the leader process does."""
        if not self.cluster.is_leader():
            return 0
        owed = self.events.run_owed()
        due = self.lifecycle.due(self.tenant_ids())
        for tenant_id in due:
            try:
                self.lifecycle.check(tenant_id, cause="poll")
            except CmekError:
                continue
        return owed + len(due)


def _verification(report: VerifyReport, cause: str) -> dict[str, Any]:
    described = report.description
    key = None if described is None else {
        "key_state": described.key_state, "key_spec": described.key_spec,
        "key_usage": described.key_usage, "origin": described.origin,
        "multi_region": described.multi_region, "account": described.account,
        "deletion_date": described.deletion_date}
    return {"ok": report.ok, "cause": cause, "key": key,
            "checks": [c.to_json() for c in report.checks]}


def _result_id(connection: str, sql: str) -> str:
    return hashlib.sha256(f"{connection}\n{sql}".encode()).hexdigest()[:32]


def _tenant_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"tenant_id": row["tenant_id"], "kms_key_arn": row["key_arn"],
            "created_at": row["created_at"]}



__all__ = ["Platform"]
