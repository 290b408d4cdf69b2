"""The tenant key hierarchy: a data key per (tenant, category, epoch), wrapped by the
tenant's customer-managed key, unwrapped only into a bounded in-memory cache.

KMS is called once per tenant, category and epoch, and once per cache lifetime, never
per record. ``purge(tenant)`` wipes every cached key of a tenant at once; with the
cache empty and the CMEK revoked, nothing of the tenant can be opened.

Cache lifetime (``ttl``): a cached key is used until ``ttl`` after it was last
unwrapped. In the last ``refresh_ahead`` seconds of that, the first caller re-unwraps
it (one caller, the others keep using the cached key: no stampede); once expired,
callers wait for a single unwrap. A refresh is also the moment a revoked key is
noticed on the cached path, so ``ttl`` bounds how long revocation can go unseen
without the lifecycle engine.

KMS out (throttling, errors, timeouts): the lifecycle engine grants the tenant an outage
grace, during which expired cached keys serve on (from the very request whose failure
began it). A key whose unwrap just failed is not asked for again before
``outage_backoff`` has passed, so a degraded tenant's requests neither each wait out
KMS's timeouts nor add to the load on a KMS that is throttling.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import sqlalchemy as sa

from cmek import crashpoints
from cmek.audit import AuditTrail
from cmek.clock import Clock
from cmek.crypto import (
    MAX_SEALS_PER_KEY,
    Binding,
    DataKey,
    envelope_epoch,
    open_record,
    open_stream,
    seal,
    seal_stream,
    stream_epoch,
)
from cmek.crypto.rows import RowAuthenticator
from cmek.crypto.stream import STREAM_HEADER_LEN
from cmek.errors import (
    CmekError,
    DecryptionError,
    RowNotAuthentic,
    TenantExists,
    UnknownTenant,
)
from cmek.ids import validate_tenant_id
from cmek.keyring.categories import category_name
from cmek.keyring.table import DataKeyRow, data_keys, metadata, row_to_key, tenants
from cmek.kms import Ciphertext, KeyArn, KeyRevoked, Kms, KmsError, KmsUnavailable

T = TypeVar("T")
log = logging.getLogger("cmek.keyring")
TENANT_ROWS = "cmek_tenants"
_KEY_COLUMNS = (tenants.c.key_arn, tenants.c.rewrap_to, tenants.c.rewrap_generation,
                tenants.c.tag)


def encryption_context(tenant: str, category: str, epoch: int) -> dict[str, str]:
    """What every KMS call says about itself in the customer's usage log."""
    return {"cmek:tenant": tenant, "cmek:category": category, "cmek:epoch": str(epoch)}


class RewrapInProgress(CmekError):
    code = "rewrap_in_progress"


@dataclass
class _Cached:
    key: DataKey
    expires_at: float
    # Seals this process may still make under the key: next(seals) below seal_limit. A
    # count that fails the test is simply lost, so the budget is never exceeded.
    seals: Iterator[int] = field(default_factory=itertools.count)
    seal_limit: int = 0
    refreshing: bool = False
    retry_at: float = 0.0  # set when KMS failed to unwrap it: no new try before this
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class TenantKey:
    """A tenant's key as its authenticated row has it: the key, and a rewrap's target."""

    key_arn: str
    rewrap_to: str | None
    generation: int

    @property
    def wrapping_keys(self) -> tuple[str, ...]:
        """The keys the tenant's data keys may be wrapped under now."""
        return (self.key_arn,) if self.rewrap_to is None else (self.key_arn, self.rewrap_to)


@dataclass(frozen=True)
class RewrapReport:
    tenant: str
    key_arn: str
    rewrapped: int
    total: int
    resumed: bool


class Keyring:
    def __init__(
        self, kms: Kms, engine: sa.Engine, clock: Clock, audit: AuditTrail, *,
        rows: RowAuthenticator, ttl: float = 300.0, refresh_ahead: float = 30.0,
        seal_budget: int = MAX_SEALS_PER_KEY, reserve_chunk: int = 1 << 20,
        on_revoked: Callable[[str, KeyRevoked], None] | None = None,
        on_unavailable: Callable[[str, KmsError], None] | None = None,
        rewrap_with_reencrypt: bool = False, outage_backoff: float = 5.0,
    ) -> None:
        if ttl <= 0 or not 0 <= refresh_ahead < ttl:
            raise ValueError("need ttl > 0 and 0 <= refresh_ahead < ttl")
        if outage_backoff < 0:
            raise ValueError("need outage_backoff >= 0")
        if not 1 <= seal_budget <= MAX_SEALS_PER_KEY or reserve_chunk < 1:
            raise ValueError("seal_budget must be 1..MAX_SEALS_PER_KEY, reserve_chunk >= 1")
        self.kms = kms
        self.engine = engine
        self.clock = clock
        self.audit = audit
        self.rows = rows
        self.ttl = ttl
        self.refresh_ahead = refresh_ahead
        self.seal_budget = seal_budget
        self.reserve_chunk = min(reserve_chunk, seal_budget)
        self.on_revoked = on_revoked
        self.on_unavailable = on_unavailable
        self.outage_backoff = outage_backoff
        # During a KMS outage the lifecycle engine may let expired cached keys serve on,
        # up to a deadline per tenant (its outage grace); never past it.
        self._grace: dict[str, float] = {}
        self.rewrap_with_reencrypt = rewrap_with_reencrypt
        self._cache: dict[tuple[str, str, int], _Cached] = {}
        self._current: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, str, int], threading.Lock] = {}
        self.kms_calls: Counter[tuple[str, str, str, int]] = Counter()  # (op, tenant, cat, epoch)
        metadata.create_all(engine)

    # --- tenants --------------------------------------------------------------------
    def register_tenant(self, tenant: str, key_arn: str) -> None:
        validate_tenant_id(tenant)
        KeyArn.parse(key_arn)
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(tenants.c.tenant_id).where(tenants.c.tenant_id == tenant)
            ).first()
            if exists is not None:
                raise TenantExists(f"tenant {tenant} already exists")
            conn.execute(tenants.insert().values(
                tenant_id=tenant, key_arn=key_arn, created_at=self.clock.now(),
                rewrap_generation=0, tag=self._tag(tenant, TenantKey(key_arn, None, 0)),
            ))
        self.audit.append(tenant, "tenant_registered", {"key_arn": key_arn})

    def _tag(self, tenant: str, key: TenantKey) -> bytes:
        return self.rows.tag(TENANT_ROWS, tenant, key.key_arn, key.rewrap_to, key.generation)

    def _authentic(self, tenant: str, row: Any) -> TenantKey | None:
        """The key a tenant row (the columns of _KEY_COLUMNS) holds, if the platform
        wrote the row."""
        key = TenantKey(str(row.key_arn), row.rewrap_to, int(row.rewrap_generation))
        valid = self.rows.valid(TENANT_ROWS, row.tag, tenant, key.key_arn, key.rewrap_to,
                                key.generation)
        return key if valid else None

    def _read_tenant(self, conn: sa.Connection, tenant: str, lock: str = "") -> TenantKey:
        """The tenant's key row, refused unless the platform wrote it. ``lock``: "update"
        or "share", held until the caller's transaction ends."""
        query = sa.select(*_KEY_COLUMNS).where(tenants.c.tenant_id == tenant)
        if lock:
            query = query.with_for_update(read=lock == "share")
        row = conn.execute(query).first()
        if row is None:
            raise UnknownTenant(f"unknown tenant {tenant[:64]!r}")
        key = self._authentic(tenant, row)
        if key is None:
            raise RowNotAuthentic("tenant key")
        return key

    def _write_tenant(self, conn: sa.Connection, tenant: str, key: TenantKey) -> None:
        conn.execute(tenants.update().where(tenants.c.tenant_id == tenant).values(
            key_arn=key.key_arn, rewrap_to=key.rewrap_to, rewrap_generation=key.generation,
            tag=self._tag(tenant, key)))

    def tenant_key(self, tenant: str) -> TenantKey:
        """Read each time, never cached: a rewrap in another process moves it."""
        with self.engine.connect() as conn:
            return self._read_tenant(conn, tenant)

    def key_arn(self, tenant: str) -> str:
        return self.tenant_key(tenant).key_arn

    def tenants(self) -> list[str]:
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(
                sa.select(tenants.c.tenant_id).order_by(tenants.c.tenant_id))]

    # --- records and streams ----------------------------------------------------------
    def seal(self, tenant: str, category: str, object_id: str, plaintext: bytes) -> bytes:
        cat = category_name(category)
        key = self._key_for_seal(tenant, cat)
        return seal(key, Binding(tenant, cat, object_id), plaintext)

    def open(self, tenant: str, category: str, object_id: str, envelope: bytes) -> bytes:
        cat = category_name(category)
        binding = Binding(tenant, cat, object_id)
        key = self._key_for_open(tenant, cat, envelope_epoch(envelope))
        return open_record(key, binding, envelope)

    def seal_stream(
        self, tenant: str, category: str, object_id: str, src: IO[bytes], dst: IO[bytes],
        chunk_size: int | None = None,
    ) -> int:
        cat = category_name(category)
        key = self._key_for_seal(tenant, cat)
        binding = Binding(tenant, cat, object_id)
        if chunk_size is None:
            return seal_stream(key, binding, src, dst)
        return seal_stream(key, binding, src, dst, chunk_size)

    def open_stream(
        self, tenant: str, category: str, object_id: str, src: IO[bytes], dst: IO[bytes]
    ) -> int:
        """Writes authenticated chunks to ``dst``; on error the caller discards ``dst``."""
        cat = category_name(category)
        header = src.read(STREAM_HEADER_LEN)
        key = self._key_for_open(tenant, cat, stream_epoch(header))
        return open_stream(key, Binding(tenant, cat, object_id), _Prefixed(header, src),
                           dst)

    # --- cache management -------------------------------------------------------------
    def purge(self, tenant: str, reason: str = "requested") -> int:
        """Drop and wipe every cached data key of the tenant; returns how many."""
        with self._lock:
            self._grace.pop(tenant, None)
            doomed = [k for k in self._cache if k[0] == tenant]
            entries = [self._cache.pop(k) for k in doomed]
            for k in [k for k in self._current if k[0] == tenant]:
                del self._current[k]
        for entry in entries:
            entry.key.wipe()
        self.audit.append(tenant, "keys_purged", {
            "count": len(entries), "reason": reason,
            "epochs": sorted(f"{c}:{e}" for _, c, e in doomed),
        })
        return len(entries)

    def set_grace(self, tenant: str, until: float | None) -> None:
        """Let the tenant's expired cached keys serve until ``until`` while KMS is out."""
        with self._lock:
            if until is None:
                self._grace.pop(tenant, None)
            else:
                self._grace[tenant] = until

    def cached(self, tenant: str) -> list[tuple[str, int]]:
        with self._lock:
            return sorted((c, e) for t, c, e in self._cache if t == tenant)

    def rotate_epoch(self, tenant: str, category: str) -> int:
        """Start a new data key for future seals; older epochs stay readable."""
        cat = category_name(category)
        with self._lock:
            self._current.pop((tenant, cat), None)
        return self._new_epoch(tenant, cat)

    # --- rewrap -----------------------------------------------------------------------
    def rewrap(
        self, tenant: str, new_key_arn: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RewrapReport:
        """Re-wrap every stored data key of the tenant under ``new_key_arn`` (or the
        same key after a rotation, so the newest key material wraps it). The data is
        untouched. Resumable: an interrupted rewrap continues where it stopped."""
        current = self.key_arn(tenant)
        if new_key_arn is not None:
            KeyArn.parse(new_key_arn)
        with self.engine.begin() as conn:
            row = self._read_tenant(conn, tenant, lock="update")
            target, generation = row.rewrap_to, row.generation
            resumed = target is not None
            if target is None:
                target, generation = new_key_arn or current, generation + 1
                self._write_tenant(conn, tenant, TenantKey(row.key_arn, target, generation))
            elif new_key_arn is not None and new_key_arn != target:
                raise RewrapInProgress(
                    f"a rewrap of {tenant} to {target} is in progress; finish it first"
                )
            pending = self._pending(conn, tenant, generation)
            total = conn.execute(sa.select(sa.func.count()).select_from(data_keys)
                                 .where(data_keys.c.tenant_id == tenant)).scalar_one()
        self.audit.append(tenant, "rewrap_started" if not resumed else "rewrap_resumed",
                          {"key_arn": target, "pending": len(pending), "total": total})
        done, rewrapped = total - len(pending), 0
        while True:
            for dk in pending:
                out = self._rewrap_one(tenant, dk, target)
                with self.engine.begin() as conn:
                    conn.execute(data_keys.update().where(
                        data_keys.c.tenant_id == tenant, data_keys.c.category == dk.category,
                        data_keys.c.epoch == dk.epoch,
                    ).values(wrapped=out.blob, key_arn=target, wrap_generation=generation))
                crashpoints.reached("rewrap.key_rewrapped")
                done, rewrapped = done + 1, rewrapped + 1
                if progress is not None:
                    progress(done, total)
            with self.engine.begin() as conn:
                # Finish only with none pending: a data key made while this ran was
                # wrapped under the old key (``_new_epoch`` locks the row against this).
                self._read_tenant(conn, tenant, lock="update")
                pending = self._pending(conn, tenant, generation)
                total = conn.execute(sa.select(sa.func.count()).select_from(data_keys)
                                     .where(data_keys.c.tenant_id == tenant)).scalar_one()
                if not pending:
                    self._write_tenant(conn, tenant, TenantKey(target, None, generation))
                    break
        self.audit.append(tenant, "rewrap_finished",
                          {"key_arn": target, "rewrapped": rewrapped, "total": total})
        return RewrapReport(tenant, target, rewrapped, total, resumed)

    @staticmethod
    def _pending(conn: sa.Connection, tenant: str, generation: int) -> list[DataKeyRow]:
        return [row_to_key(r) for r in conn.execute(
            sa.select(data_keys).where(data_keys.c.tenant_id == tenant,
                                       data_keys.c.wrap_generation < generation)
            .order_by(data_keys.c.category, data_keys.c.epoch))]

    def _authentic_rows(self) -> dict[str, TenantKey]:
        """Every tenant's key row that the platform wrote; others are left out, logged."""
        out: dict[str, TenantKey] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(tenants.c.tenant_id, *_KEY_COLUMNS)
                                  .order_by(tenants.c.tenant_id)):
                key = self._authentic(str(r.tenant_id), r)
                if key is None:
                    log.warning("a tenant key row not written by the platform is ignored")
                else:
                    out[str(r.tenant_id)] = key
        return out

    def pending_rewraps(self) -> list[str]:
        """Tenants whose rewrap was started and not finished: running, or cut short."""
        return [t for t, key in self._authentic_rows().items() if key.rewrap_to is not None]

    def resume_rewrap(self, tenant: str) -> RewrapReport | None:
        """Finish the tenant's unfinished rewrap, if it has one (never starts one)."""
        return None if self.tenant_key(tenant).rewrap_to is None else self.rewrap(tenant)

    def tenant_keys(self) -> dict[str, str]:
        """Each tenant's key, as the key table has it."""
        return {t: key.key_arn for t, key in self._authentic_rows().items()}

    # --- internals --------------------------------------------------------------------
    def _kms(
        self, operation: str, tenant: str, category: str, epoch: int, key_arn: str,
        call: Callable[[], T], *, revokes_tenant: bool = True,
    ) -> T:
        """Every KMS call goes through here: counted, audited, revocations reported.

        A refusal by a key that is not the tenant's own (a rewrap's destination) says
        nothing about the tenant's key: ``revokes_tenant=False``."""
        self.kms_calls[(operation, tenant, category, epoch)] += 1
        context = encryption_context(tenant, category, epoch)
        try:
            result = call()
        except KmsError as err:
            self.audit.append(tenant, "kms_call", {
                "operation": operation, "key_arn": key_arn, "context": context,
                "outcome": "error", "error_code": err.code, "kms_code": err.kms_code,
                "request_id": err.request_id,
            })
            if isinstance(err, KeyRevoked) and revokes_tenant:
                self.purge(tenant, reason=f"key_revoked:{err.reason.value}")
                if self.on_revoked is not None:
                    self.on_revoked(tenant, err)
            elif isinstance(err, KmsUnavailable) and self.on_unavailable is not None:
                self.on_unavailable(tenant, err)
            raise
        self.audit.append(tenant, "kms_call", {
            "operation": operation, "key_arn": key_arn, "context": context, "outcome": "ok",
            "request_id": getattr(result, "request_id", None),
        })
        return result

    def _rewrap_one(self, tenant: str, dk: DataKeyRow, target: str) -> Ciphertext:
        """ReEncrypt where the key policy grants it; else Decrypt then Encrypt, which
        the least-privilege provider policy allows (kms:ReEncrypt* is not in it)."""
        context = encryption_context(tenant, dk.category, dk.epoch)
        same_key = target == dk.key_arn
        if self.rewrap_with_reencrypt:
            return self._kms("ReEncrypt", tenant, dk.category, dk.epoch, dk.key_arn,
                             lambda: self.kms.re_encrypt(dk.key_arn, dk.wrapped, context,
                                                         target, context),
                             revokes_tenant=same_key)
        plain = self._kms("Decrypt", tenant, dk.category, dk.epoch, dk.key_arn,
                          lambda: self.kms.decrypt(dk.key_arn, dk.wrapped, context)).plaintext
        try:
            return self._kms("Encrypt", tenant, dk.category, dk.epoch, target,
                             lambda: self.kms.encrypt(target, bytes(plain), context),
                             revokes_tenant=same_key)
        finally:
            plain[:] = bytes(len(plain))

    def _load_lock(self, slot: tuple[str, str, int]) -> threading.Lock:
        with self._lock:
            lock = self._load_locks.get(slot)
            if lock is None:
                lock = self._load_locks[slot] = threading.Lock()
            return lock

    def _key_for_seal(self, tenant: str, cat: str) -> DataKey:
        while True:
            epoch = self._current.get((tenant, cat))
            if epoch is None:
                epoch = self._current_epoch(tenant, cat)
            entry = self._entry(tenant, cat, epoch)
            count = next(entry.seals)
            if count < entry.seal_limit:
                return entry.key
            if self._reserve(tenant, cat, epoch, entry, count):
                continue
            self.rotate_epoch(tenant, cat)  # budget spent: a fresh data key

    def _key_for_open(self, tenant: str, cat: str, epoch: int) -> DataKey:
        return self._entry(tenant, cat, epoch).key

    def _entry(self, tenant: str, cat: str, epoch: int) -> _Cached:
        slot = (tenant, cat, epoch)
        now = self.clock.now()
        entry = self._cache.get(slot)
        if entry is not None:
            if now < entry.expires_at - self.refresh_ahead:
                return entry
            if now < entry.expires_at:
                if now < entry.retry_at:
                    return entry  # KMS failed this refresh moments ago
                with entry.lock:
                    mine = not entry.refreshing
                    entry.refreshing = True
                if mine:
                    try:
                        return self._unwrap(slot, tolerate_outage=True) or entry
                    finally:
                        entry.refreshing = False
                return entry
        with self._load_lock(slot):
            entry = self._cache.get(slot)
            if entry is not None and self.clock.now() < entry.expires_at:
                return entry
            now = self.clock.now()
            in_grace = entry is not None and now < self._grace.get(tenant, 0.0)
            if in_grace and entry is not None and now < entry.retry_at:
                return entry  # KMS failed moments ago: the grace serves, without asking
            try:
                loaded = self._unwrap(slot, tolerate_outage=in_grace)
            except KmsUnavailable:
                # This failure has just begun the tenant's outage grace (on_unavailable):
                # the cached key serves this request too, if the grace allows it.
                if entry is None or self.clock.now() >= self._grace.get(tenant, 0.0):
                    raise
                return entry
            if loaded is None:  # KMS is out and the grace allows the expired key
                assert entry is not None
                return entry
            return loaded

    def _unwrap(self, slot: tuple[str, str, int], *, tolerate_outage: bool) -> _Cached | None:
        tenant, category, epoch = slot
        row = self._row(tenant, category, epoch)
        if row.key_arn not in self.tenant_key(tenant).wrapping_keys:
            # Wrapped under a key that is not the tenant's: whoever put it there may hold
            # the plaintext. Never unwrapped, never sealed under.
            log.warning("a data key row wrapped under a key not the tenant's is refused")
            raise DecryptionError
        try:
            out = self._kms("Decrypt", tenant, category, epoch, row.key_arn,
                            lambda: self.kms.decrypt(row.key_arn, row.wrapped,
                                                     encryption_context(tenant, category, epoch)))
        except KmsError as err:
            if not isinstance(err, KeyRevoked):
                with self._lock:
                    failed = self._cache.get(slot)
                if failed is not None:
                    failed.retry_at = self.clock.now() + self.outage_backoff
            if tolerate_outage and not isinstance(err, KeyRevoked):
                return None  # keep the cached key until it expires
            raise
        return self._install(slot, out.plaintext)

    def _install(self, slot: tuple[str, str, int], plaintext: bytearray) -> _Cached:
        entry = _Cached(DataKey(slot[2], plaintext), self.clock.now() + self.ttl)
        with self._lock:
            old = self._cache.get(slot)
            if old is not None:  # a refresh: the old key object may still be in a caller's
                entry.seals, entry.seal_limit = old.seals, old.seal_limit  # hands: not wiped
            self._cache[slot] = entry
        return entry

    def _row(self, tenant: str, category: str, epoch: int) -> DataKeyRow:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(data_keys).where(
                data_keys.c.tenant_id == tenant, data_keys.c.category == category,
                data_keys.c.epoch == epoch)).first()
        if row is None:
            self.key_arn(tenant)  # unknown tenant -> UnknownTenant
            raise DecryptionError  # an epoch this tenant never had: opaque, like any forgery
        return row_to_key(row)

    def _current_epoch(self, tenant: str, cat: str) -> int:
        with self.engine.connect() as conn:
            epoch = conn.execute(sa.select(sa.func.max(data_keys.c.epoch)).where(
                data_keys.c.tenant_id == tenant, data_keys.c.category == cat)).scalar()
        if epoch is None:
            return self._new_epoch(tenant, cat)
        with self._lock:
            self._current[(tenant, cat)] = int(epoch)
        return int(epoch)

    def _tenant_wrapping(self, conn: sa.Connection, tenant: str,
                         lock: bool = False) -> tuple[str, int]:
        """The key new data keys are wrapped under, and the generation to stamp them with:
        during a rewrap to another key they are pending, so one below the rewrap's.
        ``lock``: hold the row (shared) until the caller's insert commits, so that a rewrap
        cannot finish in between without seeing the new key."""
        key = self._read_tenant(conn, tenant, lock="share" if lock else "")
        pending = key.rewrap_to is not None and key.rewrap_to != key.key_arn
        return key.key_arn, key.generation - 1 if pending else key.generation

    def _new_epoch(self, tenant: str, cat: str) -> int:
        """GenerateDataKey for the next epoch and store its wrapped form."""
        while True:
            with self.engine.connect() as conn:
                key_arn, stamp = self._tenant_wrapping(conn, tenant)
                latest = conn.execute(sa.select(sa.func.max(data_keys.c.epoch)).where(
                    data_keys.c.tenant_id == tenant, data_keys.c.category == cat)).scalar()
            epoch = (latest or 0) + 1
            context = encryption_context(tenant, cat, epoch)
            out = self._kms("GenerateDataKey", tenant, cat, epoch, key_arn,
                            functools.partial(self.kms.generate_data_key, key_arn, context))
            try:
                with self.engine.begin() as conn:
                    if self._tenant_wrapping(conn, tenant, lock=True) != (key_arn, stamp):
                        out.plaintext[:] = bytes(len(out.plaintext))
                        continue  # a rewrap started or finished meanwhile: wrap anew
                    conn.execute(data_keys.insert().values(
                        tenant_id=tenant, category=cat, epoch=epoch, key_arn=key_arn,
                        wrapped=out.wrapped, created_at=self.clock.now(), seals_reserved=0,
                        wrap_generation=stamp))
            except sa.exc.IntegrityError:
                # Another process created this epoch first: use theirs, drop ours.
                out.plaintext[:] = bytes(len(out.plaintext))
                with self._lock:
                    self._current[(tenant, cat)] = epoch
                return epoch
            self._install((tenant, cat, epoch), out.plaintext)
            self.audit.append(tenant, "epoch_created",
                              {"category": cat, "epoch": epoch, "key_arn": key_arn})
            with self._lock:
                self._current[(tenant, cat)] = epoch
            return epoch

    def _reserve(self, tenant: str, cat: str, epoch: int, entry: _Cached, count: int) -> bool:
        """Claim the next chunk of this epoch's seal budget; False when it is spent."""
        with self.engine.begin() as conn:
            reserved = conn.execute(sa.select(data_keys.c.seals_reserved).where(
                data_keys.c.tenant_id == tenant, data_keys.c.category == cat,
                data_keys.c.epoch == epoch).with_for_update()).scalar_one()
            grant = min(self.reserve_chunk, self.seal_budget - int(reserved))
            if grant <= 0:
                return False
            conn.execute(data_keys.update().where(
                data_keys.c.tenant_id == tenant, data_keys.c.category == cat,
                data_keys.c.epoch == epoch).values(seals_reserved=int(reserved) + grant))
        with entry.lock:  # exactly `grant` new counts pass, all above any count handed out
            entry.seal_limit = max(entry.seal_limit, count + 1) + grant
        return True


class _Prefixed:
    """A reader that replays already-consumed header bytes before the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._rest.read(n - len(data))
            return data
        return self._rest.read(n)
