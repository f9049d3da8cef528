"""The endpoints' prediction log: the table `prediction_logs`, one row one row of one answer
(the returned one, or a shadow's) to one request.

Only this module reads and writes the table: the writer (`predlog.writer`) stores batches, the
reports (`predlog.reports`) and the log reader (`predlog.query`) read them, and so do
monitoring's windows (`monitoring.windows`). Each function takes the caller's connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # types only: the model-in-image server, which has no database, imports this
    import sqlite3

# What the writer stores of each record, in its order (and `outputs_digest` after them)
COLUMNS = (
    "ts",
    "request_id",
    "endpoint",
    "step",
    "role",
    "model_version",
    "variant",
    "row",
    "input_digest",
    "label",
    "score",
    "output",
    "latency_ms",
    "outcome",
    "error",
    "tags",
    "features",
)
_INSERT = (
    f"INSERT INTO prediction_logs ({', '.join(COLUMNS)}, outputs_digest) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)}, ?)"
)


def insert(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Store records: each row the COLUMNS' values, then outputs_digest."""
    conn.executemany(_INSERT, rows)


# -- the reports -----------------------------------------------------------------------------------


def _newest(
    conn: sqlite3.Connection, sql: str, args: list[Any], max_records: int
) -> list[sqlite3.Row]:
    return conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", [*args, max_records]).fetchall()


def _since(since: float | None) -> tuple[str, list[Any]]:
    return ("AND ts >= ?", [since]) if since is not None else ("", [])


def variant_samples(
    conn: sqlite3.Connection,
    endpoint: str,
    metric: Literal["score", "latency", "error_rate"],
    *,
    since: float | None,
    max_records: int,
) -> list[sqlite3.Row]:
    """The endpoint's newest answers from an A/B split (variant, v: the metric's value)."""
    where, args = _since(since)
    base = "FROM prediction_logs WHERE endpoint = ? AND role = 'answer' AND variant IS NOT NULL"
    if metric == "score":
        sql = f"SELECT variant, score AS v {base} AND outcome = 'ok' {where}"
    elif metric == "latency":
        sql = f"SELECT variant, latency_ms AS v {base} AND outcome = 'ok' AND row = 0 {where}"
    else:
        sql = (
            f"SELECT variant, outcome != 'ok' AS v {base} AND row = 0 "
            f"AND outcome != 'bad_input' {where}"
        )
    return _newest(conn, sql, [endpoint, *args], max_records)


def answers_and_shadows(
    conn: sqlite3.Connection, endpoint: str, *, since: float | None, max_records: int
) -> list[sqlite3.Row]:
    """The endpoint's newest answer and shadow records (request_id, row, step, role, label,
    output, latency_ms, outcome, tags)."""
    where, args = _since(since)
    return _newest(
        conn,
        "SELECT request_id, row, step, role, label, output, latency_ms, outcome, tags "
        f"FROM prediction_logs WHERE endpoint = ? AND role IN ('answer', 'shadow') {where}",
        [endpoint, *args],
        max_records,
    )


# -- the log reader --------------------------------------------------------------------------------


def logged(conn: sqlite3.Connection, endpoint: str) -> bool:
    """Whether the prediction log holds a record of the endpoint (a deleted one's too)."""
    sql = "SELECT 1 FROM prediction_logs WHERE endpoint = ? LIMIT 1"
    return conn.execute(sql, [endpoint]).fetchone() is not None


# Every record in the log reader's columns
AS_LOG_RECORDS = (
    "SELECT 'endpoint' AS origin, printf('%020d', id) AS k, ts, request_id, endpoint, "
    "NULL AS device_id, step, role, model_version, variant, row, input_digest, label, score, "
    "output, latency_ms, outcome, error, tags, features, outputs_digest "
    "FROM prediction_logs"
)


# -- monitoring ------------------------------------------------------------------------------------

_WINDOW = (
    "SELECT ts, request_id, role, model_version, outcome, label, output, latency_ms, features "
    "FROM prediction_logs WHERE {where} AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT ?"
)


def _window(
    conn: sqlite3.Connection,
    where: str,
    args: list[Any],
    since: float,
    until: float,
    limit: int,
) -> list[tuple[Any, ...]]:
    sql = _WINDOW.format(where=where)
    return [tuple(r) for r in conn.execute(sql, [*args, since, until, limit])]


def version_window(
    conn: sqlite3.Connection, version: int, since: float, until: float, limit: int
) -> list[tuple[Any, ...]]:
    """The newest `limit` records of the model version with since <= ts <= until, as a
    window's records (ts, request_id, role, model_version, outcome, label, output,
    latency_ms, features)."""
    return _window(conn, "model_version = ?", [version], since, until, limit)


def failures_window(
    conn: sqlite3.Connection, endpoints: list[str], since: float, until: float, limit: int
) -> list[tuple[Any, ...]]:
    """The newest `limit` version-less failed answers of the endpoints, as `version_window`'s."""
    marks = ", ".join("?" for _ in endpoints)
    where = (
        f"endpoint IN ({marks}) AND model_version IS NULL AND outcome != 'ok' AND role = 'answer'"
    )
    return _window(conn, where, endpoints, since, until, limit)


def endpoint_window(
    conn: sqlite3.Connection, endpoint: str, since: float, until: float, limit: int
) -> list[tuple[Any, ...]]:
    """The endpoint's newest `limit` answers, as `version_window`'s."""
    return _window(conn, "endpoint = ? AND role = 'answer'", [endpoint], since, until, limit)


def versions_between(conn: sqlite3.Connection, since: float, until: float) -> set[int]:
    """The model versions of records with since <= ts <= until."""
    rows = conn.execute(
        "SELECT DISTINCT model_version FROM prediction_logs WHERE ts >= ? AND ts <= ? "
        "AND model_version IS NOT NULL",
        [since, until],
    )
    return {int(r[0]) for r in rows}


def endpoints_between(conn: sqlite3.Connection, since: float, until: float) -> list[str]:
    """The endpoints with records with since <= ts <= until."""
    sql = "SELECT DISTINCT endpoint FROM prediction_logs WHERE ts >= ? AND ts <= ?"
    return [str(r[0]) for r in conn.execute(sql, [since, until])]


def failing_without_version(conn: sqlite3.Connection, since: float, until: float) -> list[str]:
    """Endpoints with failed answers that name no model version, with since <= ts <= until."""
    rows = conn.execute(
        "SELECT DISTINCT endpoint FROM prediction_logs WHERE ts >= ? AND ts <= ? "
        "AND model_version IS NULL AND outcome != 'ok' AND role = 'answer'",
        [since, until],
    )
    return [str(r[0]) for r in rows]


def answering_versions(
    conn: sqlite3.Connection, endpoint: str, since: float, until: float
) -> set[int]:
    """The model versions that answered the endpoint's requests with since <= ts <= until."""
    rows = conn.execute(
        "SELECT DISTINCT model_version FROM prediction_logs WHERE endpoint = ? "
        "AND ts >= ? AND ts <= ? AND role = 'answer' AND model_version IS NOT NULL",
        [endpoint, since, until],
    )
    return {int(r[0]) for r in rows}


def latest_answering_version(conn: sqlite3.Connection, endpoint: str) -> int | None:
    """The model version of the endpoint's latest answer that names one."""
    row = conn.execute(
        "SELECT model_version FROM prediction_logs WHERE endpoint = ? "
        "AND role = 'answer' AND model_version IS NOT NULL ORDER BY ts DESC LIMIT 1",
        [endpoint],
    ).fetchone()
    return None if row is None else int(row[0])
