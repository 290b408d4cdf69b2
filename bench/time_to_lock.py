"""Time to lock and time to restore, as the tenant sees them.

kmslocal and ``cmek serve --dev`` run as their own processes in a temporary directory, in
two modes:

- events:  kmslocal forwards the key's events to the tenant's endpoint
           (``POST /v1/tenants/{tenant}/key-events``); polling is effectively off
           (CMEK_CHECK_INTERVAL=3600). Each change comes a moment (0.5 s) after the
           platform last looked at the key, as a customer's changes do.
- events, back to back: the same, each change the moment the last one took effect. The
           platform checks a key at most once per CMEK_EVENT_CHECK_INTERVAL (0.25 s): an
           event sooner than that waits for the interval's end.
- polling: no event target; the platform polls each key every CMEK_CHECK_INTERVAL=1 s.

One tenant per mode, one stored object. Each trial:

- time to lock:    ``DisableKey`` returns -> first 423 on ``GET`` of the object
                   (probed in a loop, 5 ms between probes);
- time to restore: ``EnableKey`` returns -> a fresh login and the same ``GET`` answer 200
                   (sessions are revoked at a lock; login answers 423 while locked).

Prints p50, p99 and max per mode and whether the goals hold (lock p99 < 1 s with
events, < check_interval + 1 s with polling); writes JSON
(bench/results/time_to_lock.json).

    python bench/time_to_lock.py [--quick] [--trials 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config as BotoConfig

sys.path.insert(0, str(Path(__file__).parent))
from _servers import (
    CUSTOMER,
    OPERATOR_TOKEN,
    POLICY,
    REGION,
    ROOT,
    check,
    error_code,
    percentile,
    stack,
    subscribe,
    write_results,
)

TENANT = "bench"
ADMIN = ("admin@bench.example", "bench admin password")
OBJECT = f"/v1/tenants/{TENANT}/objects/tables/t1"
PROBE_GAP = 0.005  # between probes, so the probing itself does not swamp the platform
TRIAL_TIMEOUT = 60.0  # a trial that takes longer is a failure, not a sample
POLL_INTERVAL = 1.0
MODES = {
    "events": {"events": True, "check_interval": 3600.0, "settle": 0.5},
    "events, back to back": {"events": True, "check_interval": 3600.0, "settle": 0.0},
    "polling": {"events": False, "check_interval": POLL_INTERVAL, "settle": 0.0},
}


def login(c: httpx.Client) -> httpx.Response:
    return c.post(f"/v1/tenants/{TENANT}/sessions", json={"email": ADMIN[0],
                                                          "password": ADMIN[1]})


def setup_tenant(kms: Any, c: httpx.Client) -> tuple[str, str]:
    """Customer key, tenant, login and one object; returns (key arn, token)."""
    key_arn = str(kms.create_key(Policy=json.dumps(POLICY))["KeyMetadata"]["Arn"])
    check(c.post("/v1/tenants", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
                 json={"tenant_id": TENANT, "kms_key_arn": key_arn,
                       "admin_email": ADMIN[0], "admin_password": ADMIN[1]}), 201)
    token = str(check(login(c), 201)["token"])
    check(c.put(OBJECT, headers={"Authorization": f"Bearer {token}"},
                json={"title": "Time to lock"}), 200)
    check(c.get(OBJECT, headers={"Authorization": f"Bearer {token}"}), 200)
    return key_arn, token


def until_locked(c: httpx.Client, token: str, t0: float, odd: Counter[str]
                 ) -> tuple[float, int]:
    """Seconds from ``t0`` to the first 423, and how many probes it took; any answer
    other than 200 or 423 on the way is counted in ``odd``, not fatal."""
    headers = {"Authorization": f"Bearer {token}"}
    probes = 0
    while True:
        r = c.get(OBJECT, headers=headers)
        now = time.perf_counter()
        probes += 1
        if r.status_code == 423:
            return now - t0, probes
        if r.status_code != 200:
            odd[f"lock GET {r.status_code} {error_code(r)}"] += 1
        if now - t0 > TRIAL_TIMEOUT:
            raise SystemExit(f"no lock within {TRIAL_TIMEOUT} s")
        time.sleep(PROBE_GAP)


def until_restored(c: httpx.Client, t0: float, odd: Counter[str]) -> tuple[float, int, str]:
    """Seconds from ``t0`` to a fresh login whose GET answers 200; probes; the new token."""
    probes = 0
    while True:
        probes += 1
        r = login(c)
        if r.status_code == 201:
            token = str(r.json()["token"])
            g = c.get(OBJECT, headers={"Authorization": f"Bearer {token}"})
            now = time.perf_counter()
            if g.status_code == 200:
                return now - t0, probes, token
            if g.status_code not in (401, 423):
                odd[f"restore GET {g.status_code} {error_code(g)}"] += 1
        elif r.status_code != 423:
            odd[f"restore login {r.status_code} {error_code(r)}"] += 1
        if time.perf_counter() - t0 > TRIAL_TIMEOUT:
            raise SystemExit(f"no restore within {TRIAL_TIMEOUT} s")
        time.sleep(PROBE_GAP)


def run_mode(name: str, trials: int) -> dict[str, Any]:
    mode = MODES[name]
    lock: list[float] = []
    restore: list[float] = []
    probes = {"lock": 0, "restore": 0}
    odd: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp, \
            stack(Path(tmp), CMEK_CHECK_INTERVAL=str(mode["check_interval"]),
                  CMEK_BACKUP_INTERVAL="0") \
            as (kms_server, platform), \
            httpx.Client(base_url=platform.url, timeout=30, trust_env=False) as c:
        kms = boto3.client("kms", endpoint_url=kms_server.url, region_name=REGION,
                           aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1],
                           config=BotoConfig(retries={"total_max_attempts": 1,
                                                      "mode": "standard"}))
        key_arn, token = setup_tenant(kms, c)
        if mode["events"]:
            subscribe(kms_server.url, platform.url, TENANT, key_arn)
        for i in range(trials):
            time.sleep(float(mode["settle"]))  # the pace of the customer's changes
            kms.disable_key(KeyId=key_arn)
            seconds, n = until_locked(c, token, time.perf_counter(), odd)
            lock.append(seconds)
            probes["lock"] += n
            time.sleep(float(mode["settle"]))
            kms.enable_key(KeyId=key_arn)
            seconds, n, token = until_restored(c, time.perf_counter(), odd)
            restore.append(seconds)
            probes["restore"] += n
            print(f"  {name} trial {i + 1}/{trials}: lock {lock[-1] * 1e3:.0f} ms, "
                  f"restore {restore[-1] * 1e3:.0f} ms", file=sys.stderr)
    return {"check_interval_s": mode["check_interval"], "events": mode["events"],
            "time_to_lock": summarize(lock), "time_to_restore": summarize(restore),
            "mean_probes": {k: v / trials for k, v in probes.items()},
            "unexpected_responses": dict(odd)}


def summarize(samples: list[float]) -> dict[str, Any]:
    return {"trials": len(samples), "p50_ms": percentile(samples, 0.50) * 1e3,
            "p99_ms": percentile(samples, 0.99) * 1e3, "max_ms": max(samples) * 1e3,
            "min_ms": min(samples) * 1e3, "samples_ms": [round(s * 1e3, 2) for s in samples]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="per mode (default 50)")
    parser.add_argument("--quick", action="store_true", help="10 trials per mode")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/time_to_lock.json")
    args = parser.parse_args()
    trials = 10 if args.quick else args.trials
    if trials < 1:
        parser.error("--trials must be at least 1")
    results: dict[str, Any] = {name: run_mode(name, trials) for name in MODES}
    goals = {"events": 1000.0, "events, back to back": 1000.0,
             "polling": (POLL_INTERVAL + 1.0) * 1e3}
    print(f"Time to lock / restore (kmslocal + cmek serve, one tenant), {trials} trials "
          f"per mode, {PROBE_GAP * 1e3:.0f} ms between probes")
    print(f"{'mode':<22}{'measure':<17}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name in MODES:
        for measure in ("time_to_lock", "time_to_restore"):
            r = results[name][measure]
            print(f"{name:<22}{measure.replace('_', ' '):<17}{r['p50_ms']:>9.0f}"
                  f"{r['p99_ms']:>9.0f}{r['max_ms']:>9.0f}")
    for name in MODES:
        for what, count in results[name]["unexpected_responses"].items():
            print(f"note {name}: {count} x {what} (neither 200 nor 423)")
    met: dict[str, bool] = {}
    for name, goal_ms in goals.items():
        p99 = results[name]["time_to_lock"]["p99_ms"]
        met[name] = p99 < goal_ms
        print(f"goal {name}: time-to-lock p99 < {goal_ms:.0f} ms: "
              f"{'met' if met[name] else 'NOT met'} ({p99:.0f} ms)")
    results |= {"trials_per_mode": trials, "probe_gap_ms": PROBE_GAP * 1e3,
                "goals_ms": goals, "goals_met": met,
                "python": sys.version.split()[0], "cpus": os.cpu_count()}
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
