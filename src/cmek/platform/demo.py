"""``cmek demo``: the whole key lifecycle, scripted, on embedded defaults.

Create the key with the onboarding commands, provision, load data; then disable (lock),
enable (restore by restart), disable for 8 days (restore from backup), schedule deletion
(pending_deletion), cancel (restore), schedule deletion and let it run out (destroyed).
Each step prints what it saw and, for locks and restores, how long it took (or, with
``--json``, all of it at the end as one object); the exit status is 0 only if every step
behaved. It runs on free ports of its own, beside a ``make run`` or another demo, in a
temporary folder that it deletes at the end (it holds kmslocal's root key) unless
``--keep``, or ``CMEK_DEMO_DIR`` names a folder to use instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

from cmek.platform.devrun import ADMIN, CUSTOMER, TENANT, StartFailed, running_demo

DAY = 86400.0


class StepFailed(Exception):
    pass


def run(root: Path, steps: list[dict[str, str]], say: Callable[[str], None]) -> None:
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
            steps.append({"step": title, "result": ""})
            say(f"- {title} ... ")
            steps[-1]["result"] = action()
            say(steps[-1]["result"] + "\n")

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


def main(*, as_json: bool = False, keep: bool = False) -> int:
    given = os.environ.get("CMEK_DEMO_DIR")
    root = Path(given or tempfile.mkdtemp(prefix="cmek-demo-"))
    steps: list[dict[str, str]] = []

    def say(text: str) -> None:
        if not as_json:
            print(text, end="", flush=True)

    failure = None
    try:
        run(root, steps, say)
    except (StepFailed, StartFailed) as e:
        failure = str(e)
    finally:
        if not (keep or given):
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        print(json.dumps({"ok": failure is None, "steps": steps, "failure": failure,
                          "folder": str(root) if keep or given else None}, indent=2))
    else:
        print("every step behaved" if failure is None else f"FAILED: {failure}")
        if keep:
            print(f"kept {root}")
    return 0 if failure is None else 1
