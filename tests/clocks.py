"""Clocks a test moves by hand, for what runs on time (cool-downs, TTLs, leases): exact and
instant where a fixed sleep would be slow and racy."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock", "ManualUtcClock"]


class ManualClock:
    """A monotonic clock (seconds, as `time.monotonic`) that moves only when told."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.monotonic() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class ManualUtcClock:
    """A wall clock (aware UTC datetimes, as the job queue reads) that moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = datetime.now(UTC) if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
