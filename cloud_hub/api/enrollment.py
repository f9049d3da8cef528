"""Fleets, enrollment tokens, and devices enrolling themselves (`POST /enroll`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from cloud_hub.api.auth import ADMIN, OPERATOR, PUBLIC, VIEWER
from cloud_hub.api.deps import HubDep
from cloud_hub.api.hygiene import ErrorBody
from cloud_hub.fleet.enroll_store import (
    EnrollToken,
    EnrollTokenCreate,
    Fleet,
    FleetCreate,
    NewEnrollToken,
)
from cloud_hub.fleet.schemas import Device
from edge_agent.core.wire import ENROLL_PATH, EnrollRequest, EnrollResponse

router = APIRouter(tags=["fleet"])

_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "the token is unknown, revoked, expired or used up"},
    403: {"model": ErrorBody, "description": "the device of this hardware id was revoked"},
}


@router.post("/fleets", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def create_fleet(body: FleetCreate, hub: HubDep) -> Fleet:
    """A fleet: what devices join on first boot (their group, tags and id prefix)."""
    return hub.enrollment.create_fleet(body)


@router.get("/fleets", dependencies=[VIEWER])
def list_fleets(hub: HubDep) -> list[Fleet]:
    return hub.enrollment.list_fleets()


@router.post("/enroll-tokens", status_code=status.HTTP_201_CREATED, dependencies=[ADMIN])
def create_enroll_token(body: EnrollTokenCreate, hub: HubDep) -> NewEnrollToken:
    """A fleet enrollment token; its secret (`token`) is in this response only."""
    return hub.enrollment.create_token(body)


@router.get("/enroll-tokens", dependencies=[ADMIN])
def list_enroll_tokens(hub: HubDep, fleet: str | None = None) -> list[EnrollToken]:
    return hub.enrollment.list_tokens(fleet=fleet)


@router.delete("/enroll-tokens/{token_id}", dependencies=[ADMIN])
def revoke_enroll_token(token_id: int, hub: HubDep) -> EnrollToken:
    """Revoke a token: devices that enrolled with it keep their identity; no new one joins."""
    return hub.enrollment.revoke_token(token_id)


@router.post("/devices/{device_id}/revoke", dependencies=[ADMIN])
def revoke_device(device_id: str, hub: HubDep) -> Device:
    """Cut a device off: the broker drops and refuses it, and it cannot enroll again."""
    return hub.enrollment.revoke_device(device_id)


@router.post(
    ENROLL_PATH.removeprefix("/api/v1"),
    status_code=status.HTTP_201_CREATED,
    dependencies=[PUBLIC],
    responses=_REFUSALS,
)
def enroll(body: EnrollRequest, hub: HubDep, response: Response) -> EnrollResponse:
    """A device with a fleet enrollment token gets its identity: 201 for a new device, 200
    for one known by its hardware id (a re-flashed card: same id, new broker password)."""
    answer = hub.enrollment.enroll(body)
    if answer.reenrolled:
        response.status_code = status.HTTP_200_OK
    return answer
