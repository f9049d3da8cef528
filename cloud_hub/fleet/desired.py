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
from cloud_hub.fleet import deployment_store as store
from cloud_hub.registry.registry import Registry, artifact_files
from cloud_hub.registry.schemas import Version
from cloud_hub.registry.signature import head_for_artifact
from cloud_hub.registry.signing import HubSigner
from edge_agent.core.wire import (
    AutoChoice,
    DesiredState,
    ModelRef,
    ProbationPolicy,
    ServingParams,
)

log = logging.getLogger(__name__)


class DesiredStates:
    def __init__(self, db: Database, registry: Registry, signer: HubSigner) -> None:
        self.db = db
        self.registry = registry
        self.signer = signer

    def build(self, deployment_id: int, device_id: str) -> DesiredState:
        conn = self.db.conn
        row = store.assignment(conn, deployment_id, device_id)
        files = (
            {}
            if row is None
            else artifact_files(conn, [row["artifact_id"], row["shadow_artifact_id"]])
        )
        art = None if row is None else files.get(row["artifact_id"])
        if row is None or art is None:
            raise NotFound("deployment device", f"{deployment_id}/{device_id}")
        model = self._ref(
            int(row["version_id"]), art["format"], art["precision"], art["sha256"], art["size"]
        )
        shadow = None
        shadow_art = files.get(row["shadow_artifact_id"])
        if row["shadow_version_id"] is not None and shadow_art is not None:
            shadow = self._ref(
                int(row["shadow_version_id"]),
                shadow_art["format"],
                shadow_art["precision"],
                shadow_art["sha256"],
                shadow_art["size"],
            )
        return DesiredState(
            device_id=device_id,
            deployment_id=deployment_id,
            model=model,
            shadow=shadow,
            threads=row["threads"],
            auto=self._auto(row),
            probation=ProbationPolicy(**json.loads(row["probation"])),
            params=_params(json.loads(row["params"]), deployment_id),
        )

    def _auto(self, row: Any) -> AutoChoice | None:
        """The candidates to measure, while an `auto` device's choice is not settled."""
        ids = json.loads(row["candidate_artifact_ids"] or "[]")
        if row["choice"] is not None or not ids:
            return None
        files = artifact_files(self.db.conn, ids)
        version = self.registry.get_version_by_id(int(row["version_id"]))
        accuracy = {a.id: a.metrics.get("accuracy") for a in version.artifacts}
        arts = [files[i] for i in ids if i in files]
        return AutoChoice(
            candidates=[
                self._ref(version.id, a["format"], a["precision"], a["sha256"], a["size"], version)
                for a in arts
            ],
            accuracy=[_number(accuracy.get(int(a["id"]))) for a in arts],
        )

    def _ref(
        self,
        version_id: int,
        fmt: str,
        precision: str,
        sha256: str,
        size: int,
        version: Version | None = None,
    ) -> ModelRef:
        version = version or self.registry.get_version_by_id(version_id)
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


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
