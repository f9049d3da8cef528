"""Rollout state: per-device progress from reports, and each deployment's canary/halt/complete
decisions. Pure database work (no MQTT), driven by the MQTT service.

Decisions, made by `evaluate` (after every report and on the service's poll):
- the *failed fraction* is failed-or-rolled-back devices over devices that were sent the version
  (not `waiting`, not superseded). When it reaches `failure_threshold` (and at least one failed)
  the deployment is `halted`: rows not yet published go back to `waiting` and are never sent.
- a canary deployment is promoted when every canary device has finished (active or failed, the
  failures below the threshold), at least one is active, and every active one has been active for
  `promote_after_s`; the `waiting` rest become `pending` and are published.
- a deployment whose devices have all finished is `completed`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from cloud_hub.core.db import Database
from cloud_hub.fleet import deployment_store as store
from cloud_hub.fleet import devices
from cloud_hub.fleet.errors import Rejected
from cloud_hub.registry.registry import artifact_files, utcnow
from edge_agent.core.wire import Report

FAILED = ("failed", "rolled_back")
FINISHED = ("active", *FAILED)


def _age_s(stamp: str | None, now: datetime) -> float:
    if stamp is None:
        return 0.0
    return (now - datetime.fromisoformat(stamp)).total_seconds()


@dataclass(frozen=True)
class Assignment:
    """One device's row of one deployment."""

    deployment_id: int
    device_id: str


class Rollout:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reports ------------------------------------------------------------------------------
    def apply_report(self, device_id: str, report: Report) -> int | None:
        """Record a device's progress; returns the deployment to re-evaluate (None if the
        report names none). Rejected when it names a deployment the device is not part of."""
        now = utcnow()
        with self.db.transaction() as db:
            conn = db.conn
            if report.deployment_id is None:
                if report.state in FAILED:
                    devices.set_last_reason(conn, device_id, f"{report.state}: {report.reason}")
                return None
            row = store.assignment(conn, report.deployment_id, device_id)
            if row is None:
                raise Rejected(
                    f"report for deployment {report.deployment_id}, which does not include "
                    f"device {device_id}"
                )
            if row["state"] in ("superseded", "waiting"):
                return None  # a late report of an older deployment, or one never sent
            if report.role == "shadow":  # the candidate's progress: no rollout decision
                store.set_shadow_progress(
                    conn, report.deployment_id, device_id, report.state, report.reason, now
                )
                return None
            store.set_progress(
                conn,
                report.deployment_id,
                device_id,
                report.state,
                report.reason,
                report.received_bytes,
                now,
            )
            if report.state == "active":
                devices.set_active_version(conn, device_id, row["version_id"])
        return report.deployment_id

    # -- decisions ------------------------------------------------------------------------------
    def live_deployments(self) -> list[int]:
        return store.live_deployment_ids(self.db.conn)

    def evaluate(self, deployment_id: int) -> str:
        """Apply the rollout rules to one deployment; returns its status afterwards."""
        now_text = utcnow()
        now = datetime.fromisoformat(now_text)
        with self.db.transaction() as db:
            conn = db.conn
            dep = store.deployment_row(conn, deployment_id)
            if dep is None or dep["status"] not in ("canary", "rolling_out"):
                return "gone" if dep is None else str(dep["status"])
            rows = store.live_device_rows(conn, deployment_id)
            if not rows:
                return self._set(conn, deployment_id, "superseded", "every device superseded")
            sent = [r for r in rows if r["state"] != "waiting"]
            failed = [r for r in sent if r["state"] in FAILED]
            if failed and len(failed) / len(sent) >= dep["failure_threshold"]:
                return self._halt(conn, deployment_id, dep, sent, failed, now_text)
            status = str(dep["status"])
            if status == "canary":
                canaries = [r for r in rows if r["phase"] == "canary"]
                active = [r for r in canaries if r["state"] == "active"]
                settled = all(r["state"] in FINISHED for r in canaries) and all(
                    _age_s(r["active_since"], now) >= dep["promote_after_s"] for r in active
                )
                if not (settled and active):
                    return status
                store.release_waiting(conn, deployment_id, now_text)
                status = self._set(
                    conn, deployment_id, "rolling_out", f"canary healthy: {len(active)} active"
                )
                rows = store.live_device_rows(conn, deployment_id)
            if all(r["state"] in FINISHED for r in rows):
                n_failed = sum(r["state"] in FAILED for r in rows)
                reason = f"{len(rows) - n_failed} active, {n_failed} failed"
                return self._set(conn, deployment_id, "completed", reason)
            return status

    def _halt(
        self,
        conn: sqlite3.Connection,
        deployment_id: int,
        dep: sqlite3.Row,
        sent: list[sqlite3.Row],
        failed: list[sqlite3.Row],
        now: str,
    ) -> str:
        first = failed[0]
        reason = (
            f"{len(failed)} of {len(sent)} devices failed (threshold "
            f"{100 * dep['failure_threshold']:.0f}%): {first['device_id']}: "
            f"{first['reason'] or first['state']}"
        )
        store.hold_unpublished(conn, deployment_id, now)  # promoted, unpublished: not sent
        return self._set(conn, deployment_id, "halted", reason)

    @staticmethod
    def _set(conn: sqlite3.Connection, deployment_id: int, status: str, reason: str) -> str:
        store.set_status(conn, deployment_id, status, reason, utcnow())
        return status

    # -- publishing bookkeeping ------------------------------------------------------------------
    def unpublished(self) -> list[Assignment]:
        """Rows to send: pending, never published, of a live deployment; oldest first."""
        return [Assignment(dep, dev) for dep, dev in store.unpublished(self.db.conn)]

    def current_desired(self) -> list[Assignment]:
        """Every device's current desired deployment (to publish again after a broker loss)."""
        return [Assignment(dep, dev) for dep, dev in devices.desired_deployments(self.db.conn)]

    def claim_desired(self, a: Assignment) -> bool:
        """Make `a` the device's desired deployment before it is published, so a fetch that
        follows the publication at once is already allowed. False if a newer one holds it."""
        with self.db.transaction() as db:
            conn = db.conn
            row = store.assignment(conn, a.deployment_id, a.device_id)
            if row is None or row["state"] == "superseded":
                return False
            return devices.claim_desired(
                conn,
                a.device_id,
                a.deployment_id,
                version_id=row["version_id"],
                artifact_id=row["artifact_id"],
            )

    def is_current(self, a: Assignment) -> bool:
        """Whether `a` is still its device's desired deployment."""
        desired = devices.desired_of(self.db.conn, a.device_id)
        return desired is not None and desired[0] == a.deployment_id

    def mark_published(self, a: Assignment) -> None:
        now = utcnow()
        with self.db.transaction() as db:
            store.mark_published(db.conn, a.deployment_id, a.device_id, now)

    def desired_sha256(self, device_id: str) -> str | None:
        desired = devices.desired_of(self.db.conn, device_id)
        return None if desired is None else self._sha256(desired[1])

    def fetchable_sha256s(self, device_id: str) -> list[str]:
        """What the device may fetch: its desired artifact, then its desired shadow's, and
        while an `auto` choice is not settled, every candidate."""
        conn = self.db.conn
        desired = devices.desired_of(conn, device_id)
        if desired is None:
            return []
        deployment_id, artifact_id = desired
        found = [] if (sha := self._sha256(artifact_id)) is None else [sha]
        row = None if deployment_id is None else store.assignment(conn, deployment_id, device_id)
        if row is not None and (sha := self._sha256(row["shadow_artifact_id"])) is not None:
            found.append(sha)
        if row is not None and row["choice"] is None and row["candidate_artifact_ids"]:
            ids = json.loads(row["candidate_artifact_ids"])
            files = artifact_files(conn, ids)
            found += [str(files[i]["sha256"]) for i in ids if i in files]
        return found

    def _sha256(self, artifact_id: int | None) -> str | None:
        row = artifact_files(self.db.conn, [artifact_id]).get(artifact_id or 0)
        return None if row is None else str(row["sha256"])

    # -- serving parameters changed after publication --------------------------------------------
    def params_changed(self) -> list[tuple[Assignment, int]]:
        """(row, the deployment's params_rev) for every device whose current desired deployment
        got new parameters since its desired state was published."""
        conn = self.db.conn
        rows = store.params_behind(conn)
        if not rows:
            return []
        desired = set(devices.desired_deployments(conn))
        return [(Assignment(dep, dev), rev) for dep, dev, rev in rows if (dep, dev) in desired]

    def mark_params_published(self, a: Assignment, rev: int) -> None:
        with self.db.transaction() as db:
            store.mark_params_published(db.conn, a.deployment_id, a.device_id, rev)
