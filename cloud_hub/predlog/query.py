"""Reading the prediction log: endpoint records and the inference logs devices forwarded, as one
stream of records with the same fields, filtered, paged by cursor and exported.

Records are ordered by (ts, origin, key); a page's `next` cursor is the last record's position
(keyset paging, no OFFSET), so a page never repeats or skips what was stored when it was read.
A record stored later with an earlier time (device logs forwarded after an outage, a shadow's
answer arriving late) sorts before a cursor already past it: page with `until` a little in the
past, or export, for a complete copy.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput
from cloud_hub.predlog import device_logs, endpoint_logs
from cloud_hub.predlog.endpoint_logs import COLUMNS
from edge_agent.core.features import decode as decode_features

Origin = Literal["endpoint", "device"]

# the writer's columns (from `step` on), after where the record came from
FIELDS = ("origin", "ts", "request_id", "endpoint", "device_id", *COLUMNS[3:], "outputs_digest")


class LogFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    origin: Origin | None = Field(default=None, description="endpoint or device records only")
    endpoint: str | None = None
    device_id: str | None = None
    model_version: int | None = None
    request_id: str | None = None
    outcome: str | None = None
    role: str | None = Field(default=None, description="answer, shadow")
    variant: str | None = None
    since: float | None = Field(default=None, description="unix time, inclusive")
    until: float | None = Field(default=None, description="unix time, exclusive")


class LogPage(BaseModel):
    records: list[dict[str, Any]]
    next: str | None = Field(description="cursor of the next page; null at the end")


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def _endpoint_side(f: LogFilter, conn: sqlite3.Connection) -> tuple[str, list[Any]] | None:
    if f.origin == "device" or f.device_id is not None:
        return None
    where, args = [], []
    for column, value in (
        ("endpoint", f.endpoint),
        ("model_version", f.model_version),
        ("request_id", f.request_id),
        ("outcome", f.outcome),
        ("role", f.role),
        ("variant", f.variant),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return _with_time(endpoint_logs.AS_LOG_RECORDS, where, args, f)


def _device_side(f: LogFilter, conn: sqlite3.Connection) -> tuple[str, list[Any]] | None:
    if f.origin == "endpoint" or f.endpoint is not None or f.variant is not None:
        return None
    if f.outcome is not None and f.outcome != "ok":
        return None  # a device logs only the inferences it answered
    sql, role = device_logs.as_log_records(conn)
    where, args = [], []
    for column, value in (
        ("device_id", f.device_id),
        ("model_version", f.model_version),
        ("request_id", f.request_id),
        (role, f.role),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return _with_time(sql, where, args, f)


def _with_time(sql: str, where: list[str], args: list[Any], f: LogFilter) -> tuple[str, list[Any]]:
    if f.since is not None:
        where.append("ts >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("ts < ?")
        args.append(f.until)
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, args


def encode_cursor(ts: float, origin: str, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, origin, key]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str, str]:
    try:
        ts, origin, key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(ts), str(origin), str(key)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise InvalidInput(f"cursor {cursor!r} is not one this API gave out") from None


#: a version's class labels by its id (None: no such version): the registry's `version_labels`
VersionLabels = Callable[[int], Sequence[str] | None]


class LogReader:
    def __init__(self, db: Database, version_labels: VersionLabels) -> None:
        self.db = db
        self.version_labels = version_labels  # the registry owns the versions table

    def _rows(
        self, f: LogFilter, limit: int | None, after: tuple[float, str, str] | None
    ) -> Iterator[sqlite3.Row]:
        conn = self.db.conn
        sides = [s for s in (_endpoint_side(f, conn), _device_side(f, conn)) if s is not None]
        if not sides:
            return iter(())
        sql = " UNION ALL ".join(s for s, _ in sides)
        args = [a for _, side_args in sides for a in side_args]
        sql = f"SELECT * FROM ({sql})"
        if after is not None:
            sql += " WHERE (ts, origin, k) > (?, ?, ?)"
            args += list(after)
        sql += " ORDER BY ts, origin, k"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return iter(conn.execute(sql, args))

    def page(self, f: LogFilter, *, limit: int = 100, cursor: str | None = None) -> LogPage:
        if not 1 <= limit <= 10_000:
            raise InvalidInput(f"limit must be 1 to 10000, got {limit}")
        after = decode_cursor(cursor) if cursor else None
        rows = list(self._rows(f, limit + 1, after))
        more = len(rows) > limit
        rows = rows[:limit]
        records = [self._record(r) for r in rows]
        last = rows[-1] if more and rows else None
        return LogPage(
            records=records,
            next=None if last is None else encode_cursor(last["ts"], last["origin"], last["k"]),
        )

    def iter_records(self, f: LogFilter) -> Iterator[dict[str, Any]]:
        after: tuple[float, str, str] | None = None
        while True:
            rows = list(self._rows(f, 2000, after))
            for row in rows:
                yield self._record(row)
            if len(rows) < 2000:
                return
            last = rows[-1]
            after = (last["ts"], last["origin"], last["k"])

    def _record(self, row: sqlite3.Row) -> dict[str, Any]:
        rec = {name: row[name] for name in FIELDS}
        rec["output"] = _output(rec["output"])
        rec["tags"] = json.loads(rec["tags"]) if rec["tags"] else {}
        summary = decode_features(rec["features"])
        rec["features"] = (
            None if summary is None else np.round(summary.astype(np.float64), 4).tolist()
        )
        if rec["origin"] == "device" and rec["label"] is None:
            _label_device_record(rec, self._labels(rec["model_version"]))
        return rec

    def _labels(self, version_id: int | None) -> tuple[str, ...]:
        return _version_labels(self.db, version_id, self.version_labels)

    def export(self, f: LogFilter, fmt: Literal["jsonl", "csv"]) -> Iterator[str]:
        if fmt == "jsonl":
            for rec in self.iter_records(f):
                yield json.dumps(rec) + "\n"
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(FIELDS))
        writer.writeheader()
        for i, rec in enumerate(self.iter_records(f), 1):
            flat = dict(rec)
            flat["output"] = json.dumps(rec["output"]) if rec["output"] is not None else ""
            flat["tags"] = json.dumps(rec["tags"]) if rec["tags"] else ""
            flat["features"] = json.dumps(rec["features"]) if rec["features"] else ""
            writer.writerow(flat)
            if i % 500 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()


def _label_device_record(rec: dict[str, Any], labels: tuple[str, ...]) -> None:
    """A device logs its answer: a head's result (`{"task": ..., ...}`), or class scores from
    older agents; a classifier's label and score are derived here, as for endpoints."""
    out = rec["output"]
    if isinstance(out, dict) and "task" in out:
        if out["task"] != "classification":
            return  # detections, points, ...: the result is the record's answer
        if isinstance(out.get("label"), str) and isinstance(out.get("score"), int | float):
            rec["label"], rec["score"] = out["label"], float(out["score"])
            return
    scores = out.get("scores") if isinstance(out, dict) else out
    if not isinstance(scores, list) or not scores:
        return
    flat = scores[0] if isinstance(scores[0], list) else scores
    if not flat or not all(isinstance(v, int | float) for v in flat):
        return
    top = max(range(len(flat)), key=flat.__getitem__)
    rec["score"] = float(flat[top])
    rec["label"] = labels[top] if top < len(labels) else str(top)


_LABELS: dict[tuple[str, int], tuple[str, ...]] = {}  # a version's labels never change


def _version_labels(db: Database, version_id: int | None, read: VersionLabels) -> tuple[str, ...]:
    if version_id is None:
        return ()
    key = (str(db.path), version_id)
    labels = _LABELS.get(key)
    if labels is None:
        labels = _LABELS[key] = tuple(read(version_id) or ())
    return labels


def _output(stored: bytes | str | None) -> Any:
    """An endpoint record's scores (float32 bytes) or a device's output (JSON text)."""
    if stored is None:
        return None
    if isinstance(stored, bytes):
        scores = decode_features(stored)
        return None if scores is None else np.round(scores.astype(np.float64), 6).tolist()
    try:
        return json.loads(stored)
    except ValueError:
        return None
