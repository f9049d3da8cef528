"""Condition routing's device facts, read from the hub's device registry (through
`cloud_hub.fleet.devices`, the `devices` table's owner) and kept briefly in memory, so a route on
`device_tag` does not query the database on every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cloud_hub.core.db import Database
from cloud_hub.fleet.devices import routing_row
from cloud_hub.serving.engine.devices import DeviceFacts


class DeviceLookup:
    """Devices by id from the hub's database; answers (unknown ids too) are kept `ttl_s`."""

    def __init__(
        self, db: Database, *, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, DeviceFacts | None]] = {}
        self.queries = 0

    def __call__(self, device_id: str) -> DeviceFacts | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(device_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        facts = self._read(device_id)
        with self._lock:
            if len(self._cache) > 10_000:  # ids come from callers: bound what they can fill
                self._cache.clear()
            self._cache[device_id] = (now + self.ttl_s, facts)
        return facts

    def _read(self, device_id: str) -> DeviceFacts | None:
        self.queries += 1
        row = routing_row(self.db.conn, device_id)
        if row is None:
            return None
        return DeviceFacts(
            id=row["id"],
            hardware=row["hardware"] or "",
            tags=frozenset(row["tags"]),
            group=row["group_name"],
            runtimes=tuple(row["runtimes"]),
        )
