"""The query process: one tenant query, then exit.

Started ahead of need by :class:`cmek.platform.warehouse.sandbox.QueryRunner` with a
scrubbed environment and an empty folder of its own; it says ``ready`` once its imports
are done, reads one job (JSON) from standard input, confines itself (CPU time, address
space, file size, open files), runs the query and writes one JSON answer to standard
output: ``{"result": ...}`` or ``{"error": code, "message": line}``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

import duckdb

from cmek.errors import CmekError
from cmek.platform.warehouse.connections import Target
from cmek.platform.warehouse.engines import QueryLimits, execute
from cmek.platform.warehouse.sandbox import MAX_JOB_BYTES, READY


def _data_size() -> int:
    """Bytes of private writable memory mapped now (what RLIMIT_DATA counts)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def confine(limits: QueryLimits) -> None:
    """From here on the process may use ``limits`` of CPU time and memory beyond what its
    imports took, write no file larger than a CA bundle and keep few files open. Memory is
    bounded as private writable mappings (RLIMIT_DATA), not address space: DuckDB reserves
    far more address space than it uses, and honours the limit with its own error."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + limits.cpu_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = _data_size() + limits.memory_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def answer(job: dict[str, Any]) -> dict[str, Any]:
    limits = QueryLimits(**job["limits"])
    confine(limits)
    try:
        result = execute(Target.from_json(job["target"]), str(job["sql"]), limits)
    except CmekError as e:
        return {"error": e.code, "message": e.message}
    except MemoryError:
        return {"error": "query_resources_exceeded",
                "message": "the query needed more memory than it may use"}
    return {"result": result.to_json()}


def main() -> int:
    duckdb.connect(":memory:").close()  # the engine's one-time start, before any query
    out = sys.stdout.buffer
    out.write(READY)
    out.flush()
    raw = sys.stdin.buffer.read(MAX_JOB_BYTES + 1)
    if not raw:
        return 0  # stopped while waiting: nothing to do
    reply = answer(json.loads(raw))
    out.write(json.dumps(reply, ensure_ascii=False, allow_nan=False).encode())
    out.flush()
    os._exit(0)  # the answer is out; nothing of this process needs tearing down


if __name__ == "__main__":
    sys.exit(main())
