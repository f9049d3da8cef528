"""Deployments: a version to a device, tag or group; the running hub's MQTT service sends it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from cloud_hub.api.deps import HubDep
from cloud_hub.fleet.schemas import Deployment, DeploymentCreate

router = APIRouter(tags=["fleet"])


@router.post("/deployments", status_code=status.HTTP_201_CREATED)
def create_deployment(body: DeploymentCreate, hub: HubDep) -> Deployment:
    """Validate and store a deployment (nothing is stored when it is refused). The hub's MQTT
    service publishes each device's desired state within its poll interval."""
    return hub.fleet.deployments.create(body)


@router.get("/deployments")
def list_deployments(
    hub: HubDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[Deployment]:
    return hub.fleet.deployments.list(limit=limit)


@router.get("/deployments/{deployment_id}")
def get_deployment(deployment_id: int, hub: HubDep) -> Deployment:
    return hub.fleet.deployments.get(deployment_id)
