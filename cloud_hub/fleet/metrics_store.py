"""Telemetry history: each device's numeric metrics as a time series, raw and rolled up.

Owns the tables `metric_points` (raw: device, metric, ts, value) and `metric_rollups` (per
device, metric, step of 60 or 3600 s and bucket start: min, max, sum, count and the last value).
Ingest calls `record_new` inside the transaction that stores a telemetry batch, before its rows
are inserted, with the seqs of the batch's epoch stored already (the ingest owns `telemetry`):
only the other records are counted, so a batch sent twice adds to the rollups once.
`prune(now)` deletes what is past each retention in chunks of `chunk` rows, one transaction
each, so ingest never waits long behind it.

Which metrics a TelemetryRecord yields (absent fields yield nothing):
  cpu            cpu_percent (100 = one core busy)
  memory         memory_percent
  memory_rss     memory_rss_mb
  temperature    temperature_c
  inferences     inferences over the record's interval, summed over model versions
  latency_p50    latency_ms p50, inference-weighted mean over model versions
  latency_p99    latency_ms p99, the highest over model versions
  outbox_backlog outbox_pending
  outbox_drops   outbox_dropped (the agent's running total)
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from cloud_hub.auth.tokens import parse_duration
from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput
from cloud_hub.core.settings import HubSettings
from edge_agent.core.wire import TelemetryRecord

__all__ = [
    "METRICS",
    "LatestPoint",
    "MetricNames",
    "MetricPoint",
    "MetricSeries",
    "MetricsStore",
    "metrics_of",
    "parse_instant",
    "Rise",
    "latest_points",
    "record_new",
    "rises",
]

METRICS = (
    "cpu",
    "memory",
    "memory_rss",
    "temperature",
    "inferences",
    "latency_p50",
    "latency_p99",
    "outbox_backlog",
    "outbox_drops",
)
STEPS = {"1m": 60, "1h": 3600}
Step = Literal["raw", "1m", "1h"]
MAX_POINTS = 1000  # what `auto` aims to stay under
RAW_LIMIT = 10_000  # the most points one query answers (the newest are kept)
PRUNE_CHUNK = 5000

_RELATIVE = re.compile(r"^[0-9]{1,9}[smhdwSMHDW]$")


class MetricPoint(BaseModel):
    ts: float
    value: float
    min: float
    max: float


class MetricSeries(BaseModel):
    device: str
    metric: str
    step: Step
    since: float
    until: float
    points: list[MetricPoint]


class MetricNames(BaseModel):
    device: str
    metrics: list[str]


def metrics_of(record: TelemetryRecord) -> dict[str, float]:
    """The numeric metrics of one record (module docstring), finite values only."""
    out: dict[str, float | None] = {
        "cpu": record.cpu_percent,
        "memory": record.memory_percent,
        "memory_rss": record.memory_rss_mb,
        "temperature": record.temperature_c,
        "outbox_backlog": record.outbox_pending,
        "outbox_drops": record.outbox_dropped,
    }
    if record.inferences:
        out["inferences"] = float(sum(record.inferences.values()))
    p50 = [
        (v["p50"], record.inferences.get(k, 0)) for k, v in record.latency_ms.items() if "p50" in v
    ]
    if p50:
        weight = sum(w for _, w in p50)
        out["latency_p50"] = (
            sum(p * w for p, w in p50) / weight if weight else sum(p for p, _ in p50) / len(p50)
        )
    p99 = [v["p99"] for v in record.latency_ms.values() if "p99" in v]
    if p99:
        out["latency_p99"] = max(p99)
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


_UPSERT_ROLLUP = (
    "INSERT INTO metric_rollups (device_id, metric, step, bucket, vmin, vmax, vsum, n, vlast, "
    "last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
    "ON CONFLICT (device_id, metric, step, bucket) DO UPDATE SET "
    "vmin = min(vmin, excluded.vmin), vmax = max(vmax, excluded.vmax), "
    "vsum = vsum + excluded.vsum, n = n + 1, "
    "vlast = CASE WHEN excluded.last_ts >= last_ts THEN excluded.vlast ELSE vlast END, "
    "last_ts = max(last_ts, excluded.last_ts)"
)


def record_new(
    conn: sqlite3.Connection,
    device_id: str,
    records: Iterable[TelemetryRecord],
    stored: Callable[[int, int], Iterable[int]],
) -> int:
    """Add the metrics of the records not stored in `telemetry` yet; call before inserting them.
    `stored(low, high)`: the seqs between low and high (inclusive) stored already.

    Runs in the caller's transaction. Returns how many records were counted.
    """
    fresh: dict[int, TelemetryRecord] = {}
    for r in records:
        fresh.setdefault(r.seq, r)  # the telemetry table keeps the first of a repeated seq
    if not fresh:
        return 0
    for seq in stored(min(fresh), max(fresh)):
        fresh.pop(seq, None)
    points: list[tuple[str, str, float, float]] = []
    rollups: list[tuple[object, ...]] = []
    for r in fresh.values():
        if not math.isfinite(r.ts):
            continue
        for metric, value in metrics_of(r).items():
            points.append((device_id, metric, r.ts, value))
            for step in STEPS.values():
                bucket = math.floor(r.ts / step) * step
                rollups.append((device_id, metric, step, bucket, value, value, value, value, r.ts))
    conn.executemany(
        "INSERT OR IGNORE INTO metric_points (device_id, metric, ts, value) VALUES (?, ?, ?, ?)",
        points,
    )
    conn.executemany(_UPSERT_ROLLUP, rollups)
    return len(fresh)


def parse_instant(text: str, now: float) -> float:
    """ISO-8601 (UTC when no offset is given), `now`, or an age like `15m` / `1h` before now."""
    text = text.strip()
    if text.lower() == "now":
        return now
    if _RELATIVE.match(text):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{text[:64]!r} is not a time: ISO-8601 (2026-01-31T12:00:00Z), 'now', or an age "
            "such as 15m, 1h or 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class MetricsStore:
    def __init__(self, db: Database, settings: HubSettings) -> None:
        self.db = db
        self.retention = {
            "raw": settings.metrics_raw_retention_s,
            "1m": settings.metrics_minute_retention_s,
            "1h": settings.metrics_hour_retention_s,
        }

    def names(self, device_id: str) -> MetricNames:
        """The metrics the device has data for (any resolution)."""
        rows = self.db.conn.execute(
            "SELECT DISTINCT metric FROM metric_rollups WHERE device_id = ? "
            "UNION SELECT DISTINCT metric FROM metric_points WHERE device_id = ?",
            [device_id, device_id],
        )
        have = {row[0] for row in rows}
        return MetricNames(device=device_id, metrics=[m for m in METRICS if m in have])

    def query(
        self,
        device_id: str,
        metric: str,
        *,
        since: str = "1h",
        until: str | None = None,
        step: str = "auto",
        now: float,
    ) -> MetricSeries:
        """A series; InvalidInput for an unknown metric, a bad range or step (module docs)."""
        if metric not in METRICS:
            raise InvalidInput(f"unknown metric {metric[:64]!r}; known: {', '.join(METRICS)}")
        start = parse_instant(since, now)
        end = now if until is None else parse_instant(until, now)
        if start > now:
            raise InvalidInput("since is in the future")
        if start >= end:
            raise InvalidInput("since must be before until")
        chosen = self._choose(device_id, metric, start, end, now) if step == "auto" else step
        if chosen == "raw":
            rows = self.db.conn.execute(
                "SELECT ts, value, value, value FROM metric_points "
                "WHERE device_id = ? AND metric = ? AND ts >= ? AND ts < ? "
                "ORDER BY ts DESC LIMIT ?",
                [device_id, metric, start, end, RAW_LIMIT],
            ).fetchall()
        elif chosen in STEPS:
            size = STEPS[chosen]
            rows = self.db.conn.execute(
                "SELECT bucket, vsum / n, vmin, vmax FROM metric_rollups "
                "WHERE device_id = ? AND metric = ? AND step = ? AND bucket >= ? AND bucket < ? "
                "ORDER BY bucket DESC LIMIT ?",
                [device_id, metric, size, math.floor(start / size) * size, end, RAW_LIMIT],
            ).fetchall()
        else:
            raise InvalidInput(f"unknown step {step[:32]!r}; use raw, 1m, 1h or auto")
        points = [MetricPoint(ts=t, value=v, min=lo, max=hi) for t, v, lo, hi in reversed(rows)]
        return MetricSeries(
            device=device_id,
            metric=metric,
            step=chosen,  # type: ignore[arg-type]  # checked above
            since=start,
            until=end,
            points=points,
        )

    def _choose(self, device_id: str, metric: str, start: float, end: float, now: float) -> Step:
        """The finest step still retained over [start, end) with at most MAX_POINTS points."""
        if start >= now - self.retention["raw"]:
            (count,) = self.db.conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM metric_points WHERE device_id = ? AND "
                "metric = ? AND ts >= ? AND ts < ? LIMIT ?)",
                [device_id, metric, start, end, MAX_POINTS + 1],
            ).fetchone()
            if count <= MAX_POINTS:
                return "raw"
        if start >= now - self.retention["1m"] and (end - start) / 60 <= MAX_POINTS:
            return "1m"
        return "1h"

    def latest(
        self, metrics: Sequence[str], *, now: float, within_s: float = 7200.0
    ) -> dict[str, dict[str, LatestPoint]]:
        """Every device's newest value of each metric (`latest_points`: one query)."""
        return latest_points(self.db, metrics, now=now, within_s=within_s)

    def prune(self, now: float, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete what is past retention, `chunk` rows per transaction; returns rows deleted."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        jobs = [
            (
                "DELETE FROM metric_points WHERE rowid IN "
                "(SELECT rowid FROM metric_points WHERE ts < ? LIMIT ?)",
                now - self.retention["raw"],
            ),
            (
                "DELETE FROM metric_rollups WHERE rowid IN (SELECT rowid FROM metric_rollups "
                "WHERE step = 60 AND bucket < ? LIMIT ?)",
                now - self.retention["1m"],
            ),
            (
                "DELETE FROM metric_rollups WHERE rowid IN (SELECT rowid FROM metric_rollups "
                "WHERE step = 3600 AND bucket < ? LIMIT ?)",
                now - self.retention["1h"],
            ),
        ]
        total = 0
        for sql, cutoff in jobs:
            while True:
                with self.db.transaction() as db:
                    deleted = db.conn.execute(sql, [cutoff, chunk]).rowcount
                total += deleted
                if deleted < chunk:
                    break
        return total


class LatestPoint(BaseModel):
    """A device's newest value of a metric, and its sum over the last whole minute."""

    ts: float
    value: float
    minute_sum: float | None = None


def latest_points(
    db: Database, metrics: Sequence[str], *, now: float, within_s: float = 7200.0
) -> dict[str, dict[str, LatestPoint]]:
    """Every device's newest value of each of `metrics` (device → metric → point), from the
    hourly rollups of the last `within_s` (their last value is the newest point in the hour),
    with the sum over the minute before the current one from the minute rollups (inferences
    in it: a rate). One query, two index ranges: a few rows per device however long the
    history."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidInput(f"unknown metric {unknown[0][:64]!r}; known: {', '.join(METRICS)}")
    if not metrics:
        return {}
    marks = ", ".join("?" for _ in metrics)
    hour = math.floor((now - within_s) / 3600) * 3600
    minute = math.floor(now / 60) * 60 - 60
    rows = db.conn.execute(
        "SELECT device_id, metric, step, vlast, last_ts, vsum FROM metric_rollups "
        f"WHERE step = 3600 AND bucket >= ? AND metric IN ({marks}) "
        "UNION ALL SELECT device_id, metric, step, vlast, last_ts, vsum FROM metric_rollups "
        f"WHERE step = 60 AND bucket = ? AND metric IN ({marks})",
        [hour, *metrics, minute, *metrics],
    )
    out: dict[str, dict[str, LatestPoint]] = {}
    sums: dict[tuple[str, str], float] = {}
    for device, metric, step, vlast, last_ts, vsum in rows:
        if step == 60:
            sums[(device, metric)] = float(vsum)
            continue
        if last_ts < now - within_s:
            continue
        have = out.setdefault(device, {}).get(metric)
        if have is None or last_ts > have.ts:
            out[device][metric] = LatestPoint(ts=float(last_ts), value=float(vlast))
    for (device, metric), total in sums.items():
        point = out.get(device, {}).get(metric)
        if point is not None:
            point.minute_sum = total
    return out


class Rise(BaseModel):
    """How a device's metric moved over a window, from the minute rollups."""

    low: float = Field(description="the lowest value in the window")
    latest: float = Field(description="the newest value")
    latest_ts: float
    points: int = Field(description="records behind it")

    @property
    def growth(self) -> float:
        return self.latest - self.low


def rises(db: Database, metric: str, *, since: float, until: float) -> dict[str, Rise]:
    """Per device, the lowest and the newest value of `metric` in the minute rollups from the
    minute holding `since` to `until` (the window to the minute): one query, a few rows a
    device."""
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric[:64]!r}; known: {', '.join(METRICS)}")
    rows = db.conn.execute(
        "SELECT device_id, vmin, vlast, last_ts, n FROM metric_rollups "
        "WHERE step = 60 AND bucket >= ? AND bucket <= ? AND metric = ?",
        [math.floor(since / 60) * 60, until, metric],
    )
    out: dict[str, Rise] = {}
    for device, vmin, vlast, last_ts, n in rows:
        have = out.get(device)
        if have is None:
            out[device] = Rise(low=vmin, latest=vlast, latest_ts=last_ts, points=n)
            continue
        have.low = min(have.low, vmin)
        have.points += n
        if last_ts > have.latest_ts:
            have.latest, have.latest_ts = vlast, last_ts
    return out
