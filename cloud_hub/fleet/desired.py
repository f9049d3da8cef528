"""A device's DesiredState document: the signed model reference and how to run it."""

from __future__ import annotations

import json

from cloud_hub.db import Database
from cloud_hub.errors import NotFound
from cloud_hub.registry import Registry
from cloud_hub.signing import HubSigner
from edge_agent.wire import DesiredState, ModelRef, ProbationPolicy


class DesiredStates:
    def __init__(self, db: Database, registry: Registry, signer: HubSigner) -> None:
        self.db = db
        self.registry = registry
        self.signer = signer

    def build(self, deployment_id: int, device_id: str) -> DesiredState:
        row = self.db.conn.execute(
            "SELECT d.version_id, d.threads, d.probation, d.params, a.format, a.precision, "
            "a.sha256, a.size FROM deployment_devices dd "
            "JOIN deployments d ON d.id = dd.deployment_id "
            "JOIN artifacts a ON a.id = dd.artifact_id "
            "WHERE dd.deployment_id = ? AND dd.device_id = ?",
            [deployment_id, device_id],
        ).fetchone()
        if row is None:
            raise NotFound("deployment device", f"{deployment_id}/{device_id}")
        version = self.registry.get_version_by_id(int(row["version_id"]))
        model = ModelRef(
            version_id=version.id,
            ref=version.ref,
            format=row["format"],
            precision=row["precision"],
            sha256=row["sha256"],
            size=row["size"],
            signature=self.signer.sign_model(version.id, row["sha256"], row["size"], row["format"]),
            preprocessing=version.preprocessing,
            labels=version.labels,
        )
        return DesiredState(
            device_id=device_id,
            deployment_id=deployment_id,
            model=model,
            threads=row["threads"],
            probation=ProbationPolicy(**json.loads(row["probation"])),
            params=json.loads(row["params"]),
        )
