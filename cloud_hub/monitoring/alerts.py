"""Alerts: what the rules find in the windows, opened once and resolved when the condition clears.

`Monitor.evaluate()` computes the windows each rule in force needs and, for every version,
endpoint or device in its scope:

- metric over the threshold, with at least `min_count` records behind the value → the alert for
  (rule, scope, target) is opened (at most one open: a unique index), or its value updated;
- metric at or under the threshold's clear level (`CLEAR_MARGIN` under it), with enough
  records → the open alert is resolved; between the clear level and the threshold an open alert
  stays open and none is opened (hysteresis: a metric hovering at the threshold — PSI is noisy
  from one window to the next — does not open and resolve an alert at every pass);
- too few records to judge → nothing changes, except that an alert whose window is empty
  (no traffic at all any more) is resolved, as is one whose rule was deleted.

Rules on devices' own metrics (`offline_s`, `outbox_backlog_growth`) are judged the same way
on what `device_health` reads of the devices table and the telemetry history.

Each opening and resolution is returned as an `AlertEvent` (the caller publishes it on MQTT
`{root}/alerts`). Opening and resolving are conditional writes, so two hub processes evaluating
the same rules open and announce each alert once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, computed_field

from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.monitoring.device_health import describe as describe_device
from cloud_hub.monitoring.device_health import device_values
from cloud_hub.monitoring.incremental import DeviceView, DeviceWindows
from cloud_hub.monitoring.rules import DEVICE_METRICS, AlertRule, RuleStore
from cloud_hub.monitoring.windows import By, WindowReader, WindowStats
from cloud_hub.registry.registry import utcnow
from edge_agent.core.wire import Topics

log = logging.getLogger(__name__)

ALERT_VERSION: Literal[1] = 1
CLEAR_MARGIN = 0.1  # an open alert resolves once its metric is 10 % under the threshold
T = TypeVar("T")
AlertKey = tuple[str, str, str]  # (rule key, scope, target): at most one open alert each


class Alert(BaseModel):
    id: int
    rule: str = Field(description="the rule's id, or default:NAME")
    metric: str
    scope: By
    target: str = Field(description="version id, endpoint name or device id")
    threshold: float
    value: float = Field(description="the metric when the alert opened")
    last_value: float = Field(description="the metric at the latest evaluation")
    count: int = Field(description="records behind the latest value")
    message: str
    opened_at: str
    resolved_at: str | None = None
    resolution: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def state(self) -> Literal["open", "resolved"]:
        return "open" if self.resolved_at is None else "resolved"


class AlertEvent(BaseModel):
    """What `{root}/alerts` carries: one alert opened or resolved."""

    v: Literal[1] = ALERT_VERSION
    event: Literal["opened", "resolved"]
    ts: float
    alert: Alert


def clear_level(threshold: float) -> float:
    """The value at or under which an open alert resolves."""
    return threshold * (1 - CLEAR_MARGIN)


def alerts_topic(root: str) -> str:
    return Topics(root).alerts()


def metric_value(metric: str, w: WindowStats) -> tuple[float | None, int]:
    """The rule metric in a window, and how many records it rests on."""
    if metric == "latency_p99_ms":
        return w.latency_ms.get("p99"), w.requests - w.errors
    if metric == "error_rate":
        return w.error_rate, w.requests
    if metric == "psi_max":
        return (None, 0) if w.drift is None else (w.drift.psi_max, w.drift.samples)
    if metric == "output_shift":
        base = w.versions.get(str(w.baseline_version), 0)
        return w.output_shift, base
    raise InvalidInput(f"metric: unknown metric {metric!r}")


def _describe(rule: AlertRule, w: WindowStats, value: float, n: int) -> str:
    if rule.metric in DEVICE_METRICS:
        return describe_device(rule, w, value)
    what = {"version": "version", "endpoint": "endpoint", "device": "device"}[w.by]
    text = (
        f"{rule.metric} {value:.4g} > {rule.threshold:g} on {what} {w.name} "
        f"({n} records in the last {w.window_s:g} s)"
    )
    if rule.metric == "psi_max" and w.drift is not None:
        top = ", ".join(f"#{f.feature} ({f.psi:.2f})" for f in w.drift.top[:3])
        text += f"; most drifting features: {top}"
    return text


_COLUMNS = (
    "id, rule, metric, scope, target, threshold, value, last_value, count, message, opened_at, "
    "resolved_at, resolution"
)


class AlertStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(
        self, state: Literal["open", "resolved", "all"] = "all", *, limit: int = 100
    ) -> list[Alert]:
        """Newest first."""
        where = {"open": "resolved_at IS NULL", "resolved": "resolved_at IS NOT NULL", "all": "1"}
        rows = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE {where[state]} ORDER BY id DESC LIMIT ?",
            [limit],
        )
        return [Alert(**dict(r)) for r in rows]

    def get(self, alert_id: int) -> Alert:
        row = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", [alert_id]
        ).fetchone()
        if row is None:
            raise NotFound("alert", alert_id)
        return Alert(**dict(row))

    def open(
        self, rule: AlertRule, w: WindowStats, value: float, count: int, message: str
    ) -> Alert | None:
        """Open the alert (None: it is open already)."""
        with self.db.transaction():
            cur = self.db.conn.execute(
                "INSERT OR IGNORE INTO alerts (rule, metric, scope, target, threshold, value, "
                "last_value, count, message, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    rule.key,
                    rule.metric,
                    w.by,
                    w.key,
                    rule.threshold,
                    value,
                    value,
                    count,
                    message,
                    utcnow(),
                ],
            )
        return self.get(int(cur.lastrowid or 0)) if cur.rowcount == 1 else None

    def update(self, alert_id: int, value: float, count: int) -> None:
        with self.db.transaction():
            self.db.conn.execute(
                "UPDATE alerts SET last_value = ?, count = ? WHERE id = ? AND resolved_at IS NULL",
                [value, count, alert_id],
            )

    def resolve(self, alert_id: int, resolution: str, value: float | None = None) -> Alert | None:
        """Resolve the alert (None: it was resolved already)."""
        with self.db.transaction():
            cur = self.db.conn.execute(
                "UPDATE alerts SET resolved_at = ?, resolution = ?, "
                "last_value = COALESCE(?, last_value) WHERE id = ? AND resolved_at IS NULL",
                [utcnow(), resolution, value, alert_id],
            )
        return self.get(alert_id) if cur.rowcount == 1 else None


class Monitor:
    """Evaluates the rules in force against the windows; `evaluate()` is one pass.

    Device windows are kept up to date between passes (`DeviceWindows`: each pass reads the
    records that arrived and those that left the window, not every device's whole window);
    versions' and endpoints' windows, bounded by `max_records`, are computed at each pass."""

    def __init__(self, db: Database, *, max_records: int = 5000) -> None:
        self.db = db
        self.max_records = max_records
        self.rules = RuleStore(db)
        self.alerts = AlertStore(db)
        self.devices = DeviceWindows(db, max_records=max_records)
        self._views: dict[float, DeviceView | None] = {}

    def evaluate(self, now: float | None = None) -> list[AlertEvent]:
        now = time.time() if now is None else now
        reader = WindowReader(self.db, max_records=self.max_records)
        rules = self.rules.active()
        lengths = [
            r.window_s for r in rules if "device" in r.kinds() and r.metric not in DEVICE_METRICS
        ]
        self._views = self.devices.advance(lengths, now)
        firing: dict[AlertKey, tuple[AlertRule, WindowStats, float, int]] = {}
        cleared: dict[AlertKey, float] = {}
        holding: dict[AlertKey, tuple[float, int]] = {}  # between the clear level and threshold
        seen: set[AlertKey] = set()
        blind: set[tuple[str, str]] = set()  # (rule, kind) whose windows could not be listed
        cache: dict[
            tuple[By, str | None, float, int | None], tuple[list[WindowStats], list[str] | None]
        ] = {}

        def judge(rule: AlertRule, w: WindowStats, value: float | None, n: int) -> None:
            key: AlertKey = (rule.key, w.by, w.key)
            seen.add(key)
            if value is None or n < rule.min_count:
                return
            if value > rule.threshold:
                firing[key] = (rule, w, value, n)
            elif value <= clear_level(rule.threshold):
                cleared[key] = value
            else:
                holding[key] = (value, n)

        for rule in rules:
            if rule.metric in DEVICE_METRICS:  # of devices: status and telemetry history
                try:
                    values = device_values(self.db, rule, now)
                except Exception:
                    log.exception("alert monitor: could not read %s of the devices", rule.metric)
                    blind.add((rule.key, "device"))
                    continue
                for w, value, n in values:
                    judge(rule, w, value, n)
                continue
            for kind in rule.kinds():
                ck = (kind, rule.target, rule.window_s, rule.last_n)
                if ck not in cache:
                    cache[ck] = self._windows(reader, kind, rule, now)
                windows, failed = cache[ck]
                # a window that failed is not judged: its open alerts stay as they are
                if failed is None:
                    blind.add((rule.key, kind))
                else:
                    seen.update((rule.key, kind, k) for k in failed)
                for w in windows:
                    if w.count > 0:
                        judge(rule, w, *metric_value(rule.metric, w))
        events: list[AlertEvent] = []
        active = {r.key for r in rules}
        open_now: dict[AlertKey, Alert] = {
            (a.rule, a.scope, a.target): a for a in self.alerts.list("open", limit=10**6)
        }
        # each write on its own: one that fails (a locked or damaged database) is logged and
        # retried at the next pass, and the events of the others are still returned (published)
        for key, alert in open_now.items():
            if key in firing or key in holding:
                value, n = firing[key][2:] if key in firing else holding[key]
                self._guard("update", self.alerts.update, alert.id, value, n)
                continue
            if alert.rule not in active:
                why, value_now = "its rule is no longer in force", None
            elif key in cleared:
                value_now = cleared[key]
                why = (
                    f"{alert.metric} {value_now:.4g} ≤ {clear_level(alert.threshold):.4g} "
                    f"({100 * CLEAR_MARGIN:g} % under the threshold {alert.threshold:g})"
                )
            elif key not in seen and (alert.rule, alert.scope) not in blind:
                why, value_now = "no records in the window any more", None
            else:
                continue  # too few records to judge (or no window): it stays open
            resolved = self._guard("resolve", self.alerts.resolve, alert.id, why, value_now)
            if resolved is not None:
                events.append(AlertEvent(event="resolved", ts=time.time(), alert=resolved))
        for key, (rule, w, value, n) in firing.items():
            if key in open_now:
                continue
            message = _describe(rule, w, value, n)
            opened = self._guard("open", self.alerts.open, rule, w, value, n, message)
            if opened is not None:
                events.append(AlertEvent(event="opened", ts=time.time(), alert=opened))
        return events

    @staticmethod
    def _guard(what: str, write: Callable[..., T], *args: Any) -> T | None:
        try:
            return write(*args)
        except Exception:
            log.exception("alert monitor: could not %s an alert %s", what, args[:1])
            return None

    def _windows(
        self, reader: WindowReader, kind: By, rule: AlertRule, now: float
    ) -> tuple[list[WindowStats], list[str] | None]:
        """The rule's windows of this kind, and the keys whose window failed (None: the keys
        could not be listed). One window that fails — a damaged record, a query that errs — is
        logged and left out; the others are judged as usual."""
        view = self._views.get(rule.window_s) if kind == "device" else None
        if rule.target is not None:
            keys = [rule.target]
        elif view is not None:
            keys = view.keys()
        else:
            try:
                keys = reader.keys(kind, now - rule.window_s, now)
            except Exception:
                log.exception("alert monitor: could not list the %ss with records", kind)
                return [], None
        windows, failed = [], []
        for key in keys:
            try:
                if view is not None:
                    windows.append(self.devices.window(view, reader, key, last_n=rule.last_n))
                    continue
                windows.append(
                    reader.window(kind, key, window_s=rule.window_s, last_n=rule.last_n, now=now)
                )
            except Exception:
                log.exception("alert monitor: the window of %s %s failed", kind, key)
                failed.append(key)
        return windows, failed
