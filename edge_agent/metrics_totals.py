"""Running totals of the agent's inferences for `GET /metrics` (edge_agent.metrics renders
them): no prometheus-client here, so the HTTP API can count from its start and import the
client only when scraped."""

from __future__ import annotations

import math
import threading
from collections import deque

from edge_agent.telemetry import LatencyTracker, LatencyWindow, version_key

__all__ = ["QUANTILES", "RECENT", "RunningTotals"]

RECENT = 1024  # latencies per version the quantiles are taken over
QUANTILES = (0.5, 0.95, 0.99)


class RunningTotals(LatencyTracker):
    """A LatencyTracker that hands every record on to the tracker it wraps and keeps, besides,
    counts since the start and each version's most recent latencies."""

    def __init__(self, inner: LatencyTracker, recent: int = RECENT) -> None:
        super().__init__(reservoir=1)
        self.inner = inner
        self.recent = recent
        self._totals_lock = threading.Lock()
        self.inferences: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def record(self, model_version: int | None, latency_ms: float, ok: bool = True) -> None:
        self.inner.record(model_version, latency_ms, ok)
        key = version_key(model_version)
        with self._totals_lock:
            self.inferences[key] = self.inferences.get(key, 0) + 1
            if not ok:
                self.failures[key] = self.failures.get(key, 0) + 1
            elif math.isfinite(latency_ms):
                held = self._recent.get(key)
                if held is None:
                    held = self._recent[key] = deque(maxlen=self.recent)
                held.append(float(latency_ms))

    def window(self, reset: bool = True) -> LatencyWindow:
        return self.inner.window(reset)

    def snapshot(self, reset: bool = True) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
        return self.inner.snapshot(reset)

    def quantiles(self) -> dict[str, dict[float, float]]:
        """Per version, the QUANTILES of its recent latencies (nearest rank)."""
        with self._totals_lock:
            held = {key: sorted(values) for key, values in self._recent.items() if values}
        out = {}
        for key, values in held.items():
            out[key] = {q: values[min(int(q * len(values)), len(values) - 1)] for q in QUANTILES}
        return out

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._totals_lock:
            return dict(self.inferences), dict(self.failures)
