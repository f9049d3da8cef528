"""Logs and telemetry from devices' outboxes: stored idempotently, acknowledged contiguously.

Logs and telemetry share one per-device sequence. Each batch is stored in one transaction
(INSERT OR IGNORE on (device, seq): a batch sent twice is stored once), then the device's
contiguous mark `acked_upto` is advanced: first to `floor - 1` (the agent no longer holds
anything below its floor: it was acknowledged or dropped under its overflow policy), then over
every sequence stored just above it in either table. The caller acknowledges only after this
returns, i.e. after the commit.
"""

from __future__ import annotations

import json
import sqlite3

from cloud_hub.db import Database
from edge_agent.features import encode as encode_features
from edge_agent.wire import LogBatch, TelemetryBatch

_SEQS_ABOVE = (
    "SELECT seq FROM inference_logs WHERE device_id = ? AND seq > ? "
    "UNION SELECT seq FROM telemetry WHERE device_id = ? AND seq > ? ORDER BY seq"
)


def _advance(conn: sqlite3.Connection, device_id: str, floor: int) -> int:
    (mark,) = conn.execute("SELECT acked_upto FROM devices WHERE id = ?", [device_id]).fetchone()
    mark = max(int(mark), floor - 1)
    for (seq,) in conn.execute(_SEQS_ABOVE, [device_id, mark, device_id, mark]):
        if seq != mark + 1:
            break
        mark = seq
    conn.execute("UPDATE devices SET acked_upto = ? WHERE id = ?", [mark, device_id])
    return mark


class Ingest:
    def __init__(self, db: Database) -> None:
        self.db = db

    def store_logs(self, device_id: str, batch: LogBatch) -> int:
        """Store a log batch; returns the device's new contiguous mark."""
        with self.db.transaction() as db:
            conn = db.conn
            conn.executemany(
                "INSERT OR IGNORE INTO inference_logs (device_id, seq, request_id, model_version, "
                "input_digest, output, latency_ms, ts, source, role, thresholded, features) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        device_id,
                        r.seq,
                        r.request_id,
                        r.model_version,
                        r.input_digest,
                        json.dumps(r.output),
                        r.latency_ms,
                        r.ts,
                        r.source,
                        r.role,
                        int(r.thresholded),
                        None if r.features is None else encode_features(r.features),
                    )
                    for r in batch.records
                ],
            )
            return _advance(conn, device_id, batch.floor)

    def store_telemetry(self, device_id: str, batch: TelemetryBatch) -> int:
        """Store a telemetry batch; returns the device's new contiguous mark."""
        with self.db.transaction() as db:
            conn = db.conn
            conn.executemany(
                "INSERT OR IGNORE INTO telemetry (device_id, seq, ts, data) VALUES (?, ?, ?, ?)",
                [
                    (device_id, r.seq, r.ts, r.model_dump_json(exclude={"seq", "ts"}))
                    for r in batch.records
                ],
            )
            return _advance(conn, device_id, batch.floor)
