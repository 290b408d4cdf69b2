"""The platform's services, composed once per process: control plane, keyring, audit,
object store, and each tenant's stores and search index.

HTTP handlers (``cmek.platform.api``) call these methods and nothing below them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cmek import crashpoints
from cmek.audit import AuditTrail
from cmek.clock import Clock
from cmek.crypto.rows import RowAuthenticator
from cmek.customer.keys import VerifyReport, verify_key
from cmek.db import create_engine, redact_url, unreachable
from cmek.errors import CmekError, InvalidInput, StoreUnreachable, TenantExists, UnknownTenant
from cmek.files import private_dir
from cmek.keyring import Keyring, validate_tenant_id
from cmek.keyring.table import data_keys
from cmek.kms import BotoKms, KeyRevoked, Kms, KmsError, KmsSettings
from cmek.lifecycle import Durations, KeyState, Lifecycle, TenantKeyState
from cmek.platform.clients import parse_networks
from cmek.platform.cluster import Cluster
from cmek.platform.config import ENV_VARS, ConfigError, Settings
from cmek.platform.control import ControlPlane, TokenInfo
from cmek.platform.key_events import HEADER as EVENT_HEADER
from cmek.platform.key_events import KeyEventGate, check_event
from cmek.platform.tenant_db import TenantDatabases
from cmek.platform.warehouse import (
    EgressPolicy,
    QueryLimits,
    QueryRunner,
    Warehouses,
    connection_view,
)
from cmek.platform.warehouse.egress import database_endpoints
from cmek.stores.backup import (
    BackupInfo,
    RestoreJournal,
    create_backup,
    list_backups,
    restore_backup,
)
from cmek.stores.objects import ObjectNotFound, ObjectStore, open_object_store
from cmek.stores.search import SearchIndex
from cmek.stores.tenant import OBJECT_KINDS, NotFound, StoreClosed, StoredObject, TenantStore

log = logging.getLogger("cmek.platform")
SESSION_TTL = 8 * 3600.0
HEALTH_TTL = 5.0  # seconds a store probe stands for /healthz
ROLES = ("admin", "analyst")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


class StoreIndex(SearchIndex):
    """A tenant's search index with the version of each object in it. Sealed at rest as
    one line of versions, then the index itself; checked against the store when loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, int] = {}

    def dump(self) -> bytes:
        return json.dumps(self.versions, sort_keys=True).encode() + b"\n" + self.to_bytes()

    @classmethod
    def load(cls, data: bytes) -> StoreIndex | None:
        """None for an index saved without versions: it is rebuilt."""
        head, newline, body = data.partition(b"\n")
        versions = json.loads(head) if newline else None
        if not isinstance(versions, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in versions.items()):
            return None
        index = cls.from_bytes(body)
        assert isinstance(index, StoreIndex)
        index.versions = versions
        return index


class KeyVerificationFailed(CmekError):
    code = "key_verification_failed"

    def __init__(self, findings: list[dict[str, Any]]) -> None:
        super().__init__("the key did not pass verification")
        self.findings = findings


class TenantKeyUnavailable(CmekError):
    """Every request of a tenant whose key is not usable: with the state and the reason."""

    code = "tenant_key_unavailable"

    def __init__(self, state: TenantKeyState) -> None:
        super().__init__(f"the tenant's key is unavailable ({state.state.value}: "
                         f"{state.reason})")
        self.key_state = state.state.value
        self.reason = state.reason


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
        self.lifecycle = Lifecycle(
            self.kms, self.engine, self.keyring, self.audit, clock,
            Durations(check_interval=settings.check_interval,
                      outage_grace=settings.outage_grace,
                      restore_window=settings.restore_window,
                      live_store_grace=settings.live_store_grace),
            TenantEnforcer(self))
        self.keyring.on_revoked = self.keyring.on_unavailable = self.lifecycle.report
        self.cluster = Cluster(settings.database_url, self.enforce_locally)
        self.lifecycle.on_change = lambda state: self.cluster.announce(state.tenant_id)
        self._stores: dict[str, TenantStore] = {}
        self._known_tenants: set[str] = set()
        self.workers = TenantWorkers(self.run_tenant_jobs)
        self._indexes: dict[str, StoreIndex] = {}
        self._stale_indexes: set[str] = set()
        self._index_locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()
        self._rewrap_locks: dict[str, threading.Lock] = {}
        self.key_events = KeyEventGate(self.engine, self.rows,
                                       check_interval=settings.event_check_interval,
                                       records_per_minute=settings.event_records_per_minute)
        self.restores = RestoreJournal(self.engine)
        self._unrestored: set[str] = set()  # a restore cut short, not yet finished
        self._recent_locks: dict[str, tuple[float, TenantKeyState]] = {}
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
        for store in list(self._stores.values()):
            store.close()
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
        report = verify_key(self.kms, key_arn, region=self.settings.kms_region, tenant=tenant_id,
                            provider_account=self.settings.provider_account)
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
            raise TenantKeyUnavailable(state)
        if tenant_id in self._unrestored:
            raise StoreClosed(f"the stores of tenant {tenant_id} are being restored")

    def _known(self, tenant_id: str) -> None:
        """Tenant ids are never released, so a known one need not be looked up again."""
        if tenant_id in self._known_tenants:
            return
        if self.control.tenant(tenant_id) is None:
            raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
        self._known_tenants.add(tenant_id)

    def store(self, tenant_id: str) -> TenantStore:
        with self._lock:
            store = self._stores.get(tenant_id)
            if store is None:
                if self.control.tenant(tenant_id) is None:
                    raise UnknownTenant(f"unknown tenant {tenant_id[:64]!r}")
                store = TenantStore(tenant_id, self.keyring, self.databases.engine(tenant_id),
                                    self.clock)
                self._stores[tenant_id] = store
            return store

    # --- rewrap ---------------------------------------------------------------------------
    def rewrap(self, tenant_id: str, new_key_arn: str | None) -> dict[str, Any]:
        """Re-wrap the tenant's data keys under ``new_key_arn``, verified first as at
        provisioning, or under its own key's newest material after a rotation. The data is
        untouched. Progress is kept in the key table, so a rewrap cut short by a crash is
        finished by ``recover`` (at start and by the job runner)."""
        self.guard(tenant_id)
        if new_key_arn is not None and new_key_arn != self.keyring.key_arn(tenant_id):
            report = verify_key(self.kms, new_key_arn, region=self.settings.kms_region,
                                tenant=tenant_id,
                                provider_account=self.settings.provider_account)
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

    # --- authentication -------------------------------------------------------------------
    def login(self, tenant_id: str, email: str, password: str,
              client: str | None = None) -> tuple[str, float | None]:
        """``client`` is the caller's address (cmek.platform.clients): failures are
        counted per account and client, which backs off (login_backoff, then doubling), and per
        client across accounts, which is refused for a while. Nobody can lock an account
        out for anyone else: a guesser slows down only its own attempts."""
        self.guard(tenant_id)
        store = self.store(tenant_id)
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
        self.store(caller.tenant_id).log("api_token_created", caller.user_id, {})
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
            self.guard(tenant_id)  # 423 with the state and reason
        return token, expires

    def authenticate(self, token: str, tenant_id: str) -> Caller:
        self.guard(tenant_id)
        info: TokenInfo | None = self.control.resolve(token, self.clock.now())
        if info is None:
            self.guard(tenant_id)  # revoked by a lock that landed meanwhile: say so (423)
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

    def verify_tenant_key(self, tenant_id: str, cause: str) -> dict[str, Any]:
        """Verify the tenant's key as at provisioning, and record the result (with the key's
        properties as DescribeKey shows them) in the audit trail as ``key_verified``."""
        key_arn = self.tenant_view(tenant_id)["kms_key_arn"]
        report = verify_key(self.kms, key_arn, region=self.settings.kms_region,
                            tenant=tenant_id, provider_account=self.settings.provider_account)
        return self.audit.append(tenant_id, "key_verified", _verification(report, cause)).data

    def logout(self, caller: Caller) -> None:
        self.control.revoke(caller.token, self.clock.now())
        self.store(caller.tenant_id).log("logout", caller.user_id, {})

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
            with self._index_lock(caller.tenant_id):
                index = self.search_index(caller.tenant_id)
                doc = f"{kind}/{object_id}"
                if index.versions.get(doc, 0) < stored.version:  # never over a later version
                    index.upsert(doc, kind, object_title(body, object_id), _texts(body))
                    index.versions[doc] = stored.version
                    self._save_index(caller.tenant_id, index)
        return stored

    def delete_object(self, caller: Caller, kind: str, object_id: str) -> None:
        store = self.store(caller.tenant_id)
        store.delete_object(kind, object_id)
        with self._after_commit(caller.tenant_id, "deleting"):
            store.log("object_deleted", caller.user_id, {"kind": kind, "object_id": object_id})
            with self._index_lock(caller.tenant_id):
                index = self.search_index(caller.tenant_id)
                known = index.versions.pop(f"{kind}/{object_id}", None) is not None
                if index.remove(f"{kind}/{object_id}") or known:
                    self._save_index(caller.tenant_id, index)

    @contextlib.contextmanager
    def _after_commit(self, tenant_id: str, what: str) -> Iterator[None]:
        """The steps after a committed write: a failure there is logged and left to the
        indexing job (the index is marked for a rebuild), never answered as an error."""
        try:
            yield
        except Exception as e:
            self._index_stale(tenant_id)
            code = e.code if isinstance(e, CmekError) else type(e).__name__
            log.warning("after %s an object of %s, updating its index failed (%s); the "
                        "indexing job rebuilds it", what, tenant_id, code)

    def _index_stale(self, tenant_id: str) -> None:
        with self._lock:  # the indexing job rebuilds it from the metadata
            self._stale_indexes.add(tenant_id)

    def _index_lock(self, tenant_id: str) -> threading.RLock:
        """One writer of a tenant's index at a time (loading, updating and saving, or
        rebuilding it): otherwise an update can land in a copy that another load replaces,
        or an older snapshot can be saved over a newer one, and be gone after a lock."""
        with self._lock:
            return self._index_locks.setdefault(tenant_id, threading.RLock())

    def search_index(self, tenant_id: str) -> StoreIndex:
        """The tenant's index: in memory while the key is usable, at rest only sealed."""
        with self._lock:
            index = self._indexes.get(tenant_id)
        if index is not None:
            return index
        with self._index_lock(tenant_id):
            with self._lock:
                index = self._indexes.get(tenant_id)
            if index is not None:  # loaded meanwhile by another request
                return index
            try:
                sealed = self.objects.get(_index_key(tenant_id))
            except ObjectNotFound:
                loaded = None
            else:
                loaded = StoreIndex.load(
                    self.keyring.open(tenant_id, "search_index", "index/search", sealed))
            index = (self.rebuild_index(tenant_id) if loaded is None
                     else self._catch_up(tenant_id, loaded))
            with self._lock:
                self._indexes[tenant_id] = index
        return index

    def _catch_up(self, tenant_id: str, index: StoreIndex) -> StoreIndex:
        """Bring a loaded index level with the store, comparing versions only: a write
        whose index update a crash (or a failed save) kept out is indexed now."""
        store = self.store(tenant_id)
        current = store.object_versions()
        changed = [d for d in index.versions if d not in current]
        for doc in changed:
            index.remove(doc)
            del index.versions[doc]
        for doc, version in current.items():
            if index.versions.get(doc) != version:
                kind, object_id = doc.split("/", 1)
                try:
                    obj = store.get_object(kind, object_id)
                except NotFound:
                    continue  # deleted meanwhile
                index.upsert(doc, kind, object_title(obj.body, object_id), _texts(obj.body))
                index.versions[doc] = obj.version
                changed.append(doc)
        if changed:
            self._keep_index(tenant_id, index)
        return index

    def rebuild_index(self, tenant_id: str) -> StoreIndex:
        index = StoreIndex()
        for obj in self.store(tenant_id).list_objects():
            doc = f"{obj.kind}/{obj.object_id}"
            index.upsert(doc, obj.kind, object_title(obj.body, obj.object_id), _texts(obj.body))
            index.versions[doc] = obj.version
        self._keep_index(tenant_id, index)
        return index

    def _keep_index(self, tenant_id: str, index: StoreIndex) -> None:
        """Save an index just built or caught up; if the object store refuses, it serves
        from memory and the indexing job saves it later."""
        try:
            self._save_index(tenant_id, index)
        except CmekError as e:
            self._index_stale(tenant_id)
            log.warning("saving the search index of %s failed (%s); the indexing job "
                        "retries", tenant_id, e.code)

    def _save_index(self, tenant_id: str, index: StoreIndex) -> None:
        self.objects.put(_index_key(tenant_id), self.keyring.seal(
            tenant_id, "search_index", "index/search", index.dump()))

    def search(self, caller: Caller, query: str, limit: int) -> list[dict[str, Any]]:
        hits = self.search_index(caller.tenant_id).search(query, limit=limit)
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


    # --- schedules and jobs ----------------------------------------------------------------
    def create_schedule(self, caller: Caller, name: str, connection: str, sql: str,
                        every_seconds: float) -> dict[str, Any]:
        if every_seconds < self.settings.schedule_min_period:
            raise InvalidInput(f"every_seconds must be at least "
                               f"{self.settings.schedule_min_period:g}")
        store = self.store(caller.tenant_id)
        store.get_connection(connection)  # NotFound before anything is stored
        schedule = store.create_schedule(name, connection, sql, every_seconds)
        store.log("schedule_created", caller.user_id, {"schedule_id": schedule["schedule_id"]})
        return schedule

    def run_due_indexing(self) -> int:
        """The indexing job: rebuild the indexes marked stale (after a restore, or when an
        update could not be saved), from the tenant's metadata."""
        with self._lock:
            stale, self._stale_indexes = self._stale_indexes, set()
        done = 0
        for tenant_id in sorted(stale):
            try:
                with self._index_lock(tenant_id):  # no update slips in between
                    index = self.rebuild_index(tenant_id)
                    with self._lock:
                        self._indexes[tenant_id] = index
            except CmekError:
                with self._lock:
                    self._stale_indexes.add(tenant_id)
                continue
            done += 1
        return done

    def run_due_jobs(self, *, in_workers: bool = False) -> int:
        """Run every due schedule, backup and indexing job once. A locked tenant's due
        schedules are recorded as refused; with ``in_workers`` each serving tenant's
        schedules run on that tenant's own worker thread instead of here."""
        resumed = self.resume_interrupted()
        count = self.run_due_backups() + self.run_due_indexing() + sum(resumed.values())
        for tenant_id in self.tenant_ids():
            if not self.lifecycle.state(tenant_id).state.serving:
                self.workers.stop(tenant_id)
                count += self.control.refuse_due_runs(tenant_id, self.clock.now(),
                                                      "tenant_key_unavailable")
            elif in_workers:
                self.workers.kick(tenant_id)
            else:
                count += self.run_tenant_jobs(tenant_id)
        return count

    def run_tenant_jobs(self, tenant_id: str) -> int:
        """The due schedules of one tenant, one run at a time per tenant."""
        with self.workers.lock(tenant_id):
            store = self.store(tenant_id)
            try:
                store.skip_refused_slots(self.control.next_runs(tenant_id))
                due = store.due_schedule_ids(self.clock.now())
                self.control.remember_schedules(tenant_id, store.schedule_slots())
            except CmekError:
                return 0
            for schedule_id in due:
                self._run_schedule(store, schedule_id)
            return len(due)

    def _run_schedule(self, store: TenantStore, schedule_id: str) -> None:
        started = self.clock.now()
        try:
            spec = store.get_schedule(schedule_id)
            conn = store.get_connection(spec["connection"])
            result = self.warehouses.query(store.tenant, conn["type"], conn["config"],
                                           conn["credentials"], spec["sql"])
            key = f"tenants/{store.tenant}/results/run-{schedule_id}-{int(started)}"
            self.objects.put(key, self.keyring.seal(store.tenant, "warehouse_data",
                                                    key.split("/", 2)[2],
                                                    json.dumps(result.to_json()).encode()))
            store.record_run(schedule_id, started, "succeeded", None, key,
                             {"rows": len(result.rows)})
        except KmsError as e:
            code = "tenant_key_unavailable" if isinstance(e, KeyRevoked) else e.code
            store.record_run(schedule_id, started, "failed", code, None, None)
        except CmekError as e:
            store.record_run(schedule_id, started, "failed", e.code, None, None)


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

    # --- backups --------------------------------------------------------------------------
    def backup(self, tenant_id: str, actor: str) -> BackupInfo:
        self.guard(tenant_id)  # never of a locked tenant, even when a restart reopened it
        store = self.store(tenant_id)
        info = create_backup(store, self.objects)
        crashpoints.reached("backup.published")
        store.log("backup_created", actor, {"backup_id": info.backup_id})
        return info

    def backups(self, tenant_id: str) -> list[BackupInfo]:
        self.store(tenant_id)  # UnknownTenant first
        return list_backups(tenant_id, self.objects)

    def restore(self, tenant_id: str, backup_id: str,
                actor: str = "operator") -> dict[str, Any]:
        store = self.store(tenant_id)
        report = restore_backup(store, self.objects, backup_id, self.restores)
        with self._lock:
            self._indexes.pop(tenant_id, None)
            self._stale_indexes.add(tenant_id)  # the indexing job rebuilds it
            self._unrestored.discard(tenant_id)
        store.log("backup_restored", actor, {"backup_id": backup_id})
        return {"backup_id": backup_id, **report}

    def run_due_backups(self) -> int:
        interval = self.settings.backup_interval
        if interval <= 0:
            return 0
        made = 0
        for tenant_id in self.tenant_ids():
            if not self.lifecycle.state(tenant_id).state.serving:
                continue  # nothing to open, and one tenant's failure must not stop the rest
            try:
                latest = max((b.created_at for b in list_backups(tenant_id, self.objects)),
                             default=0.0)
                if self.clock.now() - latest >= interval:
                    self.backup(tenant_id, "scheduler")
                    made += 1
            except CmekError:
                continue
        return made


    # --- recovery -------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """At start, before serving: sweep what writes that a crash cut short left behind
        (staging files), and finish the restores and rewraps it interrupted."""
        return {"staging_files_swept": self.objects.sweep(), **self.resume_interrupted()}

    def resume_interrupted(self) -> dict[str, int]:
        """Finish the restores and rewraps that a crash cut short, here or in another
        process; at start and on every run of the job runner. Until its restore is
        finished, a tenant's requests are refused (423 ``tenant_store_closed``). A tenant
        whose key is not usable waits: its own restore brings it back."""
        log = logging.getLogger("cmek.platform")
        restores = rewraps = 0
        for tenant_id, backup_id in self.restores.abandoned():
            state = self.lifecycle.state(tenant_id).state
            if state is KeyState.DESTROYED:
                self.restores.forget(tenant_id)
            elif state.serving:
                with self._lock:
                    self._unrestored.add(tenant_id)
                try:
                    self.restore(tenant_id, backup_id, actor="recovery")
                    restores += 1
                except CmekError as e:
                    log.warning("finishing a restore of %s failed (%s); retrying", tenant_id,
                                e.code)
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

    # --- key events -----------------------------------------------------------------------
    def issue_event_credential(self, tenant_id: str) -> dict[str, str]:
        """A new event secret for the tenant's endpoint (the old one stops working); shown
        once, for the customer's EventBridge API destination."""
        self.tenant_view(tenant_id)  # UnknownTenant first
        secret = self.key_events.issue(tenant_id, self.clock.now())
        self.audit.append(tenant_id, "event_credential_issued", {})
        return {"url_path": f"/v1/tenants/{tenant_id}/key-events", "header": EVENT_HEADER,
                "secret": secret}

    def key_event(self, tenant_id: str, secret: str | None,
                  event: dict[str, Any]) -> dict[str, Any]:
        """An EventBridge KMS event for this tenant: authentic (its own secret), about its
        own key, within its budget; then at most one key check per interval. Duplicates
        and reordering are harmless: each is a prompt to look at the key."""
        row = self.control.tenant(tenant_id)
        if row is None or not self.key_events.authentic(tenant_id, secret):
            raise Unauthorized(f"missing or wrong {EVENT_HEADER}")
        recorded = check_event(event, row["key_arn"])
        now = self.clock.now()
        if self.key_events.admit(tenant_id, now):
            self.audit.append(tenant_id, "key_event", recorded)
        if not self.key_events.claim(tenant_id, now):
            return {"tenant_id": tenant_id, "check": "coalesced"}
        state = self._event_check(tenant_id)
        return {"tenant_id": tenant_id, "check": "done", "state": state.state.value}

    def run_owed_event_checks(self) -> int:
        """The checks that coalesced (or failed) events left owed, once their interval
        has passed."""
        done = 0
        now = self.clock.now()
        for tenant_id in self.key_events.owed(now):
            if self.key_events.claim(tenant_id, now):
                try:
                    self._event_check(tenant_id)
                except CmekError as e:
                    log.warning("the owed key check of %s failed (%s); owed again", tenant_id,
                                e.code)
                done += 1
        return done

    def _event_check(self, tenant_id: str) -> TenantKeyState:
        """The check an event claimed; if it fails, it stays owed, so the key is looked at
        again whether or not the sender retries."""
        try:
            return self.lifecycle.check(tenant_id, cause="event")
        except BaseException:
            self.key_events.owe(tenant_id)
            raise

    def enforce_locally(self, tenant_id: str) -> None:
        """Another process changed the tenant's key state: act on it in this one."""
        state = self.lifecycle.state(tenant_id)
        if not state.state.serving:
            self.note_lock(tenant_id, state)
            self.keyring.purge(tenant_id, reason=f"announced:{state.state.value}")
            self.workers.stop(tenant_id)
            with self._lock:
                self._indexes.pop(tenant_id, None)
                store = self._stores.get(tenant_id)
            if store is not None:
                store.close()
        else:
            with self._lock:
                store = self._stores.get(tenant_id)
            if store is not None:
                store.reopen()

    def note_lock(self, tenant_id: str, state: TenantKeyState) -> None:
        """Remember when this process began to lock the tenant, and why."""
        with self._lock:
            self._recent_locks[tenant_id] = (time.monotonic(), state)

    def lock_met(self, tenant_id: str, since: float) -> TenantKeyState | None:
        """Why a request of the tenant that began at ``since`` (monotonic) was cut short,
        if a lock did it: the state now if the key is still away, else the state of a lock
        that began while the request ran (it may be over by the time the request answers).
        None if no lock touched it. Reads a state; never writes one."""
        current = self.lifecycle.states.get(tenant_id)
        if current is not None and not current.state.serving:
            return current
        with self._lock:
            recent = self._recent_locks.get(tenant_id)
        return recent[1] if recent is not None and recent[0] >= since else None

    def run_monitor(self) -> int:
        """Poll the tenants whose check is due (spread with jitter, within the budget);
        only the leader process does."""
        if not self.cluster.is_leader():
            return 0
        owed = self.run_owed_event_checks()
        due = self.lifecycle.due(self.tenant_ids())
        for tenant_id in due:
            try:
                self.lifecycle.check(tenant_id, cause="poll")
            except CmekError:
                continue
        return owed + len(due)


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


class TenantWorkers:
    """One worker thread per tenant for its jobs: a slow warehouse of one tenant never
    delays another's reports, and a locked tenant's worker is stopped."""

    def __init__(self, run: Callable[[str], int]) -> None:
        self._run = run
        self._events: dict[str, threading.Event] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stopped: set[str] = set()
        self._guard = threading.Lock()

    def lock(self, tenant_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tenant_id, threading.Lock())

    def kick(self, tenant_id: str) -> None:
        with self._guard:
            self._stopped.discard(tenant_id)
            event = self._events.setdefault(tenant_id, threading.Event())
            thread = self._threads.get(tenant_id)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._loop, args=(tenant_id, event),
                                          name=f"cmek-jobs-{tenant_id}", daemon=True)
                self._threads[tenant_id] = thread
                thread.start()
        event.set()

    def stop(self, tenant_id: str) -> None:
        with self._guard:
            self._stopped.add(tenant_id)
            event = self._events.get(tenant_id)
        if event is not None:
            event.set()

    def stop_all(self) -> None:
        with self._guard:
            tenants = list(self._events)
        for tenant_id in tenants:
            self.stop(tenant_id)

    def _loop(self, tenant_id: str, event: threading.Event) -> None:
        while True:
            event.wait()
            event.clear()
            if tenant_id in self._stopped:
                return
            try:
                self._run(tenant_id)
            except Exception:  # one bad run must not end the tenant's worker
                logging.getLogger("cmek.platform").exception("jobs of a tenant failed")


class TenantEnforcer:
    """What locking, restoring and destroying do to a tenant on this platform."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def lock(self, tenant_id: str, state: TenantKeyState) -> None:
        """In order of urgency; the steps taken are recorded in the audit trail."""
        p = self.platform
        p.note_lock(tenant_id, state)
        purged = p.keyring.purge(tenant_id, reason=f"locked:{state.reason}")
        revoked = p.control.revoke_tenant(tenant_id, p.clock.now())
        p.workers.stop(tenant_id)
        with p._lock:
            p._indexes.pop(tenant_id, None)
            store = p._stores.get(tenant_id)
        if store is not None:
            store.close()
        p.databases.close(tenant_id)
        p.audit.append(tenant_id, "tenant_locked", {
            "state": state.state.value, "reason": state.reason,
            "steps": ["data_keys_purged", "requests_refused", "tokens_revoked",
                      "worker_stopped", "stores_closed"],
            "data_keys_purged": purged, "tokens_revoked": revoked})

    def restart(self, tenant_id: str) -> None:
        p = self.platform
        p.databases.open(tenant_id)
        with p._lock:
            store = p._stores.get(tenant_id)
        if store is not None:
            store.reopen()

    def restore_from_backup(self, tenant_id: str) -> dict[str, Any]:
        self.restart(tenant_id)
        p = self.platform
        backups = list_backups(tenant_id, p.objects)
        if not backups:
            return {"backup_id": None, "note": "no backup: live stores kept as they were"}
        latest = backups[-1]
        report = p.restore(tenant_id, latest.backup_id)
        return {"backup_id": latest.backup_id, "backup_created_at": latest.created_at,
                "changes_lost_after": latest.created_at, "rows": report["rows"]}

    def destroy(self, tenant_id: str) -> dict[str, Any]:
        """Crypto-shredding: every wrapped data key and every backup of the tenant goes;
        its id stays reserved in the control plane."""
        p = self.platform
        p.keyring.purge(tenant_id, reason="destroyed")
        with p.engine.begin() as conn:
            keys = conn.execute(data_keys.delete().where(
                data_keys.c.tenant_id == tenant_id)).rowcount
        crashpoints.reached("shred.data_keys_deleted")
        prefix = f"tenants/{tenant_id}/"
        objects = p.objects.sweep(prefix) + p.objects.delete_prefix(prefix)
        crashpoints.reached("shred.objects_deleted")
        warehouse_files = p.warehouses.remove(tenant_id)
        with p._lock:
            store = p._stores.pop(tenant_id, None)
        if store is not None:
            store.close()
        database_dropped = p.databases.drop(tenant_id)
        p.restores.forget(tenant_id)
        p.control.revoke_tenant(tenant_id, p.clock.now())
        with p.engine.connect() as conn:  # what the attestation attests: nothing is left
            keys_left = conn.execute(sa.select(sa.func.count()).select_from(data_keys).where(
                data_keys.c.tenant_id == tenant_id)).scalar_one()
        return {"data_keys_deleted": int(keys), "objects_deleted": objects,
                "warehouse_files_deleted": warehouse_files,
                "tenant_database_dropped": database_dropped,
                "data_keys_remaining": int(keys_left),
                "objects_remaining": len(p.objects.list(prefix))}


def integrity_key(settings: Settings) -> bytes:
    """The key that tags control-plane rows: the setting, or for a single process on
    SQLite a random one made once in data_dir (0600), never in the database."""
    if settings.integrity_key is not None:
        return settings.integrity_key.get_secret_value().encode()
    path = settings.data_dir / "integrity.key"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def _verification(report: VerifyReport, cause: str) -> dict[str, Any]:
    described = report.description
    key = None if described is None else {
        "key_state": described.key_state, "key_spec": described.key_spec,
        "key_usage": described.key_usage, "origin": described.origin,
        "multi_region": described.multi_region, "account": described.account,
        "deletion_date": described.deletion_date}
    return {"ok": report.ok, "cause": cause, "key": key,
            "checks": [c.to_json() for c in report.checks]}


def _subject(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _result_id(connection: str, sql: str) -> str:
    return hashlib.sha256(f"{connection}\n{sql}".encode()).hexdigest()[:32]


def _tenant_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"tenant_id": row["tenant_id"], "kms_key_arn": row["key_arn"],
            "created_at": row["created_at"]}


def require_admin(caller: Caller) -> None:
    if caller.role != "admin":
        raise Forbidden("this needs the admin role")


def user_view(user: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": user["user_id"], "email": user["email"], "role": user["role"],
            "created_at": user["created_at"]}


def _index_key(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/index/search"


def object_title(body: dict[str, Any], fallback: str) -> str:
    title = body.get("title")
    return title if isinstance(title, str) and title else fallback


def _texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    description = body.get("description")
    if isinstance(description, str):
        texts.append(description)
    for column in body.get("columns", []) if isinstance(body.get("columns"), list) else []:
        if isinstance(column, str):
            texts.append(column)
        elif isinstance(column, dict) and isinstance(column.get("name"), str):
            texts.append(column["name"])
    return texts


_DUMMY_HASH = PasswordHasher().hash("not a real password: equalizes login timing")

__all__ = ["OBJECT_KINDS", "Caller", "Platform"]
