"""The live view's model: the hub's /overview merged with its stream's events; no widgets.

`FleetState` holds what the hub last said (devices, deployments, open alerts, endpoints), takes
the stream's events by the contract's merging rule (`apply` says when the client must refetch
/overview), and knows whether the hub is reachable (`stale`). `parse_filter`, `SORT_KEYS` and
`FleetState.rows` turn it into the fleet table's rows: filtered, sorted, formatted. Everything
takes `now` (unix seconds) from the caller, so it is tested without a clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Device = dict[str, Any]
Action = Literal["ok", "refetch"]

__all__ = [
    "COLUMNS",
    "SORT_KEYS",
    "Column",
    "DeviceFilter",
    "FilterError",
    "FleetState",
    "bar",
    "clock",
    "parse_filter",
]

TELEMETRY_FIELDS = (
    "telemetry_ts",
    "cpu",
    "memory",
    "memory_rss",
    "temperature",
    "inferences_per_s",
    "latency_p50",
    "latency_p99",
    "outbox_backlog",
    "outbox_drops",
)


def clock(ts: float | None) -> str:
    """HH:MM:SS in the viewer's local time ('-' for none)."""
    if ts is None or not math.isfinite(ts):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _num(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "-"


def status_text(device: Device) -> str:
    """'online', 'offline since 12:03:07' (the last will's instant), or 'unknown'."""
    status = str(device.get("status") or "unknown")
    if status == "offline" and device.get("status_since") is not None:
        return f"offline since {clock(device['status_since'])}"
    return status


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[Device], str]
    sort: Callable[[Device], Any]


def _field(name: str) -> Callable[[Device], Any]:
    return lambda d: d.get(name)


def _fmt(name: str, fmt: str) -> Callable[[Device], str]:
    return lambda d: _num(d.get(name), fmt)


def _text(name: str) -> Callable[[Device], str]:
    return lambda d: "-" if d.get(name) in (None, "") else str(d[name])


COLUMNS: tuple[Column, ...] = (
    Column("id", "id", _text("id"), _field("id")),
    Column("status", "status", status_text, status_text),
    Column("last_seen", "last seen", lambda d: clock(d.get("last_seen")), _field("last_seen")),
    Column("model", "model", _text("active_model"), _field("active_model")),
    Column("artifact", "artifact", _text("artifact"), _field("artifact")),
    Column("shadow", "shadow", _text("shadow"), _field("shadow")),
    Column("agent", "agent", _text("agent_version"), _field("agent_version")),
    Column("cpu", "cpu %", _fmt("cpu", ".0f"), _field("cpu")),
    Column("memory", "mem %", _fmt("memory", ".1f"), _field("memory")),
    Column("temperature", "temp °C", _fmt("temperature", ".1f"), _field("temperature")),
    Column("inferences", "inf/s", _fmt("inferences_per_s", ".1f"), _field("inferences_per_s")),
    Column("p50", "p50 ms", _fmt("latency_p50", ".1f"), _field("latency_p50")),
    Column("p99", "p99 ms", _fmt("latency_p99", ".1f"), _field("latency_p99")),
    Column("backlog", "backlog", _fmt("outbox_backlog", ".0f"), _field("outbox_backlog")),
    Column("drops", "drops", _fmt("outbox_drops", ".0f"), _field("outbox_drops")),
    Column("alerts", "alerts", _fmt("open_alerts", ".0f"), _field("open_alerts")),
)
SORT_KEYS: tuple[str, ...] = tuple(c.key for c in COLUMNS)
_BY_KEY = {c.key: c for c in COLUMNS}


# -- filter ----------------------------------------------------------------------------------
class FilterError(ValueError):
    """A filter the user typed that means nothing (the message says why)."""


FILTER_KEYS = ("status", "tag", "group", "model", "id")


@dataclass(frozen=True)
class DeviceFilter:
    """Terms, all of which a device must match; a term's comma-separated values are any-of.

    `status:offline`, `tag:cam`, `group:lab`, `model:proj/m` (substring of the active model),
    `id:cam-` (substring), and bare words: a substring of the id or name (case-insensitive).
    """

    terms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    text: str = ""

    def matches(self, device: Device) -> bool:
        return all(_term_matches(key, values, device) for key, values in self.terms)


def _term_matches(key: str, values: tuple[str, ...], device: Device) -> bool:
    if key == "status":
        return str(device.get("status") or "unknown").lower() in values
    if key == "tag":
        tags = {str(t).lower() for t in device.get("tags") or ()}
        return any(v in tags for v in values)
    if key == "group":
        return str(device.get("group") or "").lower() in values
    if key == "model":
        model = str(device.get("active_model") or "").lower()
        return any(v in model for v in values)
    if key == "id":
        ident = str(device.get("id") or "").lower()
        return any(v in ident for v in values)
    # bare text
    hay = f"{device.get('id') or ''} {device.get('name') or ''}".lower()
    return any(v in hay for v in values)


STATUSES = ("online", "offline", "unknown")


def parse_filter(text: str) -> DeviceFilter:
    """The filter a user typed (DeviceFilter's docs); FilterError names a term that is wrong."""
    terms: list[tuple[str, tuple[str, ...]]] = []
    for word in text.split():
        key, sep, raw = word.partition(":")
        if not sep:
            terms.append(("text", (word.lower(),)))
            continue
        key = key.lower()
        if key not in FILTER_KEYS:
            known = ", ".join(k + ":" for k in FILTER_KEYS)
            raise FilterError(f"unknown filter {key!r} in {word!r}: use {known} or plain text")
        values = tuple(v for v in raw.lower().split(",") if v)
        if not values:
            raise FilterError(f"{word!r}: give a value after {key}:")
        if key == "status":
            wrong = [v for v in values if v not in STATUSES]
            if wrong:
                raise FilterError(f"status:{wrong[0]}: a status is {', '.join(STATUSES)}")
        terms.append((key, values))
    return DeviceFilter(tuple(terms), text.strip())


# -- the state ---------------------------------------------------------------------------------
@dataclass
class FleetState:
    """What the hub last said, merged with its events; and whether it can be reached."""

    devices: dict[str, Device] = field(default_factory=dict)
    deployments: dict[Any, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[Any, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_event_id: str | None = None
    server_time: float | None = None
    loaded: bool = False
    unreachable_since: float | None = None
    error: str | None = None
    retry_at: float | None = None
    revision: int = 0  # bumped by every change, so a view redraws only when there is news
    _cells: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    # the hub's documents
    def load_overview(self, overview: dict[str, Any]) -> None:
        """Replace everything with an /overview document."""
        self.devices = {str(d["id"]): dict(d) for d in overview.get("devices") or ()}
        self._cells.clear()
        self.deployments = {d["id"]: dict(d) for d in overview.get("deployments") or ()}
        self.alerts = {a["id"]: dict(a) for a in overview.get("alerts") or ()}
        self.endpoints = {str(e["name"]): dict(e) for e in overview.get("endpoints") or ()}
        self.last_event_id = overview.get("last_event_id") or self.last_event_id
        self.server_time = overview.get("server_time")
        self.loaded = True
        self.revision += 1

    def apply(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> Action:
        """Merge one stream event; 'refetch' when /overview must be loaded again (missed
        events, or a device this state does not know)."""
        if event_id:
            self.last_event_id = event_id
        action: Action = "ok"
        if kind in ("device", "telemetry"):
            device = self.devices.get(str(data.get("id")))
            if device is None:
                action = "refetch"
            else:
                device.update(data)
                self._cells.pop(device["id"], None)
        elif kind == "deployment":
            self.deployments[data["id"]] = dict(data)
        elif kind == "alert":
            alert = {k: v for k, v in data.items() if k != "open"}
            if data.get("open", True):
                self.alerts[data["id"]] = alert
            else:
                self.alerts.pop(data["id"], None)
            self._count_alerts(str(data.get("subject")))
        elif kind == "endpoint":
            self.endpoints[str(data["name"])] = dict(data)
        elif kind == "missed":
            action = "refetch"
        elif kind == "hello":
            self.server_time = data.get("server_time", self.server_time)
        else:
            return "ok"  # a kind newer than this client: ignored
        self.revision += 1
        return action

    def _count_alerts(self, subject: str) -> None:
        device = self.devices.get(subject)
        if device is not None:
            device["open_alerts"] = sum(
                1 for a in self.alerts.values() if a.get("subject") == subject
            )
            self._cells.pop(subject, None)

    # reachability
    def mark_reachable(self) -> None:
        if self.unreachable_since is not None or self.error is not None:
            self.unreachable_since = None
            self.error = None
            self.retry_at = None
            self.revision += 1

    def mark_unreachable(self, now: float, error: str, retry_at: float | None = None) -> None:
        """The hub is away (kept: the first instant it was missed); the data stays."""
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.error = error
        self.retry_at = retry_at
        self.revision += 1

    @property
    def stale(self) -> bool:
        return self.unreachable_since is not None

    def headline(self, now: float) -> str:
        """The header line: the fleet in numbers, or STALE and since when."""
        online = sum(1 for d in self.devices.values() if d.get("status") == "online")
        counts = f"{len(self.devices)} devices, {online} online, {len(self.alerts)} open alerts"
        if self.unreachable_since is not None:
            retry = ""
            if self.retry_at is not None:
                retry = f" in {max(0, math.ceil(self.retry_at - now))} s"
            return (
                f"STALE: hub unreachable since {clock(self.unreachable_since)}, retrying{retry}"
                f" ({self.error}) | last known: {counts}"
            )
        if not self.loaded:
            return "connecting to the hub..."
        return f"live | {counts}"

    # the fleet table
    def rows(
        self, flt: DeviceFilter | None = None, sort: str = "id", reverse: bool = False
    ) -> list[tuple[str, tuple[str, ...]]]:
        """(device id, cells in COLUMNS order) of the devices the filter keeps, sorted by the
        column `sort` (devices with no value for it last, ties by id)."""
        devices = [d for d in self.devices.values() if flt is None or flt.matches(d)]
        return [(str(d["id"]), self._row(d)) for d in sort_devices(devices, sort, reverse)]

    def _row(self, device: Device) -> tuple[str, ...]:
        """The device's cells, formatted once per change (a fleet of thousands redraws often)."""
        ident = str(device["id"])
        cells = self._cells.get(ident)
        if cells is None:
            cells = self._cells[ident] = tuple(c.cell(device) for c in COLUMNS)
        return cells

    def device_alerts(self, device_id: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts.values() if a.get("subject") == device_id]

    def deployment_list(self) -> list[dict[str, Any]]:
        """Live deployments first (progress below 1), then the newest."""
        return sorted(
            self.deployments.values(),
            key=lambda d: (float(d.get("progress") or 0) >= 1.0, -_as_int(d.get("id"))),
        )


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def sort_devices(devices: Iterable[Device], sort: str, reverse: bool = False) -> list[Device]:
    if sort not in _BY_KEY:
        raise FilterError(f"unknown sort column {sort!r}: one of {', '.join(SORT_KEYS)}")
    key = _BY_KEY[sort].sort
    by_id = sorted(devices, key=lambda d: str(d.get("id")))
    if sort == "id":
        return by_id[::-1] if reverse else by_id
    keyed = [(key(d), d) for d in by_id]
    present = [(_comparable(k), d) for k, d in keyed if k is not None]
    present.sort(key=lambda kd: kd[0], reverse=reverse)
    return [d for _, d in present] + [d for k, d in keyed if k is None]


def _comparable(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value).lower())


def bar(fraction: float | None, width: int = 20) -> str:
    """A text progress bar: '████████░░░░░░░░  40%'."""
    f = 0.0 if fraction is None or not math.isfinite(fraction) else min(1.0, max(0.0, fraction))
    full = round(f * width)
    return "█" * full + "░" * (width - full) + f" {100 * f:3.0f}%"


# How far along its deployment a device is, by its state there (a final state is 1).
DEVICE_PROGRESS = {
    "waiting": 0.0,
    "pending": 0.1,
    "transferring": 0.5,
    "verified": 0.9,
    "active": 1.0,
    "failed": 1.0,
    "rolled_back": 1.0,
    "superseded": 1.0,
}


def device_progress(state: str | None) -> float:
    return DEVICE_PROGRESS.get(str(state), 0.0)
