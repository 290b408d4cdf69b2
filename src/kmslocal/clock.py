"""kmslocal's clock: real time plus a persisted offset that dev controls can advance.

Deletion windows and rotation periods read this clock, so a test can let 30 days pass
in a millisecond. SigV4 signature freshness deliberately uses real time instead.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable


class Clock:
    def __init__(self, offset_seconds: float = 0.0, wall: Callable[[], float] = time.time) -> None:
        self._offset = offset_seconds
        self._wall = wall

    @property
    def offset(self) -> float:
        return self._offset

    def timestamp(self) -> float:
        return self._wall() + self._offset

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp(), tz=dt.UTC)

    def real_now(self) -> dt.datetime:
        """Real time, for what must not move with the dev clock (signature freshness)."""
        return dt.datetime.fromtimestamp(self._wall(), tz=dt.UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds


def iso(ts: float) -> str:
    """CloudTrail's time format: second precision, Z suffix."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
