"""Deployments: a version's artifact to a device, tag or group, all at once or canary first.

Creating one only writes rows: the per-device rows start `pending` (published by the hub's MQTT
service, which polls for rows it has not published yet) or `waiting` (canary not promoted). So
the CLI, which opens the database directly, and the REST API create deployments the same way,
and the running hub picks them up within its poll interval. Everything is validated first and
written in one transaction: an invalid request stores nothing.

Quality and operations patterns at the edge:
- a *shadow*: a candidate version shipped beside the deployed one (its own artifact per device);
  the agents run it on the same inputs, log its answers and never return them.
  `shadow_report` compares the two from the logs stored at the hub; `promote` makes the
  candidate active as a new deployment of the exact artifact each device already holds, so the
  agents activate it without a transfer.
- *serving parameters* (`wire.ServingParams`): `set_params` stores new ones and bumps the
  deployment's `params_rev`; the MQTT service republishes the desired state (same model) to its
  devices, which apply them without a transfer.
"""

from __future__ import annotations

import builtins
import json
import math
import sqlite3

import numpy as np
from pydantic import ValidationError

from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.core.names import check_name
from cloud_hub.core.rows import model_from_row, row_dict
from cloud_hub.fleet import deployment_store as store
from cloud_hub.fleet.artifacts import choose_artifact, parse_choice
from cloud_hub.fleet.devices import DeviceStore
from cloud_hub.fleet.schemas import (
    Deployment,
    DeploymentCreate,
    DeploymentDevice,
    Device,
    ShadowDeviceReport,
    ShadowReport,
)
from cloud_hub.fleet.variant_choice import (
    AUTO,
    DEFAULT_BUDGET_POINTS,
    Candidates,
    VariantChoices,
    candidates_for,
)
from cloud_hub.predlog import device_logs
from cloud_hub.registry.registry import Registry, artifact_files, utcnow
from cloud_hub.registry.schemas import Artifact, Version
from edge_agent.core.heads.compare import logged_answers_agree
from edge_agent.core.wire import ProbationPolicy, ServingParams

ACTIVE_STATUSES = ("canary", "rolling_out")


def _target(body: DeploymentCreate) -> tuple[str, str]:
    """(kind, value); several devices are kind "device" with their ids joined by commas (a
    device id cannot hold one)."""
    several = None
    if body.devices is not None:
        if len(set(body.devices)) != len(body.devices):
            dup = sorted({d for d in body.devices if body.devices.count(d) > 1})
            raise InvalidInput(f"devices: {', '.join(dup)} given more than once")
        for device_id in body.devices:
            check_name("device", device_id)
        several = ",".join(body.devices)
    given = [
        ("device", body.device),
        ("devices", several),
        ("tag", body.tag),
        ("group", body.group),
    ]
    named = [(k, v) for k, v in given if v is not None]
    if not named:
        raise InvalidInput("a deployment needs one target: a device, devices, a tag or a group")
    if len(named) > 1:
        raise InvalidInput(
            "a deployment has exactly one target, got " + " and ".join(k for k, _ in named)
        )
    kind, value = named[0]
    assert value is not None
    return ("device" if kind == "devices" else kind), value


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
            return [self.devices.get(d) for d in value.split(",")]
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
        if body.artifact != AUTO:
            parse_choice(body.artifact)
            if body.accuracy_budget is not None:
                raise InvalidInput("accuracy_budget needs artifact 'auto'")

    def _choose(
        self, body: DeploymentCreate, version: Version, targets: builtins.list[Device]
    ) -> tuple[dict[str, Artifact], dict[str, Candidates]]:
        """Each device's artifact (for `auto`: its default pick) and, for `auto`, its
        candidates; InvalidInput naming the devices that can run none."""
        choices: dict[str, Artifact] = {}
        autos: dict[str, Candidates] = {}
        missing = []
        budget = DEFAULT_BUDGET_POINTS if body.accuracy_budget is None else body.accuracy_budget
        for device in targets:
            if body.artifact == AUTO:
                found = candidates_for(version.artifacts, device.runtimes, budget)
                if found is not None:
                    autos[device.id] = found
                art = None if found is None else found.default
            else:
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
        return choices, autos

    def create(self, body: DeploymentCreate) -> Deployment:
        kind, value = _target(body)
        self._validate(body)
        version = self.registry.resolve_version(body.version)
        if version.status == "failed":
            raise InvalidInput(
                f"version {version.ref} failed its checks ({version.status_reason}); "
                "it cannot be deployed"
            )
        shadow = self._shadow_version(body, version)
        targets = self._targets(kind, value)
        choices, autos = self._choose(body, version, targets)
        missing = []
        shadow_choices: dict[str, Artifact] = {}
        if shadow is not None:
            assert body.shadow is not None
            for device in targets:
                art = choose_artifact(shadow.artifacts, device.runtimes, body.shadow.artifact)
                if art is None:
                    missing.append(f"{device.id} (runs {', '.join(device.runtimes)})")
                else:
                    shadow_choices[device.id] = art
            if missing:
                raise InvalidInput(
                    f"shadow.artifact: version {shadow.ref} has no {body.shadow.artifact!r} "
                    f"artifact that {'; '.join(missing)} can run"
                )
        ordered = sorted(targets, key=lambda d: d.id)
        promote_after_s = body.promote_after_s
        if promote_after_s is None:
            promote_after_s = (
                ProbationPolicy(**body.probation).window_s if body.strategy == "canary" else 0.0
            )
        canaries = canary_size(body, len(ordered)) if body.strategy == "canary" else len(ordered)
        with self.db.transaction() as db:
            deployment_id = store.insert_deployment(
                db.conn,
                {
                    "version_id": version.id,
                    "artifact": body.artifact,
                    "target_kind": kind,
                    "target": value,
                    "strategy": body.strategy,
                    "canary_count": body.canary_count,
                    "canary_percent": body.canary_percent,
                    "failure_threshold": body.failure_threshold,
                    "promote_after_s": promote_after_s,
                    "threads": body.threads,
                    "accuracy_budget": (
                        (
                            DEFAULT_BUDGET_POINTS
                            if body.accuracy_budget is None
                            else body.accuracy_budget
                        )
                        if body.artifact == AUTO
                        else None
                    ),
                    "probation": json.dumps(body.probation),
                    "params": _params_json(body.params),
                    "status": "canary" if body.strategy == "canary" else "rolling_out",
                    "shadow_version_id": shadow.id if shadow is not None else None,
                    "shadow_artifact": body.shadow.artifact if body.shadow is not None else None,
                },
            )
            for position, device in enumerate(ordered):
                store.supersede(db.conn, device.id, deployment_id, utcnow())
                first = position < canaries
                shadow_art = shadow_choices.get(device.id)
                store.insert_device(
                    db.conn,
                    deployment_id,
                    device.id,
                    phase="canary" if body.strategy == "canary" and first else "rest",
                    state="pending" if first else "waiting",
                    artifact_id=choices[device.id].id,
                    shadow_artifact_id=shadow_art.id if shadow_art is not None else None,
                    candidate_artifact_ids=(
                        [a.id for a in autos[device.id].ordered] if device.id in autos else None
                    ),
                )
        return self.get(deployment_id)

    def _shadow_version(self, body: DeploymentCreate, version: Version) -> Version | None:
        """The shadow's version, checked; InvalidInput naming the field otherwise."""
        if body.shadow is None:
            return None
        try:
            shadow = self.registry.resolve_version(body.shadow.version)
        except NotFound as exc:
            raise InvalidInput(f"shadow.version: {exc}") from None
        if shadow.id == version.id:
            raise InvalidInput(
                f"shadow.version: {shadow.ref} is the version being deployed; a shadow is "
                "another version run beside it"
            )
        if shadow.status == "failed":
            raise InvalidInput(
                f"shadow.version: {shadow.ref} failed its checks ({shadow.status_reason})"
            )
        if shadow.preprocessing != version.preprocessing:
            raise InvalidInput(
                f"shadow.version: {shadow.ref} prepares its inputs differently from "
                f"{version.ref}; a shadow gets the same inputs as the model it shadows"
            )
        try:
            parse_choice(body.shadow.artifact)
        except InvalidInput as exc:
            raise InvalidInput(f"shadow.artifact: {exc}") from None
        return shadow

    # -- promote a shadow -------------------------------------------------------------------------
    def promote(self, deployment_id: int) -> Deployment:
        """Make the deployment's shadow the active model on its devices: a new deployment of the
        shadow version (no shadow, same parameters, threads and probation) with, per device,
        the artifact that device already holds as its shadow, so it needs no transfer. The old
        deployment is superseded and points at the new one (`promoted_to`)."""
        dep = self.get(deployment_id)
        if dep.shadow_version_id is None:
            raise InvalidInput(f"deployment {deployment_id} has no shadow to promote")
        if dep.promoted_to is not None:
            raise InvalidInput(
                f"deployment {deployment_id} was already promoted (deployment {dep.promoted_to})"
            )
        if dep.status == "superseded":
            raise InvalidInput(
                f"deployment {deployment_id} is superseded ({dep.reason}); its devices run "
                "another deployment now"
            )
        conn = self.db.conn
        rows = store.live_device_rows(conn, deployment_id)
        d = store.deployment_row(conn, deployment_id)
        if d is None:
            raise NotFound("deployment", deployment_id)
        with self.db.transaction() as db:
            new_id = store.insert_deployment(
                db.conn,
                {
                    "version_id": dep.shadow_version_id,
                    "artifact": d["shadow_artifact"] or "best",
                    "target_kind": dep.target_kind,
                    "target": dep.target,
                    "strategy": "all_at_once",
                    "failure_threshold": dep.failure_threshold,
                    "promote_after_s": 0,
                    "threads": dep.threads,
                    "probation": d["probation"],
                    "params": d["params"],
                    "status": "rolling_out",
                    "promoted_from": deployment_id,
                },
            )
            for row in rows:
                store.supersede(db.conn, row["device_id"], new_id, utcnow())
                store.insert_device(
                    db.conn,
                    new_id,
                    row["device_id"],
                    phase="rest",
                    state="pending",
                    artifact_id=row["shadow_artifact_id"],
                )
            store.mark_promoted(
                db.conn,
                deployment_id,
                new_id,
                f"shadow {dep.shadow_version} promoted: active in deployment {new_id}",
                utcnow(),
            )
        return self.get(new_id)

    # -- serving parameters -----------------------------------------------------------------------
    def set_params(self, deployment_id: int, params: ServingParams) -> Deployment:
        """Replace the deployment's serving parameters; its devices get them (same model, no
        transfer) with the next republication of their desired state by the MQTT service."""
        dep = self.get(deployment_id)
        if dep.status == "superseded":
            raise InvalidInput(
                f"deployment {deployment_id} is superseded ({dep.reason}); set the parameters "
                "of the deployment its devices run now"
            )
        with self.db.transaction() as db:
            store.set_params(db.conn, deployment_id, _params_json(params), utcnow())
        return self.get(deployment_id)

    # -- shadow report ----------------------------------------------------------------------------
    def shadow_report(self, deployment_id: int) -> ShadowReport:
        """The shadow against the active model, per device and in all, from the stored logs: every
        request both answered on the device (the same request id), agreement of their answers
        (the top class; per task for other heads: `edge_agent.core.heads.compare`),
        and both models' latencies (p50, p99)."""
        dep = self.get(deployment_id)
        if dep.shadow_version_id is None or dep.shadow_version is None:
            raise InvalidInput(f"deployment {deployment_id} has no shadow")
        devices = []
        all_active: list[float] = []
        all_shadow: list[float] = []
        total = agreed_total = 0
        for row in dep.devices:
            # each shadow log with the active log of its request (`device_logs.shadow_pairs`)
            pairs = device_logs.shadow_pairs(
                self.db.conn, row.device_id, dep.shadow_version_id, dep.version_id
            )
            agreed = sum(
                logged_answers_agree(json.loads(p["a_out"]), json.loads(p["s_out"])) for p in pairs
            )
            active_ms = [float(p["a_ms"]) for p in pairs]
            shadow_ms = [float(p["s_ms"]) for p in pairs]
            devices.append(
                ShadowDeviceReport(
                    device_id=row.device_id,
                    shadow_state=row.shadow_state,
                    shadow_reason=row.shadow_reason,
                    compared=len(pairs),
                    agreed=agreed,
                    agreement=round(agreed / len(pairs), 4) if pairs else None,
                    active_latency_ms=_p50_p99(active_ms),
                    shadow_latency_ms=_p50_p99(shadow_ms),
                )
            )
            total += len(pairs)
            agreed_total += agreed
            all_active += active_ms
            all_shadow += shadow_ms
        return ShadowReport(
            deployment_id=deployment_id,
            version=dep.version,
            shadow_version=dep.shadow_version,
            compared=total,
            agreed=agreed_total,
            agreement=round(agreed_total / total, 4) if total else None,
            active_latency_ms=_p50_p99(all_active),
            shadow_latency_ms=_p50_p99(all_shadow),
            devices=devices,
        )

    # -- read -----------------------------------------------------------------------------------
    def get(self, deployment_id: int) -> Deployment:
        row = store.deployment_row(self.db.conn, deployment_id)
        if row is None:
            raise NotFound("deployment", deployment_id)
        return self._deployment(row)

    def list(self, *, limit: int = 100) -> list[Deployment]:
        return [self._deployment(r) for r in store.newest_rows(self.db.conn, limit)]

    def heads(self, *, limit: int = 20) -> builtins.list[tuple[int, str, str]]:
        """The newest deployments' (id, status, updated_at): what a watcher compares before it
        reads a deployment whole."""
        return store.newest_heads(self.db.conn, limit)

    def _deployment(self, row: sqlite3.Row) -> Deployment:
        d = row_dict(row, ("probation", "params"))
        version = self.registry.get_version_by_id(d["version_id"])
        conn = self.db.conn
        rows = store.device_rows(conn, d["id"])
        files = artifact_files(
            conn, [r["artifact_id"] for r in rows] + [r["shadow_artifact_id"] for r in rows]
        )

        def kind(artifact_id: int | None) -> str | None:
            a = None if artifact_id is None else files.get(artifact_id)
            return None if a is None else f"{a['format']}/{a['precision']}"

        variants = VariantChoices(self.db)

        def candidates(r: sqlite3.Row) -> builtins.list[str]:
            ids = json.loads(r["candidate_artifact_ids"] or "[]")
            found = artifact_files(conn, ids)
            return [f"{found[i]['format']}/{found[i]['precision']}" for i in ids if i in found]

        devices = [
            model_from_row(
                DeploymentDevice,
                r,
                artifact=kind(r["artifact_id"]),
                shadow_artifact=kind(r["shadow_artifact_id"]),
                candidates=candidates(r),
                variants=variants.table(d["id"], r["device_id"]),
            )
            for r in rows
        ]
        shadow_id = d["shadow_version_id"]
        shadow_ref = None if shadow_id is None else self.registry.get_version_by_id(shadow_id).ref
        return model_from_row(
            Deployment, d, version=version.ref, shadow_version=shadow_ref, devices=devices
        )


def _params_json(params: ServingParams) -> str:
    """Stored as given: the defaults left out, so `{}` means "none set"."""
    return json.dumps(params.model_dump(exclude_defaults=True))


def _p50_p99(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}
