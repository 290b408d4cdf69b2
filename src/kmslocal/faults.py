"""Injected failures for reliability tests of KMS clients (dev mode only)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

from kmslocal.exceptions import KMSError

ERRORS = (
    "ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
    "KeyUnavailableException", "timeout",
)
_MESSAGES = {
    "ThrottlingException": "Rate exceeded",
    "KMSInternalException": "An internal error occurred (injected fault)",
    "DependencyTimeoutException": "The request timed out (injected fault)",
    "KeyUnavailableException": "The key is unavailable (injected fault)",
}
DEFAULT_HANG = 60.0


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    operations: frozenset[str]
    error: str | None
    rate: float
    latency_ms: int
    remaining: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "operations": sorted(self.operations), "error": self.error, "rate": self.rate,
            "latency_ms": self.latency_ms, "count": self.remaining,
        }


def parse(spec: Any) -> Fault:
    if not isinstance(spec, dict):
        raise FaultSpecError("body must be a JSON object")
    unknown = set(spec) - {"operations", "error", "rate", "latency_ms", "count"}
    if unknown:
        raise FaultSpecError(f"unknown fields: {sorted(unknown)}")
    ops = spec.get("operations", [])
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise FaultSpecError("operations must be a list of operation names")
    error = spec.get("error")
    if error is not None and error not in ERRORS:
        raise FaultSpecError(f"error must be one of {list(ERRORS)}")
    rate = spec.get("rate", 1.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise FaultSpecError("rate must be a number from 0.0 to 1.0")
    latency = spec.get("latency_ms", 0)
    if not isinstance(latency, int) or isinstance(latency, bool) or not 0 <= latency <= 600_000:
        raise FaultSpecError("latency_ms must be an integer from 0 to 600000")
    count = spec.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise FaultSpecError("count must be a positive integer")
    if error is None and latency == 0:
        raise FaultSpecError("a fault needs an error, a latency_ms, or both")
    return Fault(frozenset(ops), error, float(rate), latency, count)


class Faults:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.active: list[Fault] = []
        self._rng = rng or random.Random()
        self._cleared = asyncio.Event()

    def add(self, fault: Fault) -> None:
        self._cleared.clear()
        self.active.append(fault)

    def clear(self) -> None:
        self.active.clear()
        self._cleared.set()

    async def apply(self, operation: str) -> None:
        for fault in list(self.active):
            if fault.operations and operation not in fault.operations:
                continue
            if self._rng.random() >= fault.rate:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.active.remove(fault)
            if fault.error == "timeout":
                await self._hang(fault.latency_ms / 1000 if fault.latency_ms else DEFAULT_HANG)
                raise KMSError("DependencyTimeoutException", "The request timed out")
            if fault.latency_ms:
                await self._hang(fault.latency_ms / 1000)
            if fault.error is not None:
                raise KMSError(fault.error, _MESSAGES[fault.error])

    async def _hang(self, seconds: float) -> None:
        """Wait out the latency, or less if the faults are cleared meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cleared.wait(), seconds)
