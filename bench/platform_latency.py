"""Platform HTTP latency on the embedded default (kmslocal + SQLite + local folder).

kmslocal and ``cmek serve`` run as their own processes in a temporary directory; one
tenant is provisioned and loaded with 500 table objects over the API. Then, for each of
two operations, 8 client threads (one keep-alive httpx.Client each) make a fixed number
of requests between them:

- metadata: ``GET /v1/tenants/{t}/objects/tables/{id}`` of a random table
- search:   ``GET /v1/tenants/{t}/search?q=...`` with one of a few queries

Prints p50, p99, mean and max latency and requests/s; writes JSON
(bench/results/platform_latency.json).

    python bench/platform_latency.py [--quick] [--requests 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
from _servers import (
    CUSTOMER,
    OPERATOR_TOKEN,
    POLICY,
    REGION,
    ROOT,
    check,
    kmslocal,
    percentile,
    platform_env,
    spawn,
    write_results,
)

TENANT = "bench"
ADMIN = ("admin@bench.example", "bench admin password")
TOPICS = ["revenue", "orders", "customers", "inventory", "churn", "marketing", "billing"]
COLUMNS = ["customer_id", "order_id", "order_total", "region", "revenue_usd", "product_sku",
           "quantity", "discount_pct", "created_at", "country", "segment", "invoice_id",
           "churn_flag", "campaign", "channel", "amount_usd"]
QUERIES = ["revenue", "customer", "order total", "reg", "inventory", "churn", "amount usd",
           "campaign channel", "seg", "table 42"]


@contextmanager
def platform(kms_url: str, data_dir: Path) -> Iterator[str]:
    """``cmek serve`` (not ``--dev``) on a free port, with the default settings."""
    cmd = [sys.executable, "-m", "cmek.cli", "serve", "--port", "0"]
    with spawn(cmd, platform_env(kms_url, data_dir), "cmek listening on ") as server:
        yield server.url


def setup_tenant(kms_url: str, url: str, tables: int, rng: random.Random) -> tuple[str, float]:
    """Customer key, tenant, login and ``tables`` table objects; returns (token, load s)."""
    kms = boto3.client("kms", endpoint_url=kms_url, region_name=REGION,
                       aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1])
    key_arn = kms.create_key(Policy=json.dumps(POLICY))["KeyMetadata"]["Arn"]
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        check(c.post("/v1/tenants", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
                     json={"tenant_id": TENANT, "kms_key_arn": key_arn,
                           "admin_email": ADMIN[0], "admin_password": ADMIN[1]}), 201)
        token = check(c.post(f"/v1/tenants/{TENANT}/sessions",
                             json={"email": ADMIN[0], "password": ADMIN[1]}), 201)["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        t0 = time.perf_counter()
        for i in range(tables):
            topic = rng.choice(TOPICS)
            check(c.put(f"/v1/tenants/{TENANT}/objects/tables/t{i}", json={
                "title": f"Table {i} {topic}",
                "description": f"Daily {topic} figures by {rng.choice(['region', 'segment'])}",
                "connection": "warehouse",
                "columns": rng.sample(COLUMNS, rng.randint(5, 10))}))
        return str(token), time.perf_counter() - t0


def metadata_path(rng: random.Random, tables: int) -> str:
    return f"/v1/tenants/{TENANT}/objects/tables/t{rng.randrange(tables)}"


def search_path(rng: random.Random, tables: int) -> str:
    return f"/v1/tenants/{TENANT}/search?q={rng.choice(QUERIES)}"


def run(url: str, token: str, path: Callable[[random.Random, int], str], tables: int,
        requests: int, clients: int, seed: int) -> tuple[list[float], float, int]:
    """``requests`` GETs split over ``clients`` threads; (latencies s, wall s, hits)."""
    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    hits = [0] * clients
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        paths = [path(rng, tables) for _ in range(share[i])]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=60, trust_env=False) as c:
            c.get("/healthz")  # open the keep-alive connection before the clock starts
            start.wait()
            for p in paths:
                t0 = time.perf_counter()
                r = c.get(p)
                latencies[i].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"GET {p}: {r.status_code} {r.text[:200]}")
                    return
                hits[i] += len(r.json().get("hits", ()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(errors[0])
    return [s for per in latencies for s in per], wall, sum(hits)


def summarize(samples: list[float], wall: float) -> dict[str, Any]:
    return {"requests": len(samples), "p50_ms": percentile(samples, 0.50) * 1e3,
            "p99_ms": percentile(samples, 0.99) * 1e3,
            "mean_ms": statistics.fmean(samples) * 1e3, "max_ms": max(samples) * 1e3,
            "requests_per_s": len(samples) / wall, "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 requests per operation")
    parser.add_argument("--requests", type=int, help="per operation, over all clients")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tables", type=int, default=500)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench/results/platform_latency.json")
    args = parser.parse_args()
    requests = args.requests or (400 if args.quick else 2000)
    warmup = min(200, requests)
    rng = random.Random(7)
    results: dict[str, Any] = {}
    ops = {"metadata GET": metadata_path, "search": search_path}
    with kmslocal() as kms_url, tempfile.TemporaryDirectory() as tmp, \
            platform(kms_url, Path(tmp)) as url:
        token, load_s = setup_tenant(kms_url, url, args.tables, rng)
        for n, (op, path) in enumerate(ops.items()):
            run(url, token, path, args.tables, warmup, args.clients, seed=100 + n)
            samples, wall, hits = run(url, token, path, args.tables, requests, args.clients,
                                      seed=n)
            results[op] = summarize(samples, wall)
            if op == "search":
                results[op]["mean_hits"] = hits / len(samples)
    print(f"Platform HTTP latency (kmslocal + SQLite + local folder), {args.tables} tables, "
          f"{args.clients} clients, {requests} requests per operation")
    print(f"{'operation':<14}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'max ms':>9}{'req/s':>9}")
    for op in ops:
        r = results[op]
        print(f"{op:<14}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['mean_ms']:>9.2f}"
              f"{r['max_ms']:>9.2f}{r['requests_per_s']:>9.0f}")
    print(f"(loading {args.tables} tables with sequential PUTs took {load_s:.1f} s)")
    results |= {"tables": args.tables, "clients": args.clients,
                "requests_per_operation": requests, "warmup_requests": warmup,
                "load_seconds": load_s, "queries": QUERIES,
                "python": sys.version.split()[0], "cpus": os.cpu_count()}
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
