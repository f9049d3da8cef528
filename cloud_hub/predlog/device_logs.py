"""The inference logs devices forwarded: the table `inference_logs`, one row a device's answer
(device, outbox epoch, seq), stored by the fleet's ingest.

Only this module reads and writes the table. The ingest (`fleet.ingest`) stores batches, the
fleet reads a device's newest logs and a deployment's shadow pairs, monitoring reads windows
(`monitoring.windows`, `monitoring.incremental`) and the log reader (`predlog.query`) pages them
beside the endpoints' records. Each function takes the caller's connection, so a caller's
transaction holds what it reads and writes together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

# -- the ingest ------------------------------------------------------------------------------------


def insert(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Store records (a seq stored already keeps its first record): each row (device_id, epoch,
    seq, request_id, model_version, input_digest, output, latency_ms, ts, source, role,
    thresholded, features, outputs_digest)."""
    conn.executemany(
        "INSERT OR IGNORE INTO inference_logs (device_id, epoch, seq, request_id, "
        "model_version, input_digest, output, latency_ms, ts, source, role, thresholded, "
        "features, outputs_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def digests_between(
    conn: sqlite3.Connection, device_id: str, epoch: str, low: int, high: int
) -> list[tuple[int, str]]:
    """(seq, 'request_id/input_digest') of the epoch's stored records with low <= seq <= high."""
    rows = conn.execute(
        "SELECT seq, request_id || '/' || input_digest FROM inference_logs "
        "WHERE device_id = ? AND epoch = ? AND seq BETWEEN ? AND ?",
        [device_id, epoch, low, high],
    )
    return [(int(r[0]), str(r[1])) for r in rows]


def seqs_above(conn: sqlite3.Connection, device_id: str, epoch: str, mark: int) -> list[int]:
    """The epoch's stored seqs above `mark`, ascending."""
    rows = conn.execute(
        "SELECT seq FROM inference_logs WHERE device_id = ? AND epoch = ? AND seq > ? ORDER BY seq",
        [device_id, epoch, mark],
    )
    return [int(r[0]) for r in rows]


# -- the fleet -------------------------------------------------------------------------------------


def counts(conn: sqlite3.Connection, device_ids: Sequence[str]) -> dict[str, int]:
    """Stored logs of each of the devices (those with none left out)."""
    out: dict[str, int] = {}
    for start in range(0, len(device_ids), 500):
        chunk = list(device_ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"SELECT device_id, COUNT(*) FROM inference_logs WHERE device_id IN ({marks}) "
            "GROUP BY device_id",
            chunk,
        )
        out.update({str(r[0]): int(r[1]) for r in rows})
    return out


def newest(conn: sqlite3.Connection, device_id: str, epoch: str, limit: int) -> list[sqlite3.Row]:
    """The epoch's newest `limit` records, by seq descending."""
    return conn.execute(
        "SELECT * FROM inference_logs WHERE device_id = ? AND epoch = ? ORDER BY seq DESC LIMIT ?",
        [device_id, epoch, limit],
    ).fetchall()


def shadow_pairs(
    conn: sqlite3.Connection, device_id: str, shadow_version: int, active_version: int
) -> list[sqlite3.Row]:
    """Each shadow log of the device with the active log of its request (a_out, s_out, a_ms,
    s_ms): the last one before it (the agent logs the active answer first) with the same
    request id and input. A caller may reuse a request id (an MQTT client chooses its own): a
    plain join on it would pair every repeat with every other."""
    return conn.execute(
        "SELECT a.output AS a_out, s.output AS s_out, a.latency_ms AS a_ms, "
        "s.latency_ms AS s_ms FROM inference_logs s JOIN inference_logs a "
        "ON a.device_id = s.device_id AND a.epoch = s.epoch AND a.seq = ("
        "SELECT MAX(p.seq) FROM inference_logs p WHERE p.device_id = s.device_id "
        "AND p.epoch = s.epoch "
        "AND p.request_id = s.request_id AND p.input_digest = s.input_digest "
        "AND p.role = 'active' AND p.seq < s.seq) "
        "WHERE s.device_id = ? AND s.role = 'shadow' AND s.model_version = ? "
        "AND a.model_version = ?",
        [device_id, shadow_version, active_version],
    ).fetchall()


# -- monitoring ------------------------------------------------------------------------------------

# What a window reads of an active answer (`monitoring.incremental`)
WINDOW_COLUMNS = (
    "l.device_id, l.epoch, l.seq, l.ts, l.request_id, l.model_version, l.output, "
    "l.latency_ms, l.features"
)


def active_between(conn: sqlite3.Connection, since: float, until: float) -> list[sqlite3.Row]:
    """Active answers with since <= ts < until (WINDOW_COLUMNS)."""
    return conn.execute(
        f"SELECT {WINDOW_COLUMNS} FROM inference_logs l WHERE l.ts >= ? AND l.ts < ? "
        "AND l.role = 'active'",
        [since, until],
    ).fetchall()


def active_since(conn: sqlite3.Connection, since: float) -> list[sqlite3.Row]:
    """Active answers with ts >= since (WINDOW_COLUMNS)."""
    return conn.execute(
        f"SELECT {WINDOW_COLUMNS} FROM inference_logs l WHERE l.ts >= ? AND l.role = 'active'",
        [since],
    ).fetchall()


def epochs_stamped_after(conn: sqlite3.Connection, after: float) -> list[tuple[str, str]]:
    """(device id, epoch) of the epochs with records stamped after `after`."""
    rows = conn.execute(
        # the ts index holds the key: a covering read of the new rows (the planner would
        # otherwise scan the table)
        "SELECT DISTINCT device_id, epoch FROM inference_logs INDEXED BY inference_logs_ts "
        "WHERE ts > ?",
        [after],
    )
    return [(str(r[0]), str(r[1])) for r in rows]


def active_above(
    conn: sqlite3.Connection, cursors: Sequence[tuple[str, str, int]], since: float
) -> list[sqlite3.Row]:
    """Per (device, epoch, seq) in `cursors`, its active answers with a higher seq and
    ts >= since (WINDOW_COLUMNS): each epoch a seek on the table's primary key."""
    values = ", ".join("(?, ?, ?)" for _ in cursors)
    args: list[Any] = [x for cursor in cursors for x in cursor]
    return conn.execute(
        f"WITH c(d, e, s) AS (VALUES {values}) SELECT {WINDOW_COLUMNS} FROM c "
        "CROSS JOIN inference_logs l ON l.device_id = c.d AND l.epoch = c.e "
        "AND l.seq > c.s WHERE +l.ts >= ? AND l.role = 'active'",
        [*args, since],
    ).fetchall()


def versions_between(conn: sqlite3.Connection, since: float, until: float) -> set[int]:
    """The model versions of records with since <= ts <= until."""
    rows = conn.execute(
        "SELECT DISTINCT model_version FROM inference_logs WHERE ts >= ? AND ts <= ? "
        "AND model_version IS NOT NULL",
        [since, until],
    )
    return {int(r[0]) for r in rows}


def devices_between(conn: sqlite3.Connection, since: float, until: float) -> list[str]:
    """The devices with records with since <= ts <= until."""
    sql = "SELECT DISTINCT device_id FROM inference_logs WHERE ts >= ? AND ts <= ?"
    return [str(r[0]) for r in conn.execute(sql, [since, until])]


_WINDOW = (
    "SELECT ts, request_id, role, model_version, 'ok', NULL, output, latency_ms, features "
    "FROM inference_logs WHERE {where} AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT ?"
)


def device_window(
    conn: sqlite3.Connection, device_id: str, since: float, until: float, limit: int
) -> list[tuple[Any, ...]]:
    """The device's newest `limit` active answers with since <= ts <= until, as a window's
    records (ts, request_id, role, model_version, outcome, label, output, latency_ms,
    features)."""
    sql = _WINDOW.format(where="device_id = ? AND role = 'active'")
    return [tuple(r) for r in conn.execute(sql, [device_id, since, until, limit])]


def version_window(
    conn: sqlite3.Connection, version: int, since: float, until: float, limit: int
) -> list[tuple[Any, ...]]:
    """The newest `limit` records of the model version (any role) with since <= ts <= until,
    as `device_window`'s."""
    sql = _WINDOW.format(where="model_version = ?")
    return [tuple(r) for r in conn.execute(sql, [version, since, until, limit])]


# -- the log reader --------------------------------------------------------------------------------


def logged(conn: sqlite3.Connection, device_id: str) -> bool:
    """Whether the device forwarded an inference log that is stored."""
    sql = "SELECT 1 FROM inference_logs WHERE device_id = ? LIMIT 1"
    return conn.execute(sql, [device_id]).fetchone() is not None


def _has_column(conn: sqlite3.Connection, column: str) -> bool:
    return any(r[1] == column for r in conn.execute("PRAGMA table_info(inference_logs)"))


def as_log_records(conn: sqlite3.Connection) -> tuple[str, str]:
    """(SELECT of every record in the log reader's columns, the expression of its role): a
    device calls the model it serves "active"; the log calls every returned answer "answer".
    The key is unique per (device, epoch, seq); the legacy epoch's keeps its earlier form."""
    role = (
        "(CASE role WHEN 'active' THEN 'answer' ELSE role END)"
        if _has_column(conn, "role")
        else "'answer'"
    )
    key = (
        "device_id || '#' || (CASE epoch WHEN '' THEN '' ELSE epoch || '#' END) || "
        "printf('%020d', seq)"
        if _has_column(conn, "epoch")
        else "device_id || '#' || printf('%020d', seq)"
    )
    sql = (
        f"SELECT 'device' AS origin, {key} AS k, ts, "
        f"request_id, NULL AS endpoint, device_id, NULL AS step, {role} AS role, model_version, "
        "NULL AS variant, 0 AS row, input_digest, NULL AS label, NULL AS score, output, "
        "latency_ms, 'ok' AS outcome, NULL AS error, json_object('source', source) AS tags, "
        "features, outputs_digest FROM inference_logs"
    )
    return sql, role
