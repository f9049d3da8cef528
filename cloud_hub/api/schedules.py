"""Batch training schedules (cron), run by the hub's scheduler."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import RegistryDep
from cloud_hub.registry.schemas import NAME_PATTERN, Run, Schedule
from cloud_hub.training.request import TrainRequest
from cloud_hub.training.scheduler import create_schedule

router = APIRouter(tags=["training"])


class ScheduleCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    cron: str = Field(description="5 fields, or 6 with seconds last", examples=["0 3 * * *"])
    request: TrainRequest
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=30.0, ge=0)


@router.post("/schedules", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def add_schedule(body: ScheduleCreate, registry: RegistryDep) -> Schedule:
    return create_schedule(
        registry,
        name=body.name,
        cron=body.cron,
        request=body.request,
        max_retries=body.max_retries,
        backoff_s=body.backoff_s,
    )


@router.get("/schedules", dependencies=[VIEWER])
def list_schedules(registry: RegistryDep) -> list[Schedule]:
    return registry.list_schedules()


@router.get("/schedules/{schedule}", dependencies=[VIEWER])
def get_schedule(schedule: str, registry: RegistryDep) -> Schedule:
    return registry.get_schedule(schedule)


@router.get("/schedules/{schedule}/runs", dependencies=[VIEWER])
def schedule_runs(schedule: str, registry: RegistryDep) -> list[Run]:
    return registry.list_runs(schedule_id=registry.get_schedule(schedule).id)


@router.delete(
    "/schedules/{schedule}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[OPERATOR]
)
def delete_schedule(schedule: str, registry: RegistryDep) -> Response:
    registry.delete_schedule(schedule)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
