"""The deployment tables: `deployments` (one row a rollout of a version) and
`deployment_devices` (one row a device's part in it: phase, progress, the artifact it gets).

Only this module reads and writes them. `deployments.DeploymentStore` (create, promote, set
parameters, read), `rollout.Rollout` (progress and decisions) and `desired.DesiredStates` (the
document a device gets) call these functions; each takes the caller's connection, so the
caller's transaction holds what it reads and writes together.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

# -- deployments ---------------------------------------------------------------------------------


def insert_deployment(conn: sqlite3.Connection, columns: dict[str, Any]) -> int:
    """A new deployment row of these column values; its id."""
    sql = (
        f"INSERT INTO deployments ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    )
    return int(conn.execute(sql, list(columns.values())).lastrowid or 0)


def deployment_row(conn: sqlite3.Connection, deployment_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM deployments WHERE id = ?", [deployment_id]).fetchone()


def newest_rows(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """The newest deployments, newest first."""
    return conn.execute("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", [limit]).fetchall()


def newest_heads(conn: sqlite3.Connection, limit: int) -> list[tuple[int, str, str]]:
    """The newest deployments' (id, status, updated_at)."""
    rows = conn.execute(
        "SELECT id, status, updated_at FROM deployments ORDER BY id DESC LIMIT ?", [limit]
    ).fetchall()
    return [(int(r["id"]), str(r["status"]), str(r["updated_at"])) for r in rows]


def live_deployment_ids(conn: sqlite3.Connection) -> list[int]:
    """Deployments in canary or rolling out, by id."""
    rows = conn.execute(
        "SELECT id FROM deployments WHERE status IN ('canary', 'rolling_out') ORDER BY id"
    ).fetchall()
    return [int(r[0]) for r in rows]


def set_status(
    conn: sqlite3.Connection, deployment_id: int, status: str, reason: str, now: str
) -> None:
    conn.execute(
        "UPDATE deployments SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
        [status, reason, now, deployment_id],
    )


def mark_promoted(
    conn: sqlite3.Connection, deployment_id: int, new_id: int, reason: str, now: str
) -> None:
    """The deployment's shadow is active in `new_id`: it is superseded, pointing there."""
    conn.execute(
        "UPDATE deployments SET promoted_to = ?, status = 'superseded', reason = ?, "
        "updated_at = ? WHERE id = ?",
        [new_id, reason, now, deployment_id],
    )


def set_params(conn: sqlite3.Connection, deployment_id: int, params: str, now: str) -> None:
    """New serving parameters (JSON): the deployment's params_rev steps."""
    conn.execute(
        "UPDATE deployments SET params = ?, params_rev = params_rev + 1, updated_at = ? "
        "WHERE id = ?",
        [params, now, deployment_id],
    )


# -- the devices of a deployment -------------------------------------------------------------------


def insert_device(
    conn: sqlite3.Connection,
    deployment_id: int,
    device_id: str,
    *,
    phase: str,
    state: str,
    artifact_id: int | None,
    shadow_artifact_id: int | None = None,
    candidate_artifact_ids: list[int] | None = None,
    threads: int | None = None,
    choice: str | None = None,
) -> None:
    """`candidate_artifact_ids` (`--artifact auto`, in the hub's preference order): what the
    device measures before `choice` says how `artifact_id` (and `threads`) were settled."""
    conn.execute(
        "INSERT INTO deployment_devices (deployment_id, device_id, phase, state, "
        "artifact_id, shadow_artifact_id, candidate_artifact_ids, threads, choice) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            deployment_id,
            device_id,
            phase,
            state,
            artifact_id,
            shadow_artifact_id,
            None if candidate_artifact_ids is None else json.dumps(candidate_artifact_ids),
            threads,
            choice,
        ],
    )


def set_choice(
    conn: sqlite3.Connection,
    deployment_id: int,
    device_id: str,
    *,
    artifact_id: int,
    threads: int | None,
    choice: str,
    now: str,
) -> None:
    """The artifact (and threads) an `auto` device runs, and how that was settled."""
    conn.execute(
        "UPDATE deployment_devices SET artifact_id = ?, threads = ?, choice = ?, updated_at = ? "
        "WHERE deployment_id = ? AND device_id = ?",
        [artifact_id, threads, choice, now, deployment_id, device_id],
    )


def device_rows(conn: sqlite3.Connection, deployment_id: int) -> list[sqlite3.Row]:
    """Every device row of the deployment, by phase and device."""
    return conn.execute(
        "SELECT * FROM deployment_devices WHERE deployment_id = ? ORDER BY phase, device_id",
        [deployment_id],
    ).fetchall()


def live_device_rows(conn: sqlite3.Connection, deployment_id: int) -> list[sqlite3.Row]:
    """The deployment's rows not superseded, by device."""
    return conn.execute(
        "SELECT * FROM deployment_devices WHERE deployment_id = ? "
        "AND state != 'superseded' ORDER BY device_id",
        [deployment_id],
    ).fetchall()


def supersede(conn: sqlite3.Connection, device_id: str, new_id: int, now: str) -> None:
    """The device's rows in older deployments end; a deployment left with no live row
    (every row superseded) is superseded as a whole."""
    older = [
        r[0]
        for r in conn.execute(
            "SELECT deployment_id FROM deployment_devices WHERE device_id = ? "
            "AND deployment_id != ? AND state != 'superseded'",
            [device_id, new_id],
        )
    ]
    for dep in older:
        conn.execute(
            "UPDATE deployment_devices SET state = 'superseded', "
            "reason = ?, updated_at = ? WHERE deployment_id = ? AND device_id = ?",
            [f"superseded by deployment {new_id}", now, dep, device_id],
        )
        (live,) = conn.execute(
            "SELECT COUNT(*) FROM deployment_devices WHERE deployment_id = ? "
            "AND state != 'superseded'",
            [dep],
        ).fetchone()
        if live == 0:
            conn.execute(
                "UPDATE deployments SET status = 'superseded', reason = ?, updated_at = ? "
                "WHERE id = ? AND status != 'halted'",
                [f"superseded by deployment {new_id}", now, dep],
            )


def assignment(conn: sqlite3.Connection, deployment_id: int, device_id: str) -> sqlite3.Row | None:
    """The device's row of the deployment with the deployment's version and params: state,
    version_id, artifact_id, shadow_artifact_id, threads (the device's own, chosen by `auto`,
    else the deployment's), probation, params, shadow_version_id, artifact (the deployment's
    choice), accuracy_budget, candidate_artifact_ids (JSON or None), choice."""
    return conn.execute(
        "SELECT dd.state, dd.artifact_id, dd.shadow_artifact_id, d.version_id, "
        "COALESCE(dd.threads, d.threads) AS threads, d.probation, d.params, "
        "d.shadow_version_id, d.artifact, d.accuracy_budget, dd.candidate_artifact_ids, "
        "dd.choice FROM deployment_devices dd "
        "JOIN deployments d ON d.id = dd.deployment_id "
        "WHERE dd.deployment_id = ? AND dd.device_id = ?",
        [deployment_id, device_id],
    ).fetchone()


def set_shadow_progress(
    conn: sqlite3.Connection,
    deployment_id: int,
    device_id: str,
    state: str,
    reason: str | None,
    now: str,
) -> None:
    conn.execute(
        "UPDATE deployment_devices SET shadow_state = ?, shadow_reason = ?, "
        "updated_at = ? WHERE deployment_id = ? AND device_id = ?",
        [state, reason, now, deployment_id, device_id],
    )


def set_progress(
    conn: sqlite3.Connection,
    deployment_id: int,
    device_id: str,
    state: str,
    reason: str | None,
    received_bytes: int | None,
    now: str,
) -> None:
    """A device's report: its state (active_since set when it first becomes active)."""
    conn.execute(
        "UPDATE deployment_devices SET state = ?, reason = ?, "
        "received_bytes = COALESCE(?, received_bytes), updated_at = ?, "
        "active_since = CASE WHEN ? = 'active' THEN COALESCE(active_since, ?) END "
        "WHERE deployment_id = ? AND device_id = ?",
        [state, reason, received_bytes, now, state, now, deployment_id, device_id],
    )


def release_waiting(conn: sqlite3.Connection, deployment_id: int, now: str) -> None:
    """The canary is healthy: the waiting rest become pending (to be published)."""
    conn.execute(
        "UPDATE deployment_devices SET state = 'pending', updated_at = ? "
        "WHERE deployment_id = ? AND state = 'waiting'",
        [now, deployment_id],
    )


def hold_unpublished(conn: sqlite3.Connection, deployment_id: int, now: str) -> None:
    """Halted: rows promoted but not yet published go back to waiting (never sent)."""
    conn.execute(
        "UPDATE deployment_devices SET state = 'waiting', updated_at = ? "
        "WHERE deployment_id = ? AND state = 'pending' AND published_at IS NULL",
        [now, deployment_id],
    )


def unpublished(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """(deployment id, device id) of rows to send: pending, never published, of a live
    deployment; oldest first."""
    rows = conn.execute(
        "SELECT dd.deployment_id, dd.device_id FROM deployment_devices dd "
        "JOIN deployments d ON d.id = dd.deployment_id "
        "WHERE dd.state = 'pending' AND dd.published_at IS NULL "
        "AND d.status IN ('canary', 'rolling_out') ORDER BY dd.deployment_id, dd.device_id"
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def mark_published(conn: sqlite3.Connection, deployment_id: int, device_id: str, now: str) -> None:
    conn.execute(
        "UPDATE deployment_devices SET published_at = ?, updated_at = ? "
        "WHERE deployment_id = ? AND device_id = ? AND published_at IS NULL",
        [now, now, deployment_id, device_id],
    )


def params_behind(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    """(deployment id, device id, the deployment's params_rev) of every published, live row
    whose parameters are older than its deployment's."""
    rows = conn.execute(
        "SELECT dd.deployment_id, dd.device_id, d.params_rev FROM deployment_devices dd "
        "JOIN deployments d ON d.id = dd.deployment_id "
        "WHERE dd.params_rev < d.params_rev AND dd.published_at IS NOT NULL "
        "AND dd.state != 'superseded' ORDER BY dd.deployment_id, dd.device_id"
    ).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def mark_params_published(
    conn: sqlite3.Connection, deployment_id: int, device_id: str, rev: int
) -> None:
    conn.execute(
        "UPDATE deployment_devices SET params_rev = MAX(params_rev, ?) "
        "WHERE deployment_id = ? AND device_id = ?",
        [rev, deployment_id, device_id],
    )
