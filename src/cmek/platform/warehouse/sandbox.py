"""Tenant SQL runs outside the platform process, one process per query.

A query process holds one tenant's connection and nothing else of the platform: no data
key, token or other tenant's secret is in its memory, and it ends with its query. It is
confined (:func:`cmek.platform.warehouse.worker.confine`): CPU time and address space
per query, and a wall-clock deadline after which it is killed. Its answer is bounded in
bytes. Processes are started ahead of need (``spare``), so a query does not wait for
Python to start; a tenant may have ``per_tenant`` queries running and the platform
``max_running`` in all, so one tenant's runaway queries never starve another's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from cmek.errors import InvalidInput
from cmek.platform.warehouse.connections import Target
from cmek.platform.warehouse.engines import QueryLimits, QueryResult, check_sql
from cmek.platform.warehouse.errors import (
    ERRORS,
    ConnectorError,
    QueryResourcesExceeded,
    QueryResultTooLarge,
    QueryTimeout,
    TooManyQueries,
)

log = logging.getLogger("cmek.platform.warehouse")
READY = b"ready\n"  # a query process says so once its imports are done
MAX_JOB_BYTES = 1 << 20
GRACE_SECONDS = 2.0  # past the query's own timeout, before its process is killed
_KILLED_BY_LIMIT = {-signal.SIGXCPU, -signal.SIGKILL, -signal.SIGXFSZ, -signal.SIGSEGV,
                    -signal.SIGABRT}


@dataclass(eq=False)
class _Process:
    popen: subprocess.Popen[bytes]
    folder: str


class QueryRunner:
    def __init__(self, limits: QueryLimits, *, max_running: int = 4, per_tenant: int = 2,
                 spare: int = 1, start_timeout: float = 30.0) -> None:
        if max_running < 1 or not 1 <= per_tenant <= max_running or spare < 0:
            raise ValueError("need max_running >= 1, 1 <= per_tenant <= max_running, "
                             "spare >= 0")
        self.limits = limits
        self.per_tenant = per_tenant
        self.spare = spare
        self.start_timeout = start_timeout
        self._slots = threading.BoundedSemaphore(max_running)
        self._running: Counter[str] = Counter()
        self._spares: list[_Process] = []
        self._live: set[_Process] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._root = tempfile.mkdtemp(prefix="cmek-queries-")

    # --- one query ------------------------------------------------------------------------
    def run(self, tenant_id: str, target: Target, sql: str) -> QueryResult:
        check_sql(sql)
        with self._tenant_slot(tenant_id):
            if not self._slots.acquire(timeout=self.limits.wall_seconds):
                raise TooManyQueries("the platform is running as many queries as it may; "
                                     "try again shortly")
            try:
                return self._run(target, sql)
            finally:
                self._slots.release()

    @contextlib.contextmanager
    def _tenant_slot(self, tenant_id: str) -> Iterator[None]:
        with self._lock:
            if self._running[tenant_id] >= self.per_tenant:
                raise TooManyQueries(f"at most {self.per_tenant} queries of a tenant run at "
                                     "once; wait for one to finish")
            self._running[tenant_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[tenant_id] -= 1
                if not self._running[tenant_id]:
                    del self._running[tenant_id]

    def _run(self, target: Target, sql: str) -> QueryResult:
        process = self._take()
        job = json.dumps({"target": target.to_json(), "sql": sql,
                          "limits": asdict(self.limits)}).encode()
        try:
            reply = _parse(self._exchange(process, job))
            if reply is None:  # no answer: why the process ended says what happened
                raise self._failure(self._exit_status(process))
            return _result(reply)
        finally:
            threading.Thread(target=self._forget, args=(process,), daemon=True).start()

    def _exchange(self, process: _Process, job: bytes) -> bytes | None:
        """Send the job, read the answer until the process closes its output: bounded in
        time and in bytes. The process is not waited for once it has answered."""
        popen = process.popen
        assert popen.stdin is not None
        assert popen.stdout is not None
        deadline = time.monotonic() + self.limits.wall_seconds + GRACE_SECONDS
        try:
            popen.stdin.write(job)
            popen.stdin.close()
        except BrokenPipeError:
            return None
        cap = self.limits.max_result_bytes + 65_536
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            ready = select.select([popen.stdout], [], [], max(0.0, remaining))[0]
            if not ready:
                self._kill(process)
                raise QueryTimeout(f"query stopped after the {self.limits.wall_seconds:g} s "
                                   "timeout")
            chunk = os.read(popen.stdout.fileno(), 65_536)
            if not chunk:
                return b"".join(chunks) or None
            size += len(chunk)
            if size > cap:
                self._kill(process)
                raise QueryResultTooLarge(f"the result is larger than "
                                          f"{self.limits.max_result_bytes} bytes")
            chunks.append(chunk)

    def _exit_status(self, process: _Process) -> int:
        try:
            return process.popen.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill(process)
            return -signal.SIGKILL

    @staticmethod
    def _failure(returncode: int) -> ConnectorError:
        if returncode in _KILLED_BY_LIMIT:
            return QueryResourcesExceeded("the query ran out of its CPU time or memory and "
                                          "was stopped")
        log.warning("a query process ended without an answer (exit %s)", returncode)
        return ConnectorError("the query process failed")

    # --- processes ------------------------------------------------------------------------
    def _take(self) -> _Process:
        with self._lock:
            process = self._spares.pop() if self._spares else None
        if process is None or process.popen.poll() is not None:
            if process is not None:
                self._forget(process)
            process = self._start()
        self._refill()
        return process

    def _start(self) -> _Process:
        try:
            folder = tempfile.mkdtemp(dir=self._root)
        except OSError:  # closed meanwhile: the root is gone
            raise ConnectorError("the platform is shutting down") from None
        env = {"PATH": os.defpath, "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
               "TZ": "UTC", "PGPASSFILE": os.path.join(folder, "none"),
               "PGSERVICEFILE": os.path.join(folder, "none"), "PGSYSCONFDIR": folder}
        popen = subprocess.Popen(
            [sys.executable, "-I", "-m", "cmek.platform.warehouse.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, cwd=folder, close_fds=True, start_new_session=True, bufsize=0)
        process = _Process(popen, folder)
        with self._lock:
            closed = self._closed
            if not closed:
                self._live.add(process)
        try:
            assert popen.stdout is not None
            ready = not closed and bool(
                select.select([popen.stdout], [], [], self.start_timeout)[0])
            ready = ready and popen.stdout.read(len(READY)) == READY
        except (OSError, ValueError):  # closed by close() while starting
            ready = False
        if not ready:
            self._forget(process)
            raise ConnectorError("a query process did not start")
        return process

    def _refill(self) -> None:
        """Start spares in the background, so the next query need not wait for one."""
        def fill() -> None:
            while True:
                with self._lock:
                    if self._closed or len(self._spares) >= self.spare:
                        return
                try:
                    process = self._start()
                except ConnectorError:
                    return
                with self._lock:
                    kept = not self._closed
                    if kept:
                        self._spares.append(process)
                if not kept:
                    self._forget(process)
                    return

        with self._lock:
            needed = not self._closed and len(self._spares) < self.spare
        if needed:
            threading.Thread(target=fill, name="cmek-query-spares", daemon=True).start()

    def _kill(self, process: _Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait()

    def _forget(self, process: _Process) -> None:
        if process.popen.poll() is None:
            self._kill(process)
        for stream in (process.popen.stdin, process.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with self._lock:
            self._live.discard(process)
        shutil.rmtree(process.folder, ignore_errors=True)

    def spare_pids(self) -> list[int]:
        """The processes started, ready and waiting for the next query (for operators and
        tests: what a query would run in)."""
        with self._lock:
            return sorted(p.popen.pid for p in self._spares if p.popen.poll() is None)

    def running(self, tenant_id: str) -> int:
        with self._lock:
            return self._running[tenant_id]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            doomed = list(self._live)
            self._spares.clear()
        for process in doomed:
            self._forget(process)
        shutil.rmtree(self._root, ignore_errors=True)


def _parse(out: bytes | None) -> dict[str, Any] | None:
    try:
        reply = json.loads(out) if out else None
    except ValueError:
        return None
    return reply if isinstance(reply, dict) and ("result" in reply or "error" in reply) else None


def _result(reply: dict[str, Any]) -> QueryResult:
    """The query process's answer: its result, or its refusal raised with the same code."""
    if "error" in reply:
        code, message = str(reply["error"]), str(reply.get("message", ""))[:300]
        if code == InvalidInput.code:
            raise InvalidInput(message)
        raise ERRORS.get(code, ConnectorError)(message)
    body = reply["result"]
    return QueryResult(columns=list(body["columns"]), rows=list(body["rows"]),
                       truncated=bool(body["truncated"]))
