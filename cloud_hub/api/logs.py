"""The prediction log over REST: every prediction of every endpoint and device, filtered and
paged, or exported whole as JSON lines or CSV."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from cloud_hub.api.auth import VIEWER
from cloud_hub.hub import Hub
from cloud_hub.predlog.query import LogFilter, LogPage, LogReader
from cloud_hub.registry.registry import version_labels

router = APIRouter(tags=["logs"])


def _filter(
    origin: Annotated[Literal["endpoint", "device"] | None, Query()] = None,
    endpoint: str | None = None,
    device_id: str | None = None,
    model_version: int | None = None,
    request_id: str | None = None,
    outcome: str | None = Query(default=None, description="ok, bad_input, failed, model_off"),
    role: str | None = Query(default=None, description="answer, shadow"),
    variant: str | None = None,
    since: float | None = Query(default=None, description="unix time, inclusive"),
    until: float | None = Query(default=None, description="unix time, exclusive"),
) -> LogFilter:
    return LogFilter(
        origin=origin,
        endpoint=endpoint,
        device_id=device_id,
        model_version=model_version,
        request_id=request_id,
        outcome=outcome,
        role=role,
        variant=variant,
        since=since,
        until=until,
    )


FilterDep = Annotated[LogFilter, Depends(_filter)]


def _reader(request: Request) -> LogReader:
    hub: Hub = request.app.state.hub
    return LogReader(hub.db, lambda version_id: version_labels(hub.db.conn, version_id))


@router.get("/logs", dependencies=[VIEWER])
def list_logs(
    request: Request,
    f: FilterDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> LogPage:
    """Prediction records, oldest first: each with its request id, endpoint or device, model
    version, input digest, output, latency and outcome. Endpoint records are written within
    about 0.2 s of the answer; device records when the device's logs reach the hub."""
    return _reader(request).page(f, limit=limit, cursor=cursor)


_EXPORT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the records, one a line",
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@router.get(
    "/logs/export", dependencies=[VIEWER], response_class=StreamingResponse, responses=_EXPORT
)
def export_logs(
    request: Request,
    f: FilterDep,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",  # noqa: A002
) -> StreamingResponse:
    """Every matching record, streamed: JSON lines or CSV (output and tags as JSON text)."""
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    name = f"prediction-log.{format}"
    return StreamingResponse(
        _reader(request).export(f, format),
        media_type=media,
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
