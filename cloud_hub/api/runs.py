"""Training runs: start one (it runs in the background), list, get, resume, re-run from a step."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import HubDep, RegistryDep
from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.schemas import Run
from cloud_hub.training.request import TrainRequest

router = APIRouter(tags=["training"])


class RerunBody(BaseModel):
    from_step: str


@router.post("/runs", status_code=status.HTTP_202_ACCEPTED, dependencies=[OPERATOR])
def start_run(body: TrainRequest, hub: HubDep) -> Run:
    """Start a training pipeline. Bad data is refused here (422); the run then goes on in the
    background: poll `GET /runs/{id}` for its steps and status."""
    pipeline = hub.pipeline()
    run, preloaded = pipeline.prepare(body)
    hub.submit(pipeline.execute, run.id, preloaded)
    return run


@router.get("/runs", dependencies=[VIEWER])
def list_runs(
    registry: RegistryDep,
    project: str | None = None,
    run_status: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Run]:
    return registry.list_runs(project=project, status=run_status, limit=limit)


@router.get("/runs/{run}", dependencies=[VIEWER])
def get_run(run: str, registry: RegistryDep) -> Run:
    """A run by id or by name (PROJECT.EXPERIMENT.N)."""
    return registry.get_run(run)


@router.post("/runs/{run}/resume", status_code=status.HTTP_202_ACCEPTED, dependencies=[OPERATOR])
def resume_run(run: str, hub: HubDep) -> Run:
    """Continue a failed run from the step that failed, reusing the cached earlier steps."""
    found = hub.registry.get_run(run)
    if found.status != "failed":
        raise InvalidInput(f"run {found.name} is {found.status}; only a failed run can be resumed")
    hub.submit(hub.pipeline().resume, found.id)
    return hub.registry.get_run(found.id)


@router.post("/runs/{run}/rerun", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def rerun(run: str, body: RerunBody, hub: HubDep) -> Run:
    """A new run reusing this run's cached outputs before `from_step` (runs to completion)."""
    return hub.pipeline().rerun(run, body.from_step)
