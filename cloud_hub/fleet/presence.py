"""What devices say about themselves (status, last will) and what the hub refused from them."""

from __future__ import annotations

import json
import time

from cloud_hub.core.db import Database
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
            db.execute(
                "UPDATE devices SET status_since = CASE WHEN status IS ? THEN status_since "
                "ELSE ? END, status = ?, agent_version = COALESCE(NULLIF(?, ''), "
                "agent_version), reported_runtimes = CASE WHEN ? = '[]' THEN reported_runtimes "
                "ELSE ? END, active_version_id = COALESCE(?, active_version_id), last_seen = ? "
                "WHERE id = ?",
                [
                    status.state,
                    time.time(),
                    status.state,
                    status.agent_version,
                    json.dumps(status.runtimes),
                    json.dumps(status.runtimes),
                    status.active_version,
                    utcnow(),
                    device_id,
                ],
            )

    def seen(self, device_id: str) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE devices SET last_seen = ? WHERE id = ?", [utcnow(), device_id])

    def record_rejection(self, device_id: str, reason: str) -> None:
        with self.db.transaction() as db:
            db.execute(
                "UPDATE devices SET rejected = rejected + 1, last_reason = ? WHERE id = ?",
                [reason[:500], device_id],
            )
