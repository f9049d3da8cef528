"""The device metrics of alert rules (`rules.DEVICE_METRICS`): how long a device has been
offline, and how much its outbox backlog grew over the window.

Each is read for the whole fleet in one query (the devices table; the telemetry history's minute
rollups, `metrics_store.rises`) and handed to the monitor as one `WindowStats` per device, so
that alerts open, hold and resolve as for the other metrics: `count` is what the value rests on
(a status counts as enough; the telemetry records in the window for the backlog).
"""

from __future__ import annotations

from cloud_hub.core.db import Database
from cloud_hub.fleet.devices import statuses
from cloud_hub.fleet.metrics_store import rises
from cloud_hub.monitoring.rules import AlertRule
from cloud_hub.monitoring.windows import WindowStats

__all__ = ["DeviceValue", "device_values", "describe"]

DeviceValue = tuple[WindowStats, float, int]  # the device's window, its value, records behind it


def _window(device: str, rule: AlertRule, now: float, count: int) -> WindowStats:
    return WindowStats(
        by="device",
        key=device,
        name=device,
        window_s=rule.window_s,
        last_n=0,
        since=now - rule.window_s,
        until=now,
        count=count,
        requests=0,
        errors=0,
        error_rate=None,
        outcomes={},
        latency_ms={},
        output={},
        versions={},
    )


def device_values(db: Database, rule: AlertRule, now: float) -> list[DeviceValue]:
    """The rule's metric for each device it covers (its target, or every device)."""
    if rule.metric == "offline_s":
        out = []
        for device, status, since in statuses(db.conn, rule.target):
            if status == "online":
                value = 0.0
            elif status == "offline" and since is not None:
                value = max(now - float(since), 0.0)
            else:
                continue  # never heard from, or since when unknown: nothing to judge
            # a status is all the value rests on: min_count does not apply
            out.append((_window(device, rule, now, 1), value, rule.min_count))
        return out
    if rule.metric == "outbox_backlog_growth":
        found = rises(db, "outbox_backlog", since=now - rule.window_s, until=now)
        return [
            (_window(device, rule, now, r.points), r.growth, r.points)
            for device, r in sorted(found.items())
            if rule.target is None or device == rule.target
        ]
    raise ValueError(f"{rule.metric} is not a device metric")


def describe(rule: AlertRule, w: WindowStats, value: float) -> str:
    if rule.metric == "offline_s":
        return f"device {w.key} offline for {value:.0f} s (> {rule.threshold:g} s)"
    return (
        f"outbox backlog of device {w.key} grew by {value:.0f} records in the last "
        f"{rule.window_s:g} s (> {rule.threshold:g}; {w.count} telemetry records)"
    )
