"""Deployments: a version to a device, tag or group; the running hub's MQTT service sends it.
A shadow candidate beside it (report, promote) and its serving parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import HubDep
from cloud_hub.fleet.schemas import Deployment, DeploymentCreate, ShadowReport
from edge_agent.core.wire import ServingParams

router = APIRouter(tags=["fleet"])


@router.post("/deployments", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def create_deployment(body: DeploymentCreate, hub: HubDep) -> Deployment:
    """Validate and store a deployment (nothing is stored when it is refused). The hub's MQTT
    service publishes each device's desired state within its poll interval."""
    return hub.fleet.deployments.create(body)


@router.get("/deployments", dependencies=[VIEWER])
def list_deployments(
    hub: HubDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[Deployment]:
    return hub.fleet.deployments.list(limit=limit)


@router.get("/deployments/{deployment_id}", dependencies=[VIEWER])
def get_deployment(deployment_id: int, hub: HubDep) -> Deployment:
    return hub.fleet.deployments.get(deployment_id)


@router.post(
    "/deployments/{deployment_id}/promote",
    status_code=status.HTTP_201_CREATED,
    dependencies=[OPERATOR],
)
def promote_deployment(deployment_id: int, hub: HubDep) -> Deployment:
    """Make the deployment's shadow the active model: a new deployment of the shadow version,
    with the artifact each device already holds (activated without a transfer). 422 when the
    deployment has no shadow, was promoted already or is superseded."""
    return hub.fleet.deployments.promote(deployment_id)


@router.put("/deployments/{deployment_id}/params", dependencies=[OPERATOR])
def set_deployment_params(deployment_id: int, body: ServingParams, hub: HubDep) -> Deployment:
    """Replace the deployment's serving parameters (min_score, default_label, disabled,
    shadow_sample). Its devices apply them with their next desired state, same model, no
    transfer."""
    return hub.fleet.deployments.set_params(deployment_id, body)


@router.get("/deployments/{deployment_id}/shadow", dependencies=[VIEWER])
def shadow_report(deployment_id: int, hub: HubDep) -> ShadowReport:
    """The shadow against the active model, per device: agreement on the top class and both
    models' latency (p50, p99), over every request both answered (from the stored logs)."""
    return hub.fleet.deployments.shadow_report(deployment_id)
