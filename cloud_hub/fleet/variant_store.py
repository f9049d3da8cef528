"""The `variant_timings` table: what devices measured for `--artifact auto` deployments, one row
per (deployment, device, artifact, threads), with the device's hardware type.

Only this module reads and writes it; `variant_choice.VariantChoices` calls these functions with
the caller's connection, so a report's rows and the choice made from them commit together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["for_device", "for_hardware", "upsert"]

COLUMNS = (
    "device_id",
    "deployment_id",
    "version_id",
    "hardware",
    "cpu_count",
    "artifact_id",
    "threads",
    "load_ms",
    "p50_ms",
    "p99_ms",
    "rss_mb",
    "runs",
    "error",
    "measured_at",
)


def upsert(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Store measured rows; a device's report sent again replaces its earlier rows."""
    sql = (
        f"INSERT INTO variant_timings ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in COLUMNS)}) "
        "ON CONFLICT (deployment_id, device_id, artifact_id, threads) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("deployment_id",))
    )
    conn.executemany(sql, [[row[c] for c in COLUMNS] for row in rows])


def for_device(conn: sqlite3.Connection, deployment_id: int, device_id: str) -> list[sqlite3.Row]:
    """What the device measured for the deployment, by artifact and threads."""
    return conn.execute(
        "SELECT * FROM variant_timings WHERE deployment_id = ? AND device_id = ? "
        "ORDER BY artifact_id, threads",
        [deployment_id, device_id],
    ).fetchall()


def for_hardware(conn: sqlite3.Connection, version_id: int, hardware: str) -> list[sqlite3.Row]:
    """The newest measurement of each (artifact, threads) of the version on this hardware
    type, by any device."""
    return conn.execute(
        "SELECT * FROM variant_timings v WHERE version_id = ? AND hardware = ? "
        "AND id = (SELECT id FROM variant_timings w WHERE w.version_id = v.version_id "
        "AND w.hardware = v.hardware AND w.artifact_id = v.artifact_id "
        "AND w.threads = v.threads ORDER BY measured_at DESC, id DESC LIMIT 1) "
        "ORDER BY artifact_id, threads",
        [version_id, hardware],
    ).fetchall()
