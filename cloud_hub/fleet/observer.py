"""What the fleet service tells whoever watches it (the live stream) after it stored something.

The fleet service calls these after the data is committed, on whichever thread stored it; an
observer must return quickly and never raise (the service logs and counts what it raises).
Defined here, beside the fleet service, so that the fleet layer never imports its watchers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.core.wire import TelemetryRecord

__all__ = ["FleetObserver"]


class FleetObserver(Protocol):
    def device_changed(self, device_id: str) -> None:
        """A status message (online, offline by last will, what it runs) was recorded."""

    def telemetry_stored(self, device_id: str, records: Sequence[TelemetryRecord]) -> None:
        """A telemetry batch was committed (a batch sent again is reported again)."""

    def report_applied(self, device_id: str, deployment_id: int | None) -> None:
        """A deployment report (download progress, activation, rollback) was recorded."""
