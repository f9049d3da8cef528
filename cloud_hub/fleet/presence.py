"""What devices say about themselves (status, last will) and what the hub refused from them."""

from __future__ import annotations

import time

from cloud_hub.core.db import Database
from cloud_hub.fleet import devices
from cloud_hub.registry.registry import utcnow
from edge_agent.core.wire import DeviceStatus


class Presence:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_status(self, device_id: str, status: DeviceStatus) -> None:
        """Online/offline, agent version, runtimes and active version from a status message.
        `status_since` moves only when the state changes: the hub's clock when it learnt it (a
        last will carries the instant its device connected, not when it went away)."""
        with self.db.transaction() as db:
            devices.record_status(db.conn, device_id, status, now=time.time(), seen=utcnow())

    def seen(self, device_id: str) -> None:
        with self.db.transaction() as db:
            devices.set_last_seen(db.conn, device_id, utcnow())

    def record_rejection(self, device_id: str, reason: str) -> None:
        with self.db.transaction() as db:
            devices.count_rejection(db.conn, device_id, reason[:500])
