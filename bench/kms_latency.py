"""KMS call latency over loopback: kmslocal against moto's server, in one run.

Each server runs as its own process; one boto3 client per server makes N sequential
GenerateDataKey calls, then N Decrypt calls of those data keys. Prints a table and
writes JSON (bench/results/kms_latency.json).

    python bench/kms_latency.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from _servers import CUSTOMER, ROOT, free_port, kmslocal, percentile, wait_ready, write_results
from botocore.config import Config

CONTEXT = {"cmek:tenant": "acme", "cmek:category": "metadata", "cmek:epoch": "1"}


@contextmanager
def moto() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/moto-api/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def measure(url: str, akid: str, secret: str, calls: int) -> dict[str, Any]:
    client = boto3.client(
        "kms", endpoint_url=url, region_name="us-west-2", aws_access_key_id=akid,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    key = client.create_key()["KeyMetadata"]["KeyId"]
    for _ in range(50):  # warm up connections and caches
        blob = client.generate_data_key(KeyId=key, KeySpec="AES_256",
                                        EncryptionContext=CONTEXT)["CiphertextBlob"]
        client.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    gdk: list[float] = []
    blobs: list[bytes] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = client.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=CONTEXT)
        gdk.append(time.perf_counter() - t0)
        blobs.append(out["CiphertextBlob"])
    dec: list[float] = []
    for blob in blobs:
        t0 = time.perf_counter()
        client.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
        dec.append(time.perf_counter() - t0)
    return {
        op: {"median_ms": statistics.median(s) * 1e3, "p99_ms": percentile(s, 0.99) * 1e3,
             "calls": len(s)}
        for op, s in (("GenerateDataKey", gdk), ("Decrypt", dec))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/kms_latency.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with kmslocal() as url:
        results["kmslocal"] = measure(url, *CUSTOMER, args.calls)
    with moto() as url:
        results["moto"] = measure(url, "testing", "testing", args.calls)
    print(f"KMS latency over loopback, {args.calls} sequential boto3 calls per operation")
    print(f"{'operation':<18}{'server':<10}{'median ms':>10}{'p99 ms':>9}")
    for op in ("GenerateDataKey", "Decrypt"):
        for name in ("kmslocal", "moto"):
            r = results[name][op]
            print(f"{op:<18}{name:<10}{r['median_ms']:>10.3f}{r['p99_ms']:>9.3f}")
        ratio = results["kmslocal"][op]["median_ms"] / results["moto"][op]["median_ms"]
        results.setdefault("ratio_kmslocal_to_moto_median", {})[op] = ratio
        print(f"{op:<18}{'ratio':<10}{ratio:>10.2f}   (kmslocal median / moto median)")
    results["calls"] = args.calls
    results["python"] = sys.version.split()[0]
    results["cpus"] = os.cpu_count()
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
