"""cmek's record and stream crypto against the alternatives, in one run.

1. seal+open of 64 B, 1 KiB, 16 KiB and 1 MiB records through cmek's public API
   (warm data-key cache), raw `cryptography` AESGCM encrypt+decrypt,
   aws-encryption-sdk 4.x (caching materials manager, committing non-signing suite
   AES_256_GCM_HKDF_SHA512_COMMIT_KEY, raw AES wrapping key: no KMS in the loop), and
   Tink AEAD (AES256_GCM).
2. stream seal and open of a 256 MiB object against raw AESGCM over the same bytes in
   the same chunk size; peak RSS growth while streaming 1 GiB (separate process).
3. KMS calls for 100,000 seal/open operations over 100 tenants x 3 categories, counted
   from kmslocal's usage log (CloudTrail LookupEvents), not from cmek's counters.

    python bench/crypto_compare.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import cmek
from cmek.clock import ManualClock
from cmek.kms import KmsSettings

sys.path.insert(0, str(Path(__file__).parent))
from _servers import CUSTOMER, POLICY, PROVIDER, ROOT, kmslocal, write_results

SIZES = {"64 B": 64, "1 KiB": 1024, "16 KiB": 16 * 1024, "1 MiB": 1024 * 1024}


def per_op(fn: Callable[[], object], budget: float) -> float:
    """Median seconds per call over batches filling roughly ``budget`` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, int(budget / 7 / one))
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
    return sorted(samples)[3]


def esdk_pair() -> Callable[[bytes], None]:
    import aws_encryption_sdk
    from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
    from aws_encryption_sdk.identifiers import (
        Algorithm,
        CommitmentPolicy,
        EncryptionKeyType,
        WrappingAlgorithm,
    )
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
    from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager

    secret = os.urandom(32)

    class StaticProvider(RawMasterKeyProvider):  # type: ignore[misc]
        provider_id = "bench"

        def _get_raw_key(self, key_id: bytes) -> WrappingKey:
            return WrappingKey(WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING, secret,
                               EncryptionKeyType.SYMMETRIC)

    provider = StaticProvider()
    provider.add_master_key(b"k1")
    cmm = CachingCryptoMaterialsManager(
        master_key_provider=provider, cache=LocalCryptoMaterialsCache(100), max_age=3600.0,
        max_messages_encrypted=2**31,
    )
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    context = {"tenant": "acme", "category": "metadata"}

    def run(data: bytes) -> None:
        ct, _ = client.encrypt(source=data, materials_manager=cmm, encryption_context=context,
                               algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY)
        pt, _ = client.decrypt(source=ct, materials_manager=cmm)
        assert pt == data

    return run


def tink_pair() -> Callable[[bytes], None]:
    import tink
    from tink import aead

    aead.register()
    primitive = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
    ad = b"acme/metadata/object-1"
    return lambda data: primitive.decrypt(primitive.encrypt(data, ad), ad) and None


def raw_pair() -> Callable[[bytes], None]:
    aes = AESGCM(AESGCM.generate_key(bit_length=256))

    def run(data: bytes) -> None:
        nonce = os.urandom(12)
        aes.decrypt(nonce, aes.encrypt(nonce, data, b"ad"), b"ad")

    return run


def make_key(url: str) -> str:
    customer = boto3.client("kms", endpoint_url=url, region_name="us-west-2",
                            aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1])
    return str(customer.create_key(Policy=json.dumps(POLICY))["KeyMetadata"]["Arn"])


def provider_keyring(url: str, workdir: str, name: str) -> Any:
    settings = KmsSettings(region="us-west-2", endpoint_url=url, access_key_id=PROVIDER[0],
                           secret_access_key=PROVIDER[1])
    return cmek.connect(f"sqlite:///{workdir}/{name}.sqlite3", settings, clock=ManualClock(),
                        data_key_ttl=86400.0)


def bench_records(url: str, workdir: str, budget: float) -> dict[str, Any]:
    keyring = provider_keyring(url, workdir, "records")
    keyring.register_tenant("acme", make_key(url))

    def cmek_pair(data: bytes) -> None:
        keyring.open("acme", "metadata", "object-1",
                     keyring.seal("acme", "metadata", "object-1", data))

    impls = {"raw AESGCM": raw_pair(), "cmek": cmek_pair, "Tink AEAD": tink_pair(),
             "aws-encryption-sdk": esdk_pair()}
    table: dict[str, dict[str, float]] = {}
    for label, size in SIZES.items():
        data = os.urandom(size)
        table[label] = {name: per_op(lambda f=f, d=data: f(d), budget) * 1e6
                        for name, f in impls.items()}
    return table


class _Zeros(io.RawIOBase):
    """An object of ``size`` bytes that is never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Sink(io.RawIOBase):
    """Discards what it is given; with ``sample_rss`` it also tracks the process's RSS."""

    def __init__(self, sample_rss: bool = False) -> None:
        self.count = 0
        self.sample_rss = sample_rss
        self.peak_rss = rss_bytes() if sample_rss else 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.count += len(b)
        if self.sample_rss:
            self.peak_rss = max(self.peak_rss, rss_bytes())
        return len(b)


def bench_stream(url: str, workdir: str, size: int) -> dict[str, Any]:
    from cmek.crypto import DEFAULT_CHUNK

    keyring = provider_keyring(url, workdir, "stream")
    keyring.register_tenant("acme", make_key(url))
    data = os.urandom(size)
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    t0 = time.perf_counter()
    for off in range(0, size, DEFAULT_CHUNK):
        aes.encrypt(b"\0" * 12, data[off:off + DEFAULT_CHUNK], b"")
    raw_seal = time.perf_counter() - t0
    sealed = io.BytesIO()
    keyring.seal_stream("acme", "backups", "obj", io.BytesIO(data), sealed)
    t0 = time.perf_counter()  # to a sink, as the raw loop keeps nothing either
    keyring.seal_stream("acme", "backups", "obj", io.BytesIO(data), _Sink())
    cmek_seal = time.perf_counter() - t0
    chunks = [aes.encrypt(b"\0" * 12, data[o:o + DEFAULT_CHUNK], b"")
              for o in range(0, size, DEFAULT_CHUNK)]
    t0 = time.perf_counter()
    for c in chunks:
        aes.decrypt(b"\0" * 12, c, b"")
    raw_open = time.perf_counter() - t0
    sealed.seek(0)
    t0 = time.perf_counter()
    keyring.open_stream("acme", "backups", "obj", sealed, _Sink())
    cmek_open = time.perf_counter() - t0
    mib = size / 2**20
    return {
        "size_mib": mib, "chunk_bytes": DEFAULT_CHUNK,
        "seal_mib_s": {"cmek": mib / cmek_seal, "raw AESGCM": mib / raw_seal},
        "open_mib_s": {"cmek": mib / cmek_open, "raw AESGCM": mib / raw_open},
    }


RSS_CHILD = r"""
import io, json, sys
sys.path.insert(0, sys.argv[3])
from crypto_compare import _Sink, _Zeros, provider_keyring, rss_bytes
url, workdir, size = sys.argv[1], sys.argv[2], int(sys.argv[4])
keyring = provider_keyring(url, workdir, "rss")
keyring.register_tenant("acme", sys.argv[5])
keyring.seal("acme", "backups", "warm", b"x")
before = rss_bytes()
path = workdir + "/big.sealed"


class SampledFile(io.FileIO):
    def write(self, b):
        sink.peak_rss = max(sink.peak_rss, rss_bytes())
        return super().write(b)


sink = _Sink(sample_rss=True)
with SampledFile(path, "wb") as out:
    keyring.seal_stream("acme", "backups", "big", io.BufferedReader(_Zeros(size)), out)
with open(path, "rb") as src:
    n = keyring.open_stream("acme", "backups", "big", src, sink)
print(json.dumps({"bytes": n, "rss_before_mib": before / 2**20,
                  "rss_growth_mib": (sink.peak_rss - before) / 2**20}))
"""


def bench_rss(url: str, workdir: str, size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, url, workdir, str(Path(__file__).parent), str(size),
         make_key(url)], capture_output=True, text=True, check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    os.unlink(f"{workdir}/big.sealed")
    assert result["bytes"] == size
    return result


def bench_kms_calls(url: str, workdir: str, ops: int) -> dict[str, Any]:
    keyring = provider_keyring(url, workdir, "calls")
    key = make_key(url)
    run_id = os.urandom(3).hex()
    tenants = [f"t{run_id}-{i:03d}" for i in range(100)]
    for t in tenants:
        keyring.register_tenant(t, key)
    categories = ("metadata", "search_index", "warehouse_data")
    slots = [(t, c) for t in tenants for c in categories]
    sealed: dict[tuple[str, str], bytes] = {}
    for i in range(ops):
        t, c = slots[i % len(slots)]
        if i % 2 == 0 or (t, c) not in sealed:
            sealed[(t, c)] = keyring.seal(t, c, "obj", b"payload %d" % i)
        else:
            keyring.open(t, c, "obj", sealed[(t, c)])
    trail = boto3.client("cloudtrail", endpoint_url=url, region_name="us-west-2",
                         aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1])
    counts: dict[str, int] = {}
    mine = set(tenants)
    for name in ("GenerateDataKey", "Decrypt"):
        n = 0
        for page in trail.get_paginator("lookup_events").paginate(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": name}]
        ):
            for event in page["Events"]:
                record = json.loads(event["CloudTrailEvent"])
                ctx = (record.get("requestParameters") or {}).get("encryptionContext") or {}
                n += ctx.get("cmek:tenant") in mine
        counts[name] = n
    return {"operations": ops, "tenants": len(tenants), "categories": len(categories),
            "kms_calls_from_usage_log": counts}


def main() -> int:
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") is None:
        # glibc maps blocks over its mmap threshold fresh each time and returns the heap
        # top to the OS past its trim threshold; a loop that allocates and frees 256 KiB
        # to 1 MiB blocks then page-faults them in on every turn. Every implementation here
        # shares these settings, so the run measures the crypto, not the allocator.
        env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
               "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/crypto_compare.json")
    args = parser.parse_args()
    budget = 0.1 if args.quick else 0.6
    stream_size = (32 if args.quick else 256) * 2**20
    rss_size = (64 if args.quick else 1024) * 2**20
    ops = 10_000 if args.quick else 100_000
    with kmslocal() as url, tempfile.TemporaryDirectory() as workdir:
        results = {
            "records_us_per_seal_open": bench_records(url, workdir, budget),
            "stream": bench_stream(url, workdir, stream_size),
            "stream_rss": bench_rss(url, workdir, rss_size),
            "kms_calls": bench_kms_calls(url, workdir, ops),
        }
    rec = results["records_us_per_seal_open"]
    names = list(next(iter(rec.values())))
    print("seal+open per record, microseconds (median of 7 batches)")
    print(f"{'size':<8}" + "".join(f"{n:>20}" for n in names) + f"{'cmek/raw':>10}"
          + f"{'esdk/cmek':>11}")
    for label, row in rec.items():
        print(f"{label:<8}" + "".join(f"{row[n]:>20.1f}" for n in names)
              + f"{row['cmek'] / row['raw AESGCM']:>10.2f}"
              + f"{row['aws-encryption-sdk'] / row['cmek']:>11.1f}")
    s = results["stream"]
    print(f"\nstream of {s['size_mib']:.0f} MiB, {s['chunk_bytes'] // 1024} KiB chunks, MiB/s")
    for what in ("seal_mib_s", "open_mib_s"):
        row = s[what]
        print(f"  {what[:4]}: cmek {row['cmek']:.0f}  raw AESGCM {row['raw AESGCM']:.0f}  "
              f"ratio {row['cmek'] / row['raw AESGCM']:.2f}")
    r = results["stream_rss"]
    print(f"peak RSS growth streaming {r['bytes'] / 2**30:.2f} GiB: {r['rss_growth_mib']:.1f} MiB")
    k = results["kms_calls"]
    print(f"\nKMS calls for {k['operations']:,} seal/open over {k['tenants']} tenants x "
          f"{k['categories']} categories (from the usage log): {k['kms_calls_from_usage_log']}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
