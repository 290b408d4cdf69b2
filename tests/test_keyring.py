"""The keyring: tenants, seal/open, the data-key cache, epochs, purge, rewrap and audit,
against a real kmslocal process and a key table in SQLite or PostgreSQL.

KMS is counted twice: by the keyring itself (``kms_calls``) and by the customer's
usage log (CloudTrail LookupEvents), filtered on the encryption context's tenant, so
that a test only ever counts calls made for its own (random) tenants.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmek
from cmek.audit import AuditTrail
from cmek.clock import ManualClock
from cmek.crypto import envelope_epoch
from cmek.crypto.rows import RowAuthenticator
from cmek.db import create_engine
from cmek.errors import DecryptionError, InvalidInput, TenantExists, UnknownCategory, UnknownTenant
from cmek.keyring import Category, Keyring, RewrapInProgress, encryption_context
from cmek.keyring.table import data_keys, tenants
from cmek.kms import (
    BotoKms,
    KeyRevoked,
    KmsMisconfigured,
    KmsSettings,
    KmsUnavailable,
    RevocationReason,
)
from tests.conftest import REFERENCE_POLICY
from tests.kmslocal_harness import CUSTOMER, PROVIDER, KmsLocal
from tests.platform_harness import INTEGRITY_KEY

REGION = "us-west-2"
PROVIDER_ACCOUNT = "111111111111"
CUSTOMER_ACCOUNT = "222222222222"
TTL = 300.0
AHEAD = 30.0
CATEGORIES = list(Category)

REENCRYPT_STATEMENT = {
    "Sid": "Allow rewrap inside KMS", "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{PROVIDER_ACCOUNT}:root"},
    "Action": ["kms:ReEncrypt*"], "Resource": "*",
}


# --- helpers ----------------------------------------------------------------------------


def key_policy(*extra: dict[str, Any]) -> str:
    owner = {
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{CUSTOMER_ACCOUNT}:root"},
        "Action": "kms:*", "Resource": "*",
    }
    reference = json.loads(
        REFERENCE_POLICY.read_text().replace("<ACCOUNT_ID>", PROVIDER_ACCOUNT))
    return json.dumps({**reference, "Statement": [owner, *reference["Statement"], *extra]})


def kms_settings(kmslocal: KmsLocal, **overrides: Any) -> KmsSettings:
    values: dict[str, Any] = {
        "region": REGION, "endpoint_url": kmslocal.url, "access_key_id": PROVIDER[1],
        "secret_access_key": PROVIDER[2], "max_attempts": 1,
    }
    values.update(overrides)
    return KmsSettings(**values)


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def calls(keyring: Keyring, operation: str, tenant: str | None = None) -> int:
    return sum(n for (op, t, _, _), n in keyring.kms_calls.items()
               if op == operation and (tenant is None or t == tenant))


def kmslocal_now(kmslocal: KmsLocal) -> dt.datetime:
    now = str(kmslocal.dev_call("GET", "/_kmslocal/clock")["now"])
    return dt.datetime.fromisoformat(now.replace("Z", "+00:00"))


def usage_log(kmslocal: KmsLocal, since: dt.datetime, event_name: str,
              tenant_ids: set[str] | list[str]) -> list[dict[str, Any]]:
    """The customer's usage-log records of ``event_name`` made for one of ``tenant_ids``."""
    trail = kmslocal.client(CUSTOMER, "cloudtrail")
    wanted = set(tenant_ids)
    records: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = trail.lookup_events(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": event_name}],
            StartTime=since - dt.timedelta(seconds=1), MaxResults=50,
            **({"NextToken": token} if token else {}),
        )
        for event in page["Events"]:
            record = json.loads(event["CloudTrailEvent"])
            params = record.get("requestParameters") or {}
            context = (params.get("encryptionContext")
                       or params.get("sourceEncryptionContext") or {})
            if context.get("cmek:tenant") in wanted:
                records.append(record)
        token = page.get("NextToken")
        if not token:
            return records


def ok_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "errorCode" not in r]


def materials(keyring: Keyring, tenant: str) -> dict[tuple[str, str, int], bytearray]:
    """The cached plaintext data keys of a tenant: the very bytearrays the cache holds."""
    return {slot: entry.key._material for slot, entry in keyring._cache.items()
            if slot[0] == tenant}


def key_rows(keyring: Keyring, tenant: str) -> list[sa.Row[Any]]:
    with keyring.engine.connect() as conn:
        return list(conn.execute(sa.select(data_keys).where(data_keys.c.tenant_id == tenant)
                                 .order_by(data_keys.c.category, data_keys.c.epoch)))


def tenant_row(keyring: Keyring, tenant: str) -> sa.Row[Any]:
    with keyring.engine.connect() as conn:
        return conn.execute(sa.select(tenants).where(tenants.c.tenant_id == tenant)).one()


def material_version(wrapped: bytes) -> int:
    """kmslocal's ciphertext blob: version, 16-byte key id, u32 material version, ..."""
    return int.from_bytes(wrapped[17:21], "big")


def secret_forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.urlsafe_b64encode(secret)]


class GatedKms:
    """Delegates to a real KMS; ``decrypt`` can be held at a gate to force overlaps."""

    def __init__(self, inner: BotoKms) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.decrypts = 0
        self._lock = threading.Lock()

    def decrypt(self, *args: Any) -> Any:
        with self._lock:
            self.decrypts += 1
        self.entered.set()
        assert self.gate.wait(10), "the gate was never opened"
        return self.inner.decrypt(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.sqlite3'}"


@pytest.fixture
def customer(kmslocal: KmsLocal) -> Any:
    return kmslocal.client(CUSTOMER)


@pytest.fixture
def new_key(customer: Any) -> Callable[..., str]:
    def create(*extra: dict[str, Any]) -> str:
        return str(customer.create_key(Policy=key_policy(*extra))["KeyMetadata"]["Arn"])

    return create


@pytest.fixture
def key_arn(new_key: Callable[..., str]) -> str:
    return new_key()


@pytest.fixture
def boto(kmslocal: KmsLocal) -> BotoKms:
    return BotoKms(kms_settings(kmslocal))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make(boto: BotoKms, clock: ManualClock) -> Iterator[Callable[..., Keyring]]:
    """Keyrings over a database; each a fresh process's worth of state."""
    engines: list[sa.Engine] = []

    def build(url: str, *, kms: Any = None, keyring_clock: ManualClock | None = None,
              **options: Any) -> Keyring:
        engine = create_engine(url)
        engines.append(engine)
        use = keyring_clock or clock
        options.setdefault("ttl", TTL)
        options.setdefault("refresh_ahead", AHEAD)
        options.setdefault("rows", RowAuthenticator(INTEGRITY_KEY.encode()))
        return Keyring(kms or boto, engine, use, AuditTrail(engine, use), **options)

    yield build
    for engine in engines:
        engine.dispose()


class Faults:
    """kmslocal's fault injection."""

    def __init__(self, kmslocal: KmsLocal) -> None:
        self.kmslocal = kmslocal

    def add(self, spec: dict[str, Any]) -> None:
        self.kmslocal.dev_call("POST", "/_kmslocal/faults", spec)

    def clear(self) -> None:
        self.kmslocal.dev_call("DELETE", "/_kmslocal/faults")


@pytest.fixture
def faults(kmslocal: KmsLocal) -> Iterator[Faults]:
    """Faults to inject; all of them are cleared afterwards, pass or fail."""
    injected = Faults(kmslocal)
    injected.clear()
    try:
        yield injected
    finally:
        injected.clear()


# --- tenants, seal and open -------------------------------------------------------------


def test_round_trip_every_category(database_url: str, make: Callable[..., Keyring],
                                   key_arn: str) -> None:
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    assert tenant in keyring.tenants()
    assert keyring.key_arn(tenant) == key_arn
    for category in CATEGORIES:
        for plaintext in (b"", b"x", os.urandom(1000)):
            first = keyring.seal(tenant, category, "obj/1", plaintext)
            second = keyring.seal(tenant, category.value, "obj/1", plaintext)
            assert first != second  # a fresh nonce every time
            if len(plaintext) > 16:
                assert plaintext not in first
            assert envelope_epoch(first) == 1
            assert keyring.open(tenant, category, "obj/1", first) == plaintext
            assert keyring.open(tenant, category.value, "obj/1", second) == plaintext
    assert calls(keyring, "GenerateDataKey", tenant) == len(CATEGORIES)
    assert calls(keyring, "Decrypt", tenant) == 0
    assert len(key_rows(keyring, tenant)) == len(CATEGORIES)


def test_stream_round_trip(sqlite_url: str, make: Callable[..., Keyring], key_arn: str) -> None:
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    data = os.urandom(300_000)
    sealed, opened = io.BytesIO(), io.BytesIO()
    keyring.seal_stream(tenant, Category.BACKUPS, "backup/1", io.BytesIO(data), sealed)
    sealed.seek(0)
    keyring.open_stream(tenant, Category.BACKUPS, "backup/1", sealed, opened)
    assert opened.getvalue() == data
    sealed.seek(0)
    with pytest.raises(DecryptionError):
        keyring.open_stream(tenant, Category.BACKUPS, "backup/2", sealed, io.BytesIO())


def test_open_under_another_binding_fails(sqlite_url: str, make: Callable[..., Keyring],
                                          key_arn: str) -> None:
    keyring = make(sqlite_url)
    tenant, other, fresh = new_tenant(), new_tenant(), new_tenant()
    for t in (tenant, other, fresh):
        keyring.register_tenant(t, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj/1", b"secret")
    keyring.seal(other, Category.METADATA, "obj/1", b"other's")  # other has an epoch 1
    keyring.seal(tenant, Category.AUTH, "obj/1", b"auth")
    with pytest.raises(DecryptionError):
        keyring.open(other, Category.METADATA, "obj/1", sealed)
    with pytest.raises(DecryptionError):
        keyring.open(fresh, Category.METADATA, "obj/1", sealed)  # no data key at all
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.AUTH, "obj/1", sealed)
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.LOGS, "obj/1", sealed)  # category never used
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.METADATA, "obj/2", sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.METADATA, "obj/1", bytes(tampered))
    other_epoch = sealed[:2] + (7).to_bytes(4, "big") + sealed[6:]
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.METADATA, "obj/1", other_epoch)
    with pytest.raises(DecryptionError):
        keyring.open(tenant, Category.METADATA, "obj/1", sealed[:40])
    assert keyring.open(tenant, Category.METADATA, "obj/1", sealed) == b"secret"


def test_unknown_tenant(sqlite_url: str, make: Callable[..., Keyring], key_arn: str) -> None:
    keyring = make(sqlite_url)
    tenant, stranger = new_tenant(), new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"data")
    with pytest.raises(UnknownTenant):
        keyring.seal(stranger, Category.METADATA, "obj", b"data")
    with pytest.raises(UnknownTenant):
        keyring.open(stranger, Category.METADATA, "obj", sealed)
    with pytest.raises(UnknownTenant):
        keyring.key_arn(stranger)
    with pytest.raises(UnknownTenant):
        keyring.rotate_epoch(stranger, Category.METADATA)
    with pytest.raises(UnknownTenant):
        keyring.rewrap(stranger)
    assert calls(keyring, "GenerateDataKey", stranger) == 0
    assert stranger not in keyring.tenants()


def test_unknown_category(sqlite_url: str, make: Callable[..., Keyring], key_arn: str) -> None:
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"data")
    for category in ("", "Metadata", "metadata ", "secrets", "METADATA", "x" * 500):
        with pytest.raises(UnknownCategory):
            keyring.seal(tenant, category, "obj", b"data")
        with pytest.raises(UnknownCategory):
            keyring.open(tenant, category, "obj", sealed)
        with pytest.raises(UnknownCategory):
            keyring.rotate_epoch(tenant, category)
    assert calls(keyring, "GenerateDataKey", tenant) == 1
    assert [r.category for r in key_rows(keyring, tenant)] == ["metadata"]


def test_invalid_tenant_id(sqlite_url: str, make: Callable[..., Keyring], key_arn: str) -> None:
    keyring = make(sqlite_url)
    for bad in ("", "-acme", "_acme", "Acme", "acme corp", "acme/1", "acme.io", "\u00e1cme",
                "a" * 65, "acme\n", "acme\x00"):
        with pytest.raises(InvalidInput):
            keyring.register_tenant(bad, key_arn)
    assert keyring.tenants() == []


def test_valid_tenant_id_edges(sqlite_url: str, make: Callable[..., Keyring],
                               key_arn: str) -> None:
    keyring = make(sqlite_url)
    for good in ("a", "0", "a" * 64, "acme-corp_01"):
        keyring.register_tenant(good, key_arn)
    assert keyring.tenants() == sorted(["a", "0", "a" * 64, "acme-corp_01"])


def test_register_refuses_a_malformed_key_arn(sqlite_url: str,
                                              make: Callable[..., Keyring]) -> None:
    keyring = make(sqlite_url)
    with pytest.raises(KmsMisconfigured):
        keyring.register_tenant(new_tenant(), "alias/acme")
    assert keyring.tenants() == []


def test_duplicate_register(database_url: str, make: Callable[..., Keyring],
                            new_key: Callable[..., str]) -> None:
    keyring = make(database_url)
    tenant = new_tenant()
    first, second = new_key(), new_key()
    keyring.register_tenant(tenant, first)
    with pytest.raises(TenantExists):
        keyring.register_tenant(tenant, second)
    with pytest.raises(TenantExists):
        make(database_url).register_tenant(tenant, first)  # another process, same table
    assert keyring.key_arn(tenant) == first
    assert make(database_url).key_arn(tenant) == first


# --- KMS call economy and the cache -----------------------------------------------------


def test_kms_call_economy(database_url: str, kmslocal: KmsLocal, key_arn: str) -> None:
    since = kmslocal_now(kmslocal)
    keyring = cmek.connect(database_url, kms_settings(kmslocal), clock=ManualClock(),
                           integrity_key=INTEGRITY_KEY, data_key_ttl=TTL, refresh_ahead=AHEAD)
    try:
        tenant_ids = [new_tenant() for _ in range(3)]
        for t in tenant_ids:
            keyring.register_tenant(t, key_arn)
        categories = [Category.METADATA, Category.WAREHOUSE_DATA, Category.AUTH]
        pairs = [(t, c) for t in tenant_ids for c in categories]
        sealed: list[tuple[str, str, str, bytes, bytes]] = []
        ops = 0
        while ops < 1000:
            t, c = pairs[ops % len(pairs)]
            if ops % 2 == 0 or not sealed:
                plaintext = os.urandom(24)
                object_id = f"obj/{ops}"
                sealed.append((t, c, object_id, plaintext,
                               keyring.seal(t, c, object_id, plaintext)))
            else:
                t, c, object_id, plaintext, envelope = sealed[(ops * 7) % len(sealed)]
                assert keyring.open(t, c, object_id, envelope) == plaintext
            ops += 1
        assert calls(keyring, "GenerateDataKey") == 9
        assert calls(keyring, "Decrypt") == 0
        assert sum(keyring.kms_calls.values()) == 9
        generated = usage_log(kmslocal, since, "GenerateDataKey", tenant_ids)
        assert len(generated) == 9
        assert {(r["requestParameters"]["encryptionContext"]["cmek:tenant"],
                 r["requestParameters"]["encryptionContext"]["cmek:category"])
                for r in generated} == {(t, c.value) for t, c in pairs}
        assert usage_log(kmslocal, since, "Decrypt", tenant_ids) == []
    finally:
        keyring.engine.dispose()


def test_expired_key_is_unwrapped_once(database_url: str, make: Callable[..., Keyring],
                                       key_arn: str, clock: ManualClock,
                                       kmslocal: KmsLocal) -> None:
    since = kmslocal_now(kmslocal)
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"data")
    clock.advance(TTL - AHEAD - 1)  # fresh: no KMS
    assert keyring.open(tenant, Category.METADATA, "obj", sealed) == b"data"
    assert calls(keyring, "Decrypt") == 0
    clock.advance(AHEAD + 2)  # past ttl
    for _ in range(20):
        assert keyring.open(tenant, Category.METADATA, "obj", sealed) == b"data"
    assert calls(keyring, "Decrypt", tenant) == 1
    keyring.seal(tenant, Category.METADATA, "obj", b"more")
    assert calls(keyring, "Decrypt", tenant) == 1
    assert calls(keyring, "GenerateDataKey", tenant) == 1
    decrypts = ok_records(usage_log(kmslocal, since, "Decrypt", [tenant]))
    assert len(decrypts) == 1
    assert decrypts[0]["requestParameters"]["encryptionContext"] == encryption_context(
        tenant, "metadata", 1)
    # The refreshed key lives for a full ttl from the unwrap.
    clock.advance(TTL - AHEAD - 1)
    keyring.open(tenant, Category.METADATA, "obj", sealed)
    assert calls(keyring, "Decrypt", tenant) == 1


def test_refresh_ahead_first_caller_refreshes_others_keep_going(
    sqlite_url: str, make: Callable[..., Keyring], boto: BotoKms, key_arn: str,
    clock: ManualClock,
) -> None:
    gated = GatedKms(boto)
    keyring = make(sqlite_url, kms=gated)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"data")
    clock.advance(TTL - AHEAD / 2)  # inside the refresh-ahead window
    gated.gate.clear()
    refresher_result: list[bytes] = []
    refresher = threading.Thread(target=lambda: refresher_result.append(
        keyring.open(tenant, Category.METADATA, "obj", sealed)))
    refresher.start()
    assert gated.entered.wait(5)
    others_result: list[bytes] = []

    def others() -> None:
        for i in range(10):
            others_result.append(keyring.open(tenant, Category.METADATA, "obj", sealed))
            keyring.seal(tenant, Category.METADATA, f"obj/{i}", b"more")

    worker = threading.Thread(target=others)
    worker.start()
    worker.join(5)
    blocked = worker.is_alive()
    gated.gate.set()
    refresher.join(10)
    worker.join(10)
    assert not blocked, "callers in the refresh-ahead window waited for the refresh"
    assert others_result == [b"data"] * 10
    assert refresher_result == [b"data"]
    assert gated.decrypts == 1
    assert calls(keyring, "Decrypt", tenant) == 1
    # Refreshed: a full ttl from now before the next unwrap.
    clock.advance(TTL - AHEAD - 1)
    keyring.open(tenant, Category.METADATA, "obj", sealed)
    assert calls(keyring, "Decrypt", tenant) == 1


def test_single_flight_for_an_expired_key(
    database_url: str, make: Callable[..., Keyring], boto: BotoKms, key_arn: str,
    clock: ManualClock,
) -> None:
    gated = GatedKms(boto)
    keyring = make(database_url, kms=gated)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.SEARCH_INDEX, "obj", b"data")
    clock.advance(TTL + 1)
    gated.gate.clear()
    barrier = threading.Barrier(16)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def opener() -> None:
        barrier.wait()
        try:
            results.append(keyring.open(tenant, Category.SEARCH_INDEX, "obj", sealed))
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(16)]
    for thread in threads:
        thread.start()
    assert gated.entered.wait(5)
    time.sleep(0.3)  # let the other 15 pile up behind the one unwrap
    gated.gate.set()
    for thread in threads:
        thread.join(15)
    assert errors == []
    assert results == [b"data"] * 16
    assert gated.decrypts == 1
    assert calls(keyring, "Decrypt", tenant) == 1


def test_restart_opens_old_ciphertexts(database_url: str, make: Callable[..., Keyring],
                                       key_arn: str, kmslocal: KmsLocal) -> None:
    first = make(database_url)
    tenant = new_tenant()
    first.register_tenant(tenant, key_arn)
    sealed = {}
    for category in (Category.METADATA, Category.LOGS):
        sealed[(category, 1)] = first.seal(tenant, category, "obj", b"one")
        first.rotate_epoch(tenant, category)
        sealed[(category, 2)] = first.seal(tenant, category, "obj", b"two")
    since = kmslocal_now(kmslocal)
    restarted = make(database_url, keyring_clock=ManualClock())
    for _ in range(3):
        for (category, epoch), envelope in sealed.items():
            assert envelope_epoch(envelope) == epoch
            expected = b"one" if epoch == 1 else b"two"
            assert restarted.open(tenant, category, "obj", envelope) == expected
    assert calls(restarted, "Decrypt", tenant) == 4  # one per epoch used
    assert calls(restarted, "GenerateDataKey", tenant) == 0
    assert len(ok_records(usage_log(kmslocal, since, "Decrypt", [tenant]))) == 4
    # New seals continue in the newest epoch, without a new data key.
    assert envelope_epoch(restarted.seal(tenant, Category.METADATA, "obj", b"x")) == 2
    assert calls(restarted, "GenerateDataKey", tenant) == 0


# --- purge and revocation ---------------------------------------------------------------


def test_purge_wipes_only_that_tenant(database_url: str, make: Callable[..., Keyring],
                                      new_key: Callable[..., str], customer: Any) -> None:
    revoked: list[tuple[str, KeyRevoked]] = []
    keyring = make(database_url, on_revoked=lambda t, e: revoked.append((t, e)))
    tenant, other = new_tenant(), new_tenant()
    tenant_key, other_key = new_key(), new_key()
    keyring.register_tenant(tenant, tenant_key)
    keyring.register_tenant(other, other_key)
    mine = {c: keyring.seal(tenant, c, "obj", b"mine") for c in (Category.AUTH, Category.LOGS)}
    theirs = keyring.seal(other, Category.AUTH, "obj", b"theirs")

    wiped = materials(keyring, tenant)
    kept = {slot: bytes(m) for slot, m in materials(keyring, other).items()}
    assert len(wiped) == 2
    assert all(any(m) for m in wiped.values())
    data_keys_before = [entry.key for slot, entry in keyring._cache.items() if slot[0] == tenant]

    assert keyring.purge(tenant) == 2
    assert all(m == bytearray(32) for m in wiped.values())
    assert all(key.wiped for key in data_keys_before)
    assert keyring.cached(tenant) == []
    assert keyring.cached(other) == [("auth", 1)]
    assert {slot: bytes(m) for slot, m in materials(keyring, other).items()} == kept

    assert keyring.open(other, Category.AUTH, "obj", theirs) == b"theirs"
    assert calls(keyring, "Decrypt", other) == 0
    assert keyring.open(tenant, Category.AUTH, "obj", mine[Category.AUTH]) == b"mine"
    assert calls(keyring, "Decrypt", tenant) == 1
    assert keyring.purge(tenant, reason="test") == 1

    # The customer disables the key: once purged, nothing of the tenant opens.
    customer.disable_key(KeyId=tenant_key)
    for category, envelope in mine.items():
        with pytest.raises(KeyRevoked) as caught:
            keyring.open(tenant, category, "obj", envelope)
        assert caught.value.reason is RevocationReason.DISABLED
    with pytest.raises(KeyRevoked):
        keyring.seal(tenant, Category.AUTH, "obj", b"new")
    assert keyring.cached(tenant) == []
    assert [t for t, _ in revoked] == [tenant] * 3
    assert all(e.reason is RevocationReason.DISABLED for _, e in revoked)
    # The other tenant, on its own key, is untouched.
    assert keyring.open(other, Category.AUTH, "obj", theirs) == b"theirs"

    purges = keyring.audit.entries(tenant, kinds=["keys_purged"])
    assert [p.data["reason"] for p in purges][:2] == ["requested", "test"]
    assert purges[0].data["count"] == 2
    assert sorted(purges[0].data["epochs"]) == ["auth:1", "logs:1"]
    assert {p.data["reason"] for p in purges[2:]} == {"key_revoked:disabled"}


def test_revocation_is_noticed_at_refresh_and_purges_the_cache(
    database_url: str, make: Callable[..., Keyring], new_key: Callable[..., str],
    customer: Any, clock: ManualClock,
) -> None:
    revoked: list[tuple[str, KeyRevoked]] = []
    keyring = make(database_url, on_revoked=lambda t, e: revoked.append((t, e)))
    tenant, other = new_tenant(), new_tenant()
    tenant_key = new_key()
    keyring.register_tenant(tenant, tenant_key)
    keyring.register_tenant(other, new_key())
    sealed = {c: keyring.seal(tenant, c, "obj", b"mine")
              for c in (Category.METADATA, Category.BACKUPS)}
    theirs = keyring.seal(other, Category.METADATA, "obj", b"theirs")
    cached = materials(keyring, tenant)

    customer.disable_key(KeyId=tenant_key)
    # Until the cached key is refreshed, KMS is not asked and the key keeps working.
    assert keyring.open(tenant, Category.METADATA, "obj", sealed[Category.METADATA]) == b"mine"
    assert revoked == []

    clock.advance(TTL + 1)
    with pytest.raises(KeyRevoked) as caught:
        keyring.open(tenant, Category.METADATA, "obj", sealed[Category.METADATA])
    assert caught.value.reason is RevocationReason.DISABLED
    assert [t for t, _ in revoked] == [tenant]
    assert revoked[0][1] is caught.value
    # The revocation purged every cached key of the tenant, not only the one refreshed.
    assert keyring.cached(tenant) == []
    assert all(m == bytearray(32) for m in cached.values())
    with pytest.raises(KeyRevoked):
        keyring.open(tenant, Category.BACKUPS, "obj", sealed[Category.BACKUPS])
    purge = keyring.audit.entries(tenant, kinds=["keys_purged"])[0]
    assert purge.data["reason"] == "key_revoked:disabled"
    assert purge.data["count"] == 2
    # The other tenant's key is unaffected (it needs a refresh too, after the ttl).
    assert keyring.open(other, Category.METADATA, "obj", theirs) == b"theirs"


def test_revocation_in_the_refresh_window_is_not_tolerated(
    sqlite_url: str, make: Callable[..., Keyring], key_arn: str, customer: Any,
    clock: ManualClock,
) -> None:
    """An outage is ridden out from the cache; a revocation is not."""
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"mine")
    customer.disable_key(KeyId=key_arn)
    clock.advance(TTL - AHEAD / 2)
    with pytest.raises(KeyRevoked):
        keyring.open(tenant, Category.METADATA, "obj", sealed)
    assert keyring.cached(tenant) == []


def test_outage_in_the_refresh_window_serves_from_cache_until_expiry(
    database_url: str, make: Callable[..., Keyring], key_arn: str, clock: ManualClock,
    faults: Faults,
) -> None:
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", b"creds")
    faults.add({"operations": ["Decrypt"], "error": "ThrottlingException"})
    clock.advance(TTL - AHEAD + 1)  # in the refresh window: the refresh fails, quietly
    for _ in range(3):
        assert keyring.open(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", sealed) == b"creds"
    keyring.seal(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", b"more")
    assert calls(keyring, "Decrypt", tenant) >= 1
    failures = [e for e in keyring.audit.entries(tenant, kinds=["kms_call"])
                if e.data["outcome"] == "error"]
    assert failures
    assert failures[0].data["error_code"] == "kms_unavailable"
    assert failures[0].data["kms_code"] == "ThrottlingException"

    clock.advance(AHEAD)  # expired
    with pytest.raises(KmsUnavailable):
        keyring.open(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", sealed)
    with pytest.raises(KmsUnavailable):
        keyring.seal(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", b"more")

    attempts = calls(keyring, "Decrypt", tenant)
    faults.clear()
    assert keyring.open(tenant, Category.WAREHOUSE_CREDENTIALS, "obj", sealed) == b"creds"
    assert calls(keyring, "Decrypt", tenant) == attempts + 1


# --- epochs -----------------------------------------------------------------------------


def test_rotate_epoch(database_url: str, make: Callable[..., Keyring], key_arn: str) -> None:
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    old = keyring.seal(tenant, Category.METADATA, "obj", b"old")
    assert envelope_epoch(old) == 1
    assert keyring.rotate_epoch(tenant, Category.METADATA) == 2
    new = keyring.seal(tenant, Category.METADATA, "obj", b"new")
    assert envelope_epoch(new) == 2
    assert keyring.open(tenant, Category.METADATA, "obj", old) == b"old"
    assert keyring.open(tenant, Category.METADATA, "obj", new) == b"new"
    assert keyring.rotate_epoch(tenant, Category.METADATA) == 3
    assert envelope_epoch(keyring.seal(tenant, Category.METADATA, "obj", b"x")) == 3
    # Other categories keep their epoch.
    assert envelope_epoch(keyring.seal(tenant, Category.AUTH, "obj", b"x")) == 1
    assert calls(keyring, "GenerateDataKey", tenant) == 4
    created = keyring.audit.entries(tenant, kinds=["epoch_created"])
    assert [(e.data["category"], e.data["epoch"]) for e in created] == [
        ("metadata", 1), ("metadata", 2), ("metadata", 3), ("auth", 1)]
    assert all(e.data["key_arn"] == key_arn for e in created)
    assert [r.epoch for r in key_rows(keyring, tenant) if r.category == "metadata"] == [1, 2, 3]


def test_seal_budget_moves_to_a_new_epoch(sqlite_url: str, make: Callable[..., Keyring],
                                          key_arn: str) -> None:
    keyring = make(sqlite_url, seal_budget=5, reserve_chunk=2)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = [keyring.seal(tenant, Category.LOGS, f"obj/{i}", b"%d" % i) for i in range(11)]
    assert [envelope_epoch(s) for s in sealed] == [1] * 5 + [2] * 5 + [3]
    for i, envelope in enumerate(sealed):
        assert keyring.open(tenant, Category.LOGS, f"obj/{i}", envelope) == b"%d" % i
    assert all(r.seals_reserved <= 5 for r in key_rows(keyring, tenant))


def test_seal_budget_holds_across_keyrings(database_url: str, make: Callable[..., Keyring],
                                           key_arn: str) -> None:
    first = make(database_url, seal_budget=5, reserve_chunk=2)
    second = make(database_url, seal_budget=5, reserve_chunk=2)
    tenant = new_tenant()
    first.register_tenant(tenant, key_arn)
    sealed: list[tuple[int, bytes]] = []
    for i in range(30):
        keyring = first if (i // 3) % 2 == 0 else second
        sealed.append((i, keyring.seal(tenant, Category.AUTH, f"obj/{i}", b"%d" % i)))
    per_epoch: dict[int, int] = {}
    for _, envelope in sealed:
        epoch = envelope_epoch(envelope)
        per_epoch[epoch] = per_epoch.get(epoch, 0) + 1
    assert max(per_epoch.values()) <= 5, per_epoch
    assert all(r.seals_reserved <= 5 for r in key_rows(first, tenant))
    assert sum(per_epoch.values()) == 30
    for i, envelope in sealed:
        assert second.open(tenant, Category.AUTH, f"obj/{i}", envelope) == b"%d" % i


def test_seal_budget_holds_under_concurrency(sqlite_url: str, make: Callable[..., Keyring],
                                             key_arn: str) -> None:
    keyring = make(sqlite_url, seal_budget=5, reserve_chunk=2)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    keyring.seal(tenant, Category.AUTH, "warm", b"")
    sealed: list[bytes] = []
    lock = threading.Lock()

    def sealer(n: int) -> None:
        for i in range(10):
            envelope = keyring.seal(tenant, Category.AUTH, f"obj/{n}/{i}", b"x")
            with lock:
                sealed.append(envelope)

    threads = [threading.Thread(target=sealer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(sealed) == 80
    per_epoch: dict[int, int] = {}
    for envelope in sealed:
        per_epoch[envelope_epoch(envelope)] = per_epoch.get(envelope_epoch(envelope), 0) + 1
    per_epoch[1] = per_epoch.get(1, 0) + 1  # the warm-up seal
    assert max(per_epoch.values()) <= 5, per_epoch


# --- rewrap -----------------------------------------------------------------------------


def _three_data_keys(keyring: Keyring, tenant: str) -> dict[tuple[str, int], bytes]:
    sealed = {
        ("metadata", 1): keyring.seal(tenant, Category.METADATA, "obj", b"m1"),
        ("auth", 1): keyring.seal(tenant, Category.AUTH, "obj", b"a1"),
    }
    keyring.rotate_epoch(tenant, Category.METADATA)
    sealed[("metadata", 2)] = keyring.seal(tenant, Category.METADATA, "obj", b"m2")
    return sealed


def _plain(slot: tuple[str, int]) -> bytes:
    return f"{slot[0][0]}{slot[1]}".encode()


def test_another_process_sees_a_rewrap_at_once(database_url: str,
                                               make: Callable[..., Keyring],
                                               new_key: Callable[..., str]) -> None:
    """Its key monitor must check the new key, not the one it read before."""
    old_key, new = new_key(), new_key()
    here, there = make(database_url), make(database_url)
    tenant = new_tenant()
    here.register_tenant(tenant, old_key)
    _three_data_keys(here, tenant)
    assert there.key_arn(tenant) == old_key
    here.rewrap(tenant, new)
    assert there.key_arn(tenant) == new


def test_rewrap_to_a_new_key(database_url: str, make: Callable[..., Keyring],
                             new_key: Callable[..., str], customer: Any,
                             kmslocal: KmsLocal) -> None:
    old_key, new = new_key(), new_key()
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, old_key)
    sealed = _three_data_keys(keyring, tenant)
    since = kmslocal_now(kmslocal)
    progress: list[tuple[int, int]] = []
    report = keyring.rewrap(tenant, new, progress=lambda d, t: progress.append((d, t)))
    assert (report.tenant, report.key_arn, report.rewrapped, report.total, report.resumed) == (
        tenant, new, 3, 3, False)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert {r.key_arn for r in key_rows(keyring, tenant)} == {new}
    assert tenant_row(keyring, tenant).key_arn == new
    assert tenant_row(keyring, tenant).rewrap_to is None
    assert keyring.key_arn(tenant) == new
    # The least-privilege policy has no kms:ReEncrypt*: Decrypt under the old key, then
    # Encrypt under the new one, both with the data key's own context.
    decrypts = ok_records(usage_log(kmslocal, since, "Decrypt", [tenant]))
    encrypts = ok_records(usage_log(kmslocal, since, "Encrypt", [tenant]))
    assert len(decrypts) == 3
    assert len(encrypts) == 3
    assert {r["resources"][0]["ARN"] for r in decrypts} == {old_key}
    assert {r["resources"][0]["ARN"] for r in encrypts} == {new}
    assert usage_log(kmslocal, since, "ReEncrypt", [tenant]) == []

    # Only the new key is needed from now on, even by a fresh process.
    customer.disable_key(KeyId=old_key)
    fresh = make(database_url, keyring_clock=ManualClock())
    assert fresh.key_arn(tenant) == new
    for (category, epoch), envelope in sealed.items():
        assert fresh.open(tenant, category, "obj", envelope) == _plain((category, epoch))
    assert calls(fresh, "Decrypt", tenant) == 3
    assert keyring.open(tenant, Category.AUTH, "obj", sealed[("auth", 1)]) == b"a1"
    fresh.rotate_epoch(tenant, Category.AUTH)
    assert key_rows(fresh, tenant)[-1].key_arn == new
    names = [e.kind for e in keyring.audit.entries(tenant)]
    assert "rewrap_started" in names
    assert "rewrap_finished" in names
    assert keyring.audit.verify(tenant).ok


def test_rewrap_with_reencrypt(database_url: str, make: Callable[..., Keyring],
                               new_key: Callable[..., str], kmslocal: KmsLocal) -> None:
    old_key, new = new_key(REENCRYPT_STATEMENT), new_key(REENCRYPT_STATEMENT)
    keyring = make(database_url, rewrap_with_reencrypt=True)
    tenant = new_tenant()
    keyring.register_tenant(tenant, old_key)
    sealed = _three_data_keys(keyring, tenant)
    since = kmslocal_now(kmslocal)
    report = keyring.rewrap(tenant, new)
    assert (report.rewrapped, report.total) == (3, 3)
    reencrypts = ok_records(usage_log(kmslocal, since, "ReEncrypt", [tenant]))
    assert len(reencrypts) == 3  # one per data key (epoch), never per record
    assert usage_log(kmslocal, since, "Decrypt", [tenant]) == []
    assert calls(keyring, "ReEncrypt", tenant) == 3
    assert {(r["requestParameters"]["sourceEncryptionContext"]["cmek:category"],
             r["requestParameters"]["sourceEncryptionContext"]["cmek:epoch"])
            for r in reencrypts} == {(c, str(e)) for c, e in sealed}
    assert {r.key_arn for r in key_rows(keyring, tenant)} == {new}
    fresh = make(database_url, keyring_clock=ManualClock())
    for slot, envelope in sealed.items():
        assert fresh.open(tenant, slot[0], "obj", envelope) == _plain(slot)


def test_rewrap_after_rotation_of_the_same_key(sqlite_url: str, make: Callable[..., Keyring],
                                              key_arn: str, customer: Any) -> None:
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = _three_data_keys(keyring, tenant)
    assert {material_version(r.wrapped) for r in key_rows(keyring, tenant)} == {1}
    customer.rotate_key_on_demand(KeyId=key_arn)
    progress: list[tuple[int, int]] = []
    report = keyring.rewrap(tenant, progress=lambda d, t: progress.append((d, t)))
    assert (report.key_arn, report.rewrapped, report.total, report.resumed) == (
        key_arn, 3, 3, False)
    assert progress[-1] == (3, 3)
    rows = key_rows(keyring, tenant)
    assert {r.key_arn for r in rows} == {key_arn}
    assert {material_version(r.wrapped) for r in rows} == {2}  # the newest material
    fresh = make(sqlite_url, keyring_clock=ManualClock())
    for slot, envelope in sealed.items():
        assert fresh.open(tenant, slot[0], "obj", envelope) == _plain(slot)


def test_rewrap_resumes_after_a_failure(
    database_url: str, make: Callable[..., Keyring], new_key: Callable[..., str],
    kmslocal: KmsLocal, faults: Faults,
) -> None:
    old_key = new_key(REENCRYPT_STATEMENT)
    new, third = new_key(REENCRYPT_STATEMENT), new_key(REENCRYPT_STATEMENT)
    keyring = make(database_url, rewrap_with_reencrypt=True)
    tenant = new_tenant()
    keyring.register_tenant(tenant, old_key)
    sealed = _three_data_keys(keyring, tenant)
    since = kmslocal_now(kmslocal)
    progress: list[tuple[int, int]] = []

    def fail_after_first(done: int, total: int) -> None:
        progress.append((done, total))
        if done == 1:
            faults.add({"operations": ["ReEncrypt"], "error": "KMSInternalException", "count": 1})

    with pytest.raises(KmsUnavailable):
        keyring.rewrap(tenant, new, progress=fail_after_first)
    assert progress == [(1, 3)]
    rows = key_rows(keyring, tenant)
    assert sorted(r.key_arn for r in rows) == sorted([new, old_key, old_key])
    assert tenant_row(keyring, tenant).rewrap_to == new
    assert keyring.key_arn(tenant) == old_key  # not switched until the rewrap finishes
    # Data stays readable in between, by this process and by a fresh one.
    fresh = make(database_url, keyring_clock=ManualClock())
    for slot, envelope in sealed.items():
        assert fresh.open(tenant, slot[0], "obj", envelope) == _plain(slot)

    with pytest.raises(RewrapInProgress):
        keyring.rewrap(tenant, third)
    progress.clear()
    report = keyring.rewrap(tenant, new, progress=lambda d, t: progress.append((d, t)))
    assert (report.key_arn, report.rewrapped, report.total, report.resumed) == (new, 2, 3, True)
    assert progress == [(2, 3), (3, 3)]
    assert {r.key_arn for r in key_rows(keyring, tenant)} == {new}
    assert keyring.key_arn(tenant) == new
    # 1 + 2 successful ReEncrypts: each data key re-wrapped exactly once.
    reencrypts = ok_records(usage_log(kmslocal, since, "ReEncrypt", [tenant]))
    assert len(reencrypts) == 3
    assert len({(r["requestParameters"]["sourceEncryptionContext"]["cmek:category"],
                 r["requestParameters"]["sourceEncryptionContext"]["cmek:epoch"])
                for r in reencrypts}) == 3
    assert [e.kind for e in keyring.audit.entries(tenant, kinds=[
        "rewrap_started", "rewrap_resumed", "rewrap_finished"])] == [
        "rewrap_started", "rewrap_resumed", "rewrap_finished"]
    fresh = make(database_url, keyring_clock=ManualClock())
    for slot, envelope in sealed.items():
        assert fresh.open(tenant, slot[0], "obj", envelope) == _plain(slot)
    # Finished: a rewrap to yet another key may start now.
    assert keyring.rewrap(tenant, third).rewrapped == 3


def test_resume_without_naming_the_key_continues_the_same_rewrap(
    sqlite_url: str, make: Callable[..., Keyring], new_key: Callable[..., str],
    faults: Faults,
) -> None:
    old_key, new = new_key(), new_key()
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, old_key)
    _three_data_keys(keyring, tenant)

    def fail_after_first(done: int, total: int) -> None:
        if done == 1:
            faults.add({"operations": ["Encrypt"], "error": "ThrottlingException", "count": 1})

    with pytest.raises(KmsUnavailable):
        keyring.rewrap(tenant, new, progress=fail_after_first)
    report = keyring.rewrap(tenant)
    assert (report.key_arn, report.rewrapped, report.total, report.resumed) == (new, 2, 3, True)
    assert {r.key_arn for r in key_rows(keyring, tenant)} == {new}


def test_data_key_created_during_an_interrupted_rewrap_is_rewrapped_too(
    sqlite_url: str, make: Callable[..., Keyring], new_key: Callable[..., str],
    customer: Any, faults: Faults,
) -> None:
    old_key, new = new_key(), new_key()
    keyring = make(sqlite_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, old_key)
    sealed = _three_data_keys(keyring, tenant)

    def fail_after_first(done: int, total: int) -> None:
        if done == 1:
            faults.add({"operations": ["Encrypt"], "error": "ThrottlingException", "count": 1})

    with pytest.raises(KmsUnavailable):
        keyring.rewrap(tenant, new, progress=fail_after_first)
    # Business goes on while the rewrap is pending: a category gets its first data key.
    backups = keyring.seal(tenant, Category.BACKUPS, "obj", b"b1")
    keyring.rewrap(tenant)
    assert [(r.category, r.epoch, r.key_arn) for r in key_rows(keyring, tenant)] == [
        ("auth", 1, new), ("backups", 1, new), ("metadata", 1, new), ("metadata", 2, new)]
    customer.disable_key(KeyId=old_key)
    fresh = make(sqlite_url, keyring_clock=ManualClock())
    assert fresh.open(tenant, Category.BACKUPS, "obj", backups) == b"b1"
    for slot, envelope in sealed.items():
        assert fresh.open(tenant, slot[0], "obj", envelope) == _plain(slot)


def test_rewrap_to_a_key_the_provider_cannot_use_does_not_revoke_the_tenant(
    sqlite_url: str, make: Callable[..., Keyring], key_arn: str, customer: Any,
) -> None:
    """AccessDenied on the *destination* key says nothing about the tenant's own key."""
    revoked: list[str] = []
    keyring = make(sqlite_url, on_revoked=lambda t, e: revoked.append(t))
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = _three_data_keys(keyring, tenant)
    owner_only = json.dumps({"Version": "2012-10-17", "Statement": [
        json.loads(key_policy())["Statement"][0]]})
    unusable = str(customer.create_key(Policy=owner_only)["KeyMetadata"]["Arn"])
    with pytest.raises(KeyRevoked):
        keyring.rewrap(tenant, unusable)
    assert revoked == []
    assert keyring.cached(tenant) == [("auth", 1), ("metadata", 1), ("metadata", 2)]
    assert keyring.key_arn(tenant) == key_arn
    for slot, envelope in sealed.items():
        assert keyring.open(tenant, slot[0], "obj", envelope) == _plain(slot)


# --- audit ------------------------------------------------------------------------------


def test_every_kms_call_is_audited(
    database_url: str, make: Callable[..., Keyring], key_arn: str, clock: ManualClock,
    kmslocal: KmsLocal, faults: Faults,
) -> None:
    since = kmslocal_now(kmslocal)
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, key_arn)
    sealed = keyring.seal(tenant, Category.METADATA, "obj", b"m")
    keyring.seal(tenant, Category.LOGS, "obj", b"l")
    keyring.rotate_epoch(tenant, Category.METADATA)
    keyring.purge(tenant)
    keyring.open(tenant, Category.METADATA, "obj", sealed)  # Decrypt
    clock.advance(TTL + 1)
    faults.add({"operations": ["Decrypt"], "error": "ThrottlingException", "count": 1})
    with pytest.raises(KmsUnavailable):
        keyring.open(tenant, Category.METADATA, "obj", sealed)

    entries = keyring.audit.entries(tenant)
    kms_entries = [e for e in entries if e.kind == "kms_call"]
    assert len(kms_entries) == sum(n for (_, t, _, _), n in keyring.kms_calls.items()
                                   if t == tenant) == 5
    expected = [("GenerateDataKey", "metadata", 1), ("GenerateDataKey", "logs", 1),
                ("GenerateDataKey", "metadata", 2), ("Decrypt", "metadata", 1),
                ("Decrypt", "metadata", 1)]
    assert [(e.data["operation"], e.data["context"]["cmek:category"],
             int(e.data["context"]["cmek:epoch"])) for e in kms_entries] == expected
    for entry, (_, category, epoch) in zip(kms_entries, expected, strict=True):
        assert set(entry.data["context"]) == {"cmek:tenant", "cmek:category", "cmek:epoch"}
        assert entry.data["context"] == encryption_context(tenant, category, epoch)
        assert entry.data["key_arn"] == key_arn
        assert entry.data["request_id"]
    assert [e.data["outcome"] for e in kms_entries] == ["ok"] * 4 + ["error"]
    assert kms_entries[-1].data["error_code"] == "kms_unavailable"
    # The request ids are the customer's: each ok call is in its usage log, same context.
    logged = {r["requestID"]: r for name in ("GenerateDataKey", "Decrypt")
              for r in usage_log(kmslocal, since, name, [tenant])}
    for entry in kms_entries[:4]:
        record = logged[entry.data["request_id"]]
        assert record["eventName"] == entry.data["operation"]
        assert record["requestParameters"]["encryptionContext"] == entry.data["context"]

    kinds = [e.kind for e in entries]
    assert kinds[0] == "tenant_registered"
    created = [(e.data["category"], e.data["epoch"]) for e in entries
               if e.kind == "epoch_created"]
    assert created == [("metadata", 1), ("logs", 1), ("metadata", 2)]
    purged = [e for e in entries if e.kind == "keys_purged"]
    assert len(purged) == 1
    assert purged[0].data["count"] == 3
    assert keyring.audit.verify(tenant).ok
    assert keyring.audit.verify(tenant).entries == len(entries)


# --- no plaintext data key at rest ------------------------------------------------------


def _captured_keys(keyring: Keyring, tenant: str) -> list[bytes]:
    found = [bytes(m) for m in materials(keyring, tenant).values()]
    assert found
    assert all(len(k) == 32 and any(k) for k in found)
    return found


def _assert_absent(haystack: bytes, keys: list[bytes], where: str) -> None:
    for key in keys:
        for form in secret_forms(key):
            assert form not in haystack, f"a plaintext data key is in {where}"


def test_no_plaintext_data_key_at_rest(database_url: str, make: Callable[..., Keyring],
                                       new_key: Callable[..., str],
                                       clock: ManualClock) -> None:
    keyring = make(database_url)
    tenant = new_tenant()
    keyring.register_tenant(tenant, new_key())
    keys: list[bytes] = []
    for category in CATEGORIES:
        keyring.seal(tenant, category, "obj", b"data")
    keyring.rotate_epoch(tenant, Category.METADATA)
    keys += _captured_keys(keyring, tenant)
    clock.advance(TTL + 1)
    keyring.open(tenant, Category.METADATA, "obj",
                 keyring.seal(tenant, Category.METADATA, "obj", b"x"))
    keyring.rewrap(tenant, new_key())  # the data keys pass through memory, not the disk
    keys += _captured_keys(keyring, tenant)
    assert len(set(keys)) == len(CATEGORIES) + 1

    audit_json = json.dumps([e.to_json() for e in keyring.audit.entries(tenant)]).encode()
    _assert_absent(audit_json, keys, "the audit trail")
    exported = io.StringIO()
    keyring.audit.export(tenant, exported)
    _assert_absent(exported.getvalue().encode(), keys, "the audit export")

    dumped = bytearray()
    with keyring.engine.connect() as conn:
        for table in ("cmek_tenants", "cmek_data_keys", "audit_entries", "audit_heads"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                for value in row:
                    dumped += value if isinstance(value, bytes) else str(value).encode()
    assert dumped
    _assert_absent(bytes(dumped), keys, "the database rows")

    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert files
        for file in files:
            _assert_absent(file.read_bytes(), keys, file.name)
        keyring.engine.dispose()  # checkpoint the WAL into the main file
        _assert_absent(path.read_bytes(), keys, path.name)


# --- property: anything sealed opens ----------------------------------------------------


def test_random_seal_open_sequences_round_trip(sqlite_url: str, make: Callable[..., Keyring],
                                               key_arn: str) -> None:
    keyring = make(sqlite_url)
    tenant_ids = [new_tenant() for _ in range(3)]
    for t in tenant_ids:
        keyring.register_tenant(t, key_arn)
    operations = st.lists(st.tuples(
        st.sampled_from(tenant_ids), st.sampled_from(CATEGORIES),
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
        st.binary(max_size=600),
    ), min_size=1, max_size=8)
    examples: list[int] = []

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(operations)
    def round_trip(ops: list[tuple[str, Category, str, bytes]]) -> None:
        examples.append(len(ops))
        sealed = [(t, c, o, p, keyring.seal(t, c, o, p)) for t, c, o, p in ops]
        for t, c, o, p, envelope in reversed(sealed):
            assert keyring.open(t, c, o, envelope) == p
            with pytest.raises(DecryptionError):
                keyring.open(t, c, o + "\x00", envelope)

    round_trip()
    assert examples  # hypothesis did run (200 examples unless a profile says otherwise)
    assert calls(keyring, "GenerateDataKey") <= len(tenant_ids) * len(CATEGORIES)
    assert calls(keyring, "Decrypt") == 0
