"""``cmek demo``: the whole key lifecycle, scripted, on embedded defaults.

Create the key with the onboarding commands, provision, load data; then disable (lock),
enable (restore by restart), disable for 8 days (restore from backup), schedule deletion
(pending_deletion), cancel (restore), schedule deletion and let it run out (destroyed).
Each step prints what it saw and, for locks and restores, how long it took; the exit
status is 0 only if every step behaved.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

from cmek.platform.devrun import ADMIN, CUSTOMER, TENANT, running_demo

DAY = 86400.0


class StepFailed(Exception):
    pass


def run() -> int:
    root = Path(os.environ.get("CMEK_DEMO_DIR") or tempfile.mkdtemp(prefix="cmek-demo-"))
    with running_demo(root, verbose=False) as demo:
        kms = boto3.client("kms", endpoint_url=demo.kms_url, region_name="us-west-2",
                           aws_access_key_id=CUSTOMER[0], aws_secret_access_key=CUSTOMER[1])
        api = httpx.Client(base_url=demo.url, timeout=30, trust_env=False)
        operator = {"Authorization": f"Bearer {demo.operator_token}"}
        base = f"/v1/tenants/{TENANT}"

        def state() -> dict[str, Any]:
            return dict(api.get(f"{base}/key", headers=operator).json())

        def until(want: str, what: str) -> float:
            """Seconds from now until the platform shows ``want`` (bounded)."""
            t0 = time.perf_counter()
            while (seen := state())["state"] != want:
                if time.perf_counter() - t0 > 30:
                    raise StepFailed(f"{what}: still {seen['state']} ({seen['reason']})")
                time.sleep(0.01)  # watching for the platform's reaction
            return time.perf_counter() - t0

        def session() -> dict[str, str]:
            r = api.post(f"{base}/sessions", json={"email": ADMIN[0], "password": ADMIN[1]})
            if r.status_code != 201:
                raise StepFailed(f"sign-in refused: {r.status_code} {r.text[:200]}")
            return {"Authorization": f"Bearer {r.json()['token']}"}

        def readable() -> bool:
            r = api.get(f"{base}/objects/liveboards/overview", headers=session())
            return r.status_code == 200 and r.json()["body"]["title"] == "Sales overview"

        def step(title: str, action: Callable[[], str]) -> None:
            print(f"- {title} ... ", end="", flush=True)
            print(action(), flush=True)

        def dev_clock(seconds: float) -> str:
            api.post("/_dev/clock", json={"advance_seconds": seconds})
            return "done"

        def disable() -> str:
            kms.disable_key(KeyId=demo.key_arn)
            took = until("locked", "disable")
            r = api.get(f"{base}/objects/liveboards/overview", headers=headers)
            if r.status_code != 423:
                raise StepFailed(f"a request after the lock got {r.status_code}")
            return f"locked in {took * 1000:.0f} ms; requests get 423 {r.json()['reason']}"

        def enable(mode: str) -> str:
            kms.enable_key(KeyId=demo.key_arn)
            took = until("active", "enable")
            reason = state()["reason"]
            if reason != f"restored:{mode}" or not readable():
                raise StepFailed(f"restored as {reason}, data readable: {readable()}")
            return f"restored by {mode} in {took * 1000:.0f} ms; the liveboard reads again"

        headers = session()
        step("the demo tenant serves", lambda: "liveboard readable" if readable() else "NO")
        step("the customer disables its key", disable)
        step("the customer enables it again", lambda: enable("restart"))
        headers = session()
        api.post(f"{base}/backups", headers=headers)
        step("the customer disables its key", disable)
        step("8 days pass (platform dev clock)", lambda: dev_clock(8 * DAY))
        step("the customer enables it again", lambda: enable("from_backup"))
        headers = session()

        def schedule() -> str:
            out = kms.schedule_key_deletion(KeyId=demo.key_arn, PendingWindowInDays=7)
            took = until("pending_deletion", "schedule deletion")
            return (f"pending_deletion in {took * 1000:.0f} ms, deletion date "
                    f"{out['DeletionDate']:%Y-%m-%d}")

        def cancel() -> str:
            kms.cancel_key_deletion(KeyId=demo.key_arn)
            until("locked", "cancel deletion")
            return enable("restart")

        def run_out() -> str:
            httpx.post(f"{demo.kms_url}/_kmslocal/clock", json={"advance_seconds": 7 * DAY + 1},
                       timeout=30, trust_env=False)
            took = until("destroyed", "deletion")
            after = api.post(f"{base}/sessions", json={"email": ADMIN[0], "password": ADMIN[1]})
            if after.status_code != 423:
                raise StepFailed(f"sign-in after destruction got {after.status_code}")
            return f"destroyed in {took * 1000:.0f} ms; data keys and backups shredded"

        step("the customer schedules deletion", schedule)
        step("the customer cancels and enables", cancel)
        headers = session()
        step("the customer schedules deletion", schedule)
        step("the 7-day window runs out (kmslocal dev clock)", run_out)
        print("every step behaved")
    return 0


def main() -> int:
    try:
        return run()
    except StepFailed as e:
        print(f"FAILED: {e}")
        return 1
