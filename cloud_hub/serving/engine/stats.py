"""An endpoint's counters: requests, errors, rows, latency, and what its steps counted."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import numpy as np


class EndpointStats:
    def __init__(self, latency_window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.rows = 0
        self.steps: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._latency: deque[float] = deque(maxlen=latency_window)

    def ok(
        self, rows: int, latency_ms: float, trace: list[str], counters: Mapping[str, int]
    ) -> None:
        with self._lock:
            self.requests += 1
            self.rows += rows
            self.steps.update(trace)
            self.counters.update(counters)
            self._latency.append(latency_ms)

    def error(self, kind: str) -> None:
        with self._lock:
            self.requests += 1
            self.errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.asarray(self._latency, dtype=np.float64)
            return {
                "requests": self.requests,
                "errors": dict(self.errors),
                "rows": self.rows,
                "step_runs": dict(self.steps),
                "counters": dict(self.counters),
                "latency_ms": {
                    "p50": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
                    "p99": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
                },
            }
