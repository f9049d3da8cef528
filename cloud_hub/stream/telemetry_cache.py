"""Each device's newest telemetry numbers, kept in memory for the live views.

Fed by the fleet service after each stored batch; the newest record (by the device's clock)
wins, so a batch resent after an outage never moves a device back in time. The inference rate
is a record's inferences over the time since the device's previous record. After a hub restart
a device's numbers come back with its next batch (every few seconds); the history stays in the
metrics store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from cloud_hub.fleet.metrics_store import metrics_of
from cloud_hub.stream.events import TelemetryLive
from edge_agent.core.wire import TelemetryRecord

__all__ = ["TelemetryCache"]

MAX_RATE_GAP_S = 600.0  # a longer gap between records says nothing about the current rate


class TelemetryCache:
    def __init__(self) -> None:
        self._latest: dict[str, TelemetryLive] = {}
        self._lock = threading.Lock()

    def update(
        self, device_id: str, records: Sequence[TelemetryRecord], *, now: float | None = None
    ) -> TelemetryLive | None:
        """Fold a batch that arrived at `now` in; returns the device's numbers when they
        changed, else None."""
        if not records:
            return None
        ordered = sorted(records, key=lambda r: r.ts)
        with self._lock:
            current = self._latest.get(device_id)
            prev_ts = None if current is None else current.telemetry_ts
            if prev_ts is not None and ordered[-1].ts <= prev_ts:
                return None  # nothing newer than what is shown
            live = current
            for record in ordered:
                if prev_ts is not None and record.ts <= prev_ts:
                    continue
                live = self._fold(device_id, record, prev_ts, live)
                prev_ts = record.ts
            assert live is not None
            live.last_seen = time.time() if now is None else now
            self._latest[device_id] = live
            return live

    @staticmethod
    def _fold(
        device_id: str,
        record: TelemetryRecord,
        prev_ts: float | None,
        current: TelemetryLive | None,
    ) -> TelemetryLive:
        m = metrics_of(record)
        rate = None
        if "inferences" in m and prev_ts is not None and 0 < record.ts - prev_ts <= MAX_RATE_GAP_S:
            rate = round(m["inferences"] / (record.ts - prev_ts), 3)
        elif "inferences" not in m and prev_ts is not None:
            rate = 0.0  # a record without inferences: none were made
        if rate is None and current is not None:
            rate = current.inferences_per_s

        def whole(name: str) -> int | None:
            return None if name not in m else int(m[name])

        return TelemetryLive(
            id=device_id,
            telemetry_ts=record.ts,
            cpu=m.get("cpu"),
            memory=m.get("memory"),
            memory_rss=m.get("memory_rss"),
            temperature=m.get("temperature"),
            inferences_per_s=rate,
            latency_p50=m.get("latency_p50"),
            latency_p99=m.get("latency_p99"),
            outbox_backlog=whole("outbox_backlog"),
            outbox_drops=whole("outbox_drops"),
        )

    def get(self, device_id: str) -> TelemetryLive | None:
        with self._lock:
            return self._latest.get(device_id)

    def snapshot(self) -> dict[str, TelemetryLive]:
        with self._lock:
            return dict(self._latest)
