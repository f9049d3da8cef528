"""Queued serving: asynchronous prediction jobs and batch inference.

- `POST /endpoints/{name}/jobs` (the body of a predict call) → 202 and the job, queued;
  `GET /jobs/{id}` is `queued`/`running` until it is `succeeded` (with `result`, the prediction)
  or `failed` (with `error`). Time-differential endpoints answer `predict` with a `job` id too.
- `POST /endpoints/{name}/batches` (`{"source": {...}, "chunk_size", "cron"}`) → 202 and the
  batch; `GET /batches/{id}` has `done`/`total`; `GET /batches/{id}/predictions` the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.bodies import PREDICT_BODY, read_body
from cloud_hub.api.deps import HubDep
from cloud_hub.api.endpoints import EngineDep
from cloud_hub.serving.engine.values import parse_body
from cloud_hub.serving.jobs.batch import (
    BatchRequest,
    BatchRunner,
    BatchView,
    StoredPrediction,
    check,
)
from cloud_hub.serving.jobs.queue import Job, JobQueue, JobState

router = APIRouter(tags=["jobs"])


def get_queue(request: Request) -> JobQueue:
    service = getattr(request.app.state, "jobs", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the job queue is not running")
    return cast(JobQueue, service.queue)


QueueDep = Annotated[JobQueue, Depends(get_queue)]
NO_REQUEST = {"request"}


@router.post(
    "/endpoints/{name}/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model_exclude=NO_REQUEST,
    openapi_extra=PREDICT_BODY,
    dependencies=[VIEWER],
)
async def submit_job(
    name: str, request: Request, engine: EngineDep, queue: QueueDep, hub: HubDep
) -> Job:
    """Queue a prediction (the body of a predict call); answers at once with the job."""
    engine.store.get(name)  # 404 for an unknown endpoint
    limit = engine.max_body_bytes(name, hub.settings.serving_max_body_bytes)
    body = await read_body(request, limit)
    parsed = parse_body(body, request.headers.get("content-type", ""), request.headers)
    parsed.to_value()  # 422 now for what can be checked now: ragged rows, NaN, bad base64
    return queue.submit("predict", name, parsed.to_json())


@router.get("/jobs", response_model_exclude=NO_REQUEST, dependencies=[VIEWER])
def list_jobs(
    queue: QueueDep,
    endpoint: str | None = None,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Job]:
    return queue.find(endpoint=endpoint, state=state, limit=limit)


@router.get("/jobs/{job_id}", response_model_exclude=NO_REQUEST, dependencies=[VIEWER])
def get_job(job_id: str, queue: QueueDep) -> Job:
    """`queued` or `running` until done; then `succeeded` with `result`, or `failed` with
    `error` (after its retries). `early`: a time-differential endpoint's fast answer."""
    return queue.get(job_id)


@router.delete("/jobs/{job_id}", response_model_exclude=NO_REQUEST, dependencies=[OPERATOR])
def cancel_job(job_id: str, queue: QueueDep) -> Job:
    """Cancel a queued job (422 once it runs or has finished)."""
    return queue.cancel(job_id)


# -- batches ------------------------------------------------------------------------------------
@router.post(
    "/endpoints/{name}/batches", status_code=status.HTTP_202_ACCEPTED, dependencies=[OPERATOR]
)
def submit_batch(
    name: str, body: BatchRequest, engine: EngineDep, queue: QueueDep, hub: HubDep
) -> BatchView:
    """Queue a batch over a CSV file, a folder of images or a table of the hub database; it
    predicts the rows without a prediction and, with `cron`, runs again on that schedule."""
    engine.store.get(name)
    rows = check(body, Path.cwd(), hub.db)  # 422 now for a missing file, column or table
    if rows.path is not None:  # workers may run elsewhere: store the absolute path
        body.source.path = str(rows.path)
    return BatchView.of(queue.submit("batch", name, body.model_dump(mode="json")))


@router.get("/endpoints/{name}/batches", dependencies=[VIEWER])
def list_batches(name: str, queue: QueueDep, engine: EngineDep) -> list[BatchView]:
    engine.store.get(name)
    return [BatchView.of(j) for j in queue.find(endpoint=name, kind="batch")]


@router.get("/batches/{batch_id}", dependencies=[VIEWER])
def get_batch(batch_id: str, queue: QueueDep) -> BatchView:
    """Progress (`done` of `total` rows), state, and when finished the summary in `result`."""
    return BatchView.of(queue.get(batch_id, kind="batch"))


@router.get("/batches/{batch_id}/predictions", dependencies=[VIEWER])
def batch_predictions(
    batch_id: str,
    queue: QueueDep,
    hub: HubDep,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[StoredPrediction]:
    """The predictions stored for the batch's source and endpoint, by row id."""
    job = queue.get(batch_id, kind="batch")
    return BatchRunner(queue, hub.db, Path.cwd()).results(job, limit=limit, offset=offset)


@router.delete("/batches/{batch_id}", dependencies=[OPERATOR])
def cancel_batch(batch_id: str, queue: QueueDep) -> BatchView:
    """Cancel a queued batch: a scheduled batch's next run, which ends the schedule."""
    return BatchView.of(queue.cancel(batch_id, kind="batch"))
