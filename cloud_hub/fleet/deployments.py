"""Deployments: a version's artifact to a device, tag or group, all at once or canary first.

Creating one only writes rows: the per-device rows start `pending` (published by the hub's MQTT
service, which polls for rows it has not published yet) or `waiting` (canary not promoted). So
the CLI, which opens the database directly, and the REST API create deployments the same way,
and the running hub picks them up within its poll interval. Everything is validated first and
written in one transaction: an invalid request stores nothing.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from pydantic import ValidationError

from cloud_hub.db import Database
from cloud_hub.errors import InvalidInput, NotFound
from cloud_hub.fleet.artifacts import choose_artifact, parse_choice
from cloud_hub.fleet.devices import DeviceStore
from cloud_hub.fleet.schemas import Deployment, DeploymentCreate, DeploymentDevice, Device
from cloud_hub.registry import Registry, utcnow
from cloud_hub.schemas import Artifact
from edge_agent.wire import ProbationPolicy

ACTIVE_STATUSES = ("canary", "rolling_out")


def _target(body: DeploymentCreate) -> tuple[str, str]:
    given = [(k, v) for k, v in (("device", body.device), ("tag", body.tag), ("group", body.group))]
    named = [(k, v) for k, v in given if v is not None]
    if not named:
        raise InvalidInput("a deployment needs one target: a device, a tag or a group")
    if len(named) > 1:
        raise InvalidInput(
            "a deployment has exactly one target, got " + " and ".join(k for k, _ in named)
        )
    kind, value = named[0]
    assert value is not None
    return kind, value


def canary_size(body: DeploymentCreate, total: int) -> int:
    """How many of `total` devices get the version first (at least 1, at most all)."""
    if body.canary_count is not None:
        n = body.canary_count
    elif body.canary_percent is not None:
        n = math.ceil(total * body.canary_percent / 100)
    else:
        n = 1
    return max(1, min(total, n))


class DeploymentStore:
    def __init__(self, db: Database, registry: Registry, devices: DeviceStore) -> None:
        self.db = db
        self.registry = registry
        self.devices = devices

    # -- create ---------------------------------------------------------------------------------
    def _targets(self, kind: str, value: str) -> list[Device]:
        if kind == "device":
            return [self.devices.get(value)]
        found = self.devices.all(tag=value) if kind == "tag" else self.devices.all(group=value)
        if not found:
            raise NotFound(kind, value)  # a tag or group exists only through its devices
        return found

    def _validate(self, body: DeploymentCreate) -> None:
        if body.strategy == "canary":
            if body.canary_count is not None and body.canary_percent is not None:
                raise InvalidInput("give canary_count or canary_percent, not both")
        elif body.canary_count is not None or body.canary_percent is not None:
            raise InvalidInput("canary_count and canary_percent need strategy 'canary'")
        try:
            ProbationPolicy(**body.probation)
        except (ValidationError, TypeError) as exc:
            raise InvalidInput(f"probation policy is invalid: {exc}") from None
        parse_choice(body.artifact)

    def create(self, body: DeploymentCreate) -> Deployment:
        kind, value = _target(body)
        self._validate(body)
        version = self.registry.resolve_version(body.version)
        if version.status == "failed":
            raise InvalidInput(
                f"version {version.ref} failed its checks ({version.status_reason}); "
                "it cannot be deployed"
            )
        targets = self._targets(kind, value)
        choices: dict[str, Artifact] = {}
        missing = []
        for device in targets:
            art = choose_artifact(version.artifacts, device.runtimes, body.artifact)
            if art is None:
                missing.append(f"{device.id} (runs {', '.join(device.runtimes)})")
            else:
                choices[device.id] = art
        if missing:
            have = ", ".join(
                f"{a.format}/{a.precision}" for a in version.artifacts if a.status != "failed"
            )
            raise InvalidInput(
                f"version {version.ref} has no {body.artifact!r} artifact that "
                f"{'; '.join(missing)} can run (it has: {have or 'none usable'})"
            )
        ordered = sorted(targets, key=lambda d: d.id)
        promote_after_s = body.promote_after_s
        if promote_after_s is None:
            promote_after_s = (
                ProbationPolicy(**body.probation).window_s if body.strategy == "canary" else 0.0
            )
        canaries = canary_size(body, len(ordered)) if body.strategy == "canary" else len(ordered)
        with self.db.transaction() as db:
            deployment_id = int(
                db.execute(
                    "INSERT INTO deployments (version_id, artifact, target_kind, target, strategy, "
                    "canary_count, canary_percent, failure_threshold, promote_after_s, threads, "
                    "probation, params, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        version.id,
                        body.artifact,
                        kind,
                        value,
                        body.strategy,
                        body.canary_count,
                        body.canary_percent,
                        body.failure_threshold,
                        promote_after_s,
                        body.threads,
                        json.dumps(body.probation),
                        json.dumps(body.params),
                        "canary" if body.strategy == "canary" else "rolling_out",
                    ],
                ).lastrowid
                or 0
            )
            for position, device in enumerate(ordered):
                self._supersede(db.conn, device.id, deployment_id)
                first = position < canaries
                db.execute(
                    "INSERT INTO deployment_devices (deployment_id, device_id, phase, state, "
                    "artifact_id) VALUES (?, ?, ?, ?, ?)",
                    [
                        deployment_id,
                        device.id,
                        "canary" if body.strategy == "canary" and first else "rest",
                        "pending" if first else "waiting",
                        choices[device.id].id,
                    ],
                )
        return self.get(deployment_id)

    @staticmethod
    def _supersede(conn: sqlite3.Connection, device_id: str, new_id: int) -> None:
        """The device's rows in older deployments end; a deployment left with no live row
        (every row superseded) is superseded as a whole."""
        now = utcnow()
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

    # -- read -----------------------------------------------------------------------------------
    def get(self, deployment_id: int) -> Deployment:
        row = self.db.conn.execute(
            "SELECT * FROM deployments WHERE id = ?", [deployment_id]
        ).fetchone()
        if row is None:
            raise NotFound("deployment", deployment_id)
        return self._deployment(row)

    def list(self, *, limit: int = 100) -> list[Deployment]:
        rows = self.db.conn.execute(
            "SELECT * FROM deployments ORDER BY id DESC LIMIT ?", [limit]
        ).fetchall()
        return [self._deployment(r) for r in rows]

    def _deployment(self, row: sqlite3.Row) -> Deployment:
        d: dict[str, Any] = dict(row)
        version = self.registry.get_version_by_id(d["version_id"])
        rows = self.db.conn.execute(
            "SELECT dd.*, a.format, a.precision FROM deployment_devices dd "
            "LEFT JOIN artifacts a ON a.id = dd.artifact_id WHERE dd.deployment_id = ? "
            "ORDER BY dd.phase, dd.device_id",
            [d["id"]],
        ).fetchall()
        devices = [
            DeploymentDevice(
                device_id=r["device_id"],
                phase=r["phase"],
                state=r["state"],
                artifact=None if r["format"] is None else f"{r['format']}/{r['precision']}",
                reason=r["reason"],
                received_bytes=r["received_bytes"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]
        return Deployment(
            id=d["id"],
            version_id=d["version_id"],
            version=version.ref,
            artifact=d["artifact"],
            target_kind=d["target_kind"],
            target=d["target"],
            strategy=d["strategy"],
            canary_count=d["canary_count"],
            canary_percent=d["canary_percent"],
            failure_threshold=d["failure_threshold"],
            promote_after_s=d["promote_after_s"],
            threads=d["threads"],
            probation=json.loads(d["probation"]),
            params=json.loads(d["params"]),
            status=d["status"],
            reason=d["reason"],
            devices=devices,
            created_at=d["created_at"],
            updated_at=d["updated_at"],
        )
