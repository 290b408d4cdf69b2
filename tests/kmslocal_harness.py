"""Start and stop a real kmslocal process for tests, on a free loopback port."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

REGION = "us-west-2"
PROVIDER = ("arn:aws:iam::111111111111:role/cmek-platform", "AKIAKMSLOCALPROVIDER",
            "kmslocal-dev-provider-secret")
CUSTOMER = ("arn:aws:iam::222222222222:user/key-admin", "AKIAKMSLOCALCUSTOMER",
            "kmslocal-dev-customer-secret")
PROVIDER_OTHER = ("arn:aws:iam::111111111111:role/other-service", "AKIAKMSLOCALPROVOTHER",
                  "kmslocal-test-provider-other-secret")
CUSTOMER_OTHER = ("arn:aws:iam::222222222222:user/analyst", "AKIAKMSLOCALCUSTOTHER",
                  "kmslocal-test-customer-other-secret")
THIRD = ("arn:aws:iam::333333333333:role/stranger", "AKIAKMSLOCALTHIRD",
         "kmslocal-test-third-secret")
ALL_PRINCIPALS = (PROVIDER, CUSTOMER, PROVIDER_OTHER, CUSTOMER_OTHER, THIRD)
EVENT_SECRET = "test-event-secret-7f3a"
Delivery = tuple[dict[str, str], dict[str, Any]]  # the request's headers, the event


def event_name(event: dict[str, Any]) -> str:
    """The API call's name, or the detail-type of KMS's own events."""
    if event.get("detail-type") == "AWS API Call via CloudTrail":
        return str(event["detail"].get("eventName"))
    return str(event.get("detail-type"))


def about(arn: str) -> Callable[[dict[str, Any]], bool]:
    """Keeps the events about one key."""
    return lambda event: arn in event.get("resources", [])


def has_events(*names: str) -> Callable[[list[Delivery]], bool]:
    """Done once each of ``names`` was delivered."""
    return lambda got: set(names) <= {event_name(e) for _, e in got}


def header(headers: dict[str, str], name: str = "X-Cmek-Event-Secret") -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


class EventSink:
    """An HTTP receiver standing in for the platform's key-events endpoint.

    The next ``fail_next`` deliveries are answered ``fail_status`` and recorded in
    ``refused`` (status, event); the others are accepted and queued in ``events``.
    """

    def __init__(self, port: int = 0) -> None:
        self.events: queue.Queue[tuple[dict[str, str], dict[str, Any]]] = queue.Queue()
        self.fail_next = 0
        self.fail_status = 503
        self.refused: list[tuple[int, dict[str, Any]]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.fail_next > 0:
                    sink.fail_next -= 1
                    sink.refused.append((sink.fail_status, json.loads(body)))
                    self.send_response(sink.fail_status)
                    self.end_headers()
                    return
                sink.events.put((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/key-events"
        # A short poll interval: close() waits for the serving loop to notice.
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def collect(
        self, done: Callable[[list[Delivery]], bool],
        keep: Callable[[dict[str, Any]], bool] = lambda event: True, timeout: float = 10.0,
    ) -> list[Delivery]:
        """Deliveries that ``keep`` accepts, in arrival order, until ``done`` says enough;
        the others are dropped. Waits on deliveries, not on time passing."""
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while not done(got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [event_name(e) for _, e in got]
                raise AssertionError(f"expected events were not delivered; got {names}")
            try:
                headers, event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if keep(event):
                got.append((headers, event))
        return got

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
                 ) -> Delivery:
        """The first delivery that matches."""
        return self.collect(bool, predicate, timeout)[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class KmsLocal:
    data_dir: Path
    config_path: Path | None
    dev: bool = True
    url: str = ""
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    port: int = 0  # 0: a free port at each start; fixed: a restart keeps the endpoint

    def start(self) -> None:
        cmd = [sys.executable, "-m", "kmslocal.cli", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if self.dev:
            cmd.append("--dev")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process, self.url = spawn(cmd, env, "kmslocal listening on ", self.output)

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, principal: tuple[str, str, str], service: str = "kms", **cfg: Any) -> Any:
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=principal[1], aws_secret_access_key=principal[2],
            config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}, **cfg),
        )

    def dev_call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def advance(self, seconds: float) -> str:
        return str(self.dev_call("POST", "/_kmslocal/clock", {"advance_seconds": seconds})["now"])

    def set_event_targets(self, targets: list[dict[str, Any]]) -> None:
        """Replace the event targets registered at run time (the config file's stay).

        Each is ``{"account", "url", "secret_header"?, "secret"?, "resources"?}``.
        """
        self.dev_call("PUT", "/_kmslocal/event-targets", {"targets": targets})

    def add_event_target(self, target: dict[str, Any]) -> None:
        """Add one run-time event target, or replace the one with the same url."""
        self.dev_call("POST", "/_kmslocal/event-targets", target)

    def remove_event_target(self, url: str) -> None:
        """Remove the run-time event target with this url; its waiting events go too."""
        self.dev_call("DELETE", "/_kmslocal/event-targets?" + urllib.parse.urlencode(
            {"url": url}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], env: dict[str, str], ready: str,
          output: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start a server process, wait for its ``ready`` line (which ends with its URL), then
    keep reading its output so the pipe never fills."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        if line.startswith(ready):
            url = line.split()[-1]
            break
    else:
        raise RuntimeError(f"{cmd[2]} did not start:\n" + "".join(output))

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return proc, url


def stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_config(path: Path, event_url: str | None, event_secret: str = EVENT_SECRET) -> Path:
    lines = [f'region = "{REGION}"', ""]
    for arn, akid, secret in ALL_PRINCIPALS:
        lines += ["[[principals]]", f'arn = "{arn}"', f'access_key_id = "{akid}"',
                  f'secret_access_key = "{secret}"', ""]
    if event_url:
        lines += ["[[event_targets]]", 'account = "222222222222"', f'url = "{event_url}"',
                  'secret_header = "X-Cmek-Event-Secret"', f'secret = "{event_secret}"', ""]
    path.write_text("\n".join(lines))
    return path
