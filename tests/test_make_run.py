"""`make run`'s demo: kmslocal and the platform together, a demo tenant provisioned with
a key made by the onboarding commands, sample data loaded; driven here over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.kmslocal_harness import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_demo_tenant_over_http(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CMEK_"))},
           "CMEK_RUN_DIR": str(tmp_path / "run"), "KMSLOCAL_PORT": str(free_port()),
           "CMEK_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cmek.platform.devrun"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("more:"):
                break
        text = "".join(lines)
        api = re.search(r"platform API\s+(http://\S+)", text)
        assert api is not None, text
        base = api.group(1)
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as c:
            login = c.post("/v1/tenants/demo/sessions", json={
                "email": "analyst@demo.example", "password": "demo analyst password"})
            assert login.status_code == 201, login.text
            c.headers["Authorization"] = f"Bearer {login.json()['token']}"
            board = c.get("/v1/tenants/demo/objects/liveboards/overview").json()["body"]
            assert board["answers"] == ["revenue-by-region", "orders-by-month"]
            answer = c.get("/v1/tenants/demo/objects/answers/revenue-by-region").json()["body"]
            rows = c.post("/v1/tenants/demo/connections/warehouse/query",
                          json={"sql": answer["sql"]}).json()["rows"]
            assert rows[0][0] == "amer"
            hits = c.get("/v1/tenants/demo/search", params={"q": "revenue"}).json()["hits"]
            assert {h["id"] for h in hits} >= {"revenue-by-region"}
            assert len(c.get("/v1/tenants/demo/schedules").json()["schedules"]) == 1
            tables = c.get("/v1/tenants/demo/objects/tables").json()["objects"]
            assert [t["id"] for t in tables] == ["customers", "orders"]
        the_banners_commands_run(text, tmp_path)
        beside_it(env, tmp_path, base)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0


def the_banners_commands_run(banner: str, tmp_path: Path) -> None:
    """What the banner says to try runs as written, in another shell in the project
    folder (`cmek demo` runs in beside_it)."""
    block = banner.split("\ntry, in another shell in this folder:\n", 1)[1]
    lines = [line.removeprefix("  ") for line in block.splitlines()
             if line.startswith("  ") and "cmek demo" not in line]
    script = "set -euo pipefail\n" + "\n".join(lines)
    cwd = ROOT
    if not (ROOT / ".venv" / "bin" / "activate").exists():  # tests run from another venv
        cwd = tmp_path
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / "bin" / "activate").write_text(
            f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    key, _ = json.JSONDecoder().raw_decode(run.stdout)  # curl's answer, then cmek usage's
    assert key["state"] == "active"
    assert re.search(r"GenerateDataKey\s+\S+\s+demo", run.stdout), run.stdout


def beside_it(env: dict[str, str], tmp_path: Path, base: str) -> None:
    """With `make run` up: `cmek demo` runs beside it on ports of its own; a second
    `make run` on the same ports, or in the same folder, is refused before it touches
    anything, saying which port or folder and how to choose others."""
    demo = subprocess.run([sys.executable, "-m", "cmek.cli", "demo", "--json"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert json.loads(demo.stdout)["ok"] is True
    second = subprocess.run([sys.executable, "-m", "cmek.platform.devrun"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"port {env['KMSLOCAL_PORT']} (KMSLOCAL_PORT) is in use" in second.stderr
    assert "CMEK_RUN_DIR" in second.stderr
    same_folder = {**env, "KMSLOCAL_PORT": str(free_port()), "CMEK_PORT": str(free_port())}
    third = subprocess.run([sys.executable, "-m", "cmek.platform.devrun"], env=same_folder,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 1
    assert "(CMEK_RUN_DIR) is in use by another `make run`" in third.stderr
    assert "Traceback" not in second.stderr + third.stderr
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as c:  # the first serves on
        assert c.get("/healthz").status_code == 200
    assert (tmp_path / "run" / "platform" / "control.sqlite3").exists()
