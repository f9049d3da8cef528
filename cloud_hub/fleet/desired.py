"""A device's DesiredState document: the signed model reference (and its shadow's) with the
version's task head (its output names filled for the artifact the device runs), labels and
preprocessing, how to run them, and the deployment's serving parameters."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from cloud_hub.core.db import Database
from cloud_hub.core.errors import NotFound
from cloud_hub.registry.registry import Registry
from cloud_hub.registry.signature import head_for_artifact
from cloud_hub.registry.signing import HubSigner
from edge_agent.core.wire import DesiredState, ModelRef, ProbationPolicy, ServingParams

log = logging.getLogger(__name__)


class DesiredStates:
    def __init__(self, db: Database, registry: Registry, signer: HubSigner) -> None:
        self.db = db
        self.registry = registry
        self.signer = signer

    def build(self, deployment_id: int, device_id: str) -> DesiredState:
        row = self.db.conn.execute(
            "SELECT d.version_id, d.threads, d.probation, d.params, d.shadow_version_id, "
            "a.format, a.precision, a.sha256, a.size, sa.format AS s_format, "
            "sa.precision AS s_precision, sa.sha256 AS s_sha256, sa.size AS s_size "
            "FROM deployment_devices dd "
            "JOIN deployments d ON d.id = dd.deployment_id "
            "JOIN artifacts a ON a.id = dd.artifact_id "
            "LEFT JOIN artifacts sa ON sa.id = dd.shadow_artifact_id "
            "WHERE dd.deployment_id = ? AND dd.device_id = ?",
            [deployment_id, device_id],
        ).fetchone()
        if row is None:
            raise NotFound("deployment device", f"{deployment_id}/{device_id}")
        model = self._ref(
            int(row["version_id"]), row["format"], row["precision"], row["sha256"], row["size"]
        )
        shadow = None
        if row["shadow_version_id"] is not None and row["s_sha256"] is not None:
            shadow = self._ref(
                int(row["shadow_version_id"]),
                row["s_format"],
                row["s_precision"],
                row["s_sha256"],
                row["s_size"],
            )
        return DesiredState(
            device_id=device_id,
            deployment_id=deployment_id,
            model=model,
            shadow=shadow,
            threads=row["threads"],
            probation=ProbationPolicy(**json.loads(row["probation"])),
            params=_params(json.loads(row["params"]), deployment_id),
        )

    def _ref(self, version_id: int, fmt: str, precision: str, sha256: str, size: int) -> ModelRef:
        version = self.registry.get_version_by_id(version_id)
        signature = next((a.signature for a in version.artifacts if a.sha256 == sha256), {})
        return ModelRef(
            version_id=version.id,
            ref=version.ref,
            format=fmt,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            sha256=sha256,
            size=size,
            signature=self.signer.sign_model(version.id, sha256, size, fmt),
            preprocessing=version.preprocessing,
            labels=version.labels,
            head=head_for_artifact(version.head, signature),
        )


def _params(stored: dict[str, Any], deployment_id: int) -> ServingParams:
    """The stored parameters (validated when stored; a row from before they were typed may hold
    keys the device does not know: those are left out, never sent)."""
    try:
        return ServingParams.model_validate(stored)
    except ValidationError:
        known = {k: v for k, v in stored.items() if k in ServingParams.model_fields}
        log.warning("deployment %s: ignoring unknown serving parameters %s", deployment_id, stored)
        try:
            return ServingParams.model_validate(known)
        except ValidationError:
            return ServingParams()
