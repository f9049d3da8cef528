"""Serving endpoints: create, change and delete them, and predict through them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from cloud_hub.api.auth import OPERATOR, PREDICT, VIEWER
from cloud_hub.api.bodies import PREDICT_BODY, read_body
from cloud_hub.api.hygiene import error_response
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.predlog.reports import AbReport, Metric, ShadowReport
from cloud_hub.serving import (
    BadInput,
    EndpointInfo,
    EndpointSpec,
    EndpointUnavailable,
    PayloadTooLarge,
    PredictResponse,
    ServingEngine,
    SpecError,
    StepFailed,
)
from cloud_hub.serving.engine.admission import Caps, EndpointBusy
from cloud_hub.serving.engine.engine import Limits
from cloud_hub.serving.engine.errors import ModelOff
from cloud_hub.serving.engine.params import EndpointParams
from cloud_hub.serving.engine.spec import endpoint_spec_schema
from cloud_hub.serving.engine.values import parse_body

router = APIRouter(tags=["endpoints"])


async def get_engine(request: Request) -> ServingEngine:
    # async: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per request
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the serving engine is not running"
        )
    return cast(ServingEngine, engine)


EngineDep = Annotated[ServingEngine, Depends(get_engine)]


@router.post("/endpoints", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def create_endpoint(spec: EndpointSpec, engine: EngineDep) -> EndpointInfo:
    """Build the endpoint (models loaded, graph checked: 422 naming the step if it cannot be),
    store it, and start serving it."""
    return engine.create(spec)


@router.get("/endpoints", dependencies=[VIEWER])
def list_endpoints(engine: EngineDep) -> list[EndpointInfo]:
    return engine.list()


@router.get("/endpoints/schema", dependencies=[VIEWER])
def endpoint_schema() -> dict[str, Any]:
    """The JSON schema of an endpoint spec: steps discriminated on `kind`, one branch per
    registered kind with its typed `params`."""
    return endpoint_spec_schema()


@router.get("/endpoints/{name}", dependencies=[VIEWER])
def get_endpoint(name: str, engine: EngineDep) -> EndpointInfo:
    return engine.get(name)


@router.put("/endpoints/{name}", dependencies=[OPERATOR])
def update_endpoint(name: str, spec: EndpointSpec, engine: EngineDep) -> EndpointInfo:
    """Build the new version fully, then swap it in: requests in flight finish on the old one."""
    return engine.update(name, spec)


@router.delete("/endpoints/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[OPERATOR])
def delete_endpoint(name: str, engine: EngineDep) -> Response:
    engine.delete(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/endpoints/{name}/params", dependencies=[VIEWER])
def get_params(name: str, engine: EngineDep) -> EndpointParams:
    """The endpoint's run-time parameters: kill switches and per-step values in force."""
    return engine.get_params(name)


@router.put("/endpoints/{name}/params", dependencies=[OPERATOR])
def put_params(name: str, params: EndpointParams, engine: EngineDep) -> EndpointParams:
    """Replace the run-time parameters: checked against the running endpoint (422 naming the
    step and field), in force from the next request, with no rebuild and no redeploy."""
    return engine.set_params(name, params)


@router.get("/endpoints/{name}/stats", dependencies=[VIEWER])
def endpoint_stats(name: str, engine: EngineDep) -> dict[str, Any]:
    """Requests, errors, rows, latency, step runs, cache hits/misses and batch sizes."""
    return engine.stats(name)


def _variant_order(spec: EndpointSpec) -> list[str]:
    """The variants of the endpoint's A/B splits, in the order its spec gives them."""
    names: list[str] = []
    for step in spec.steps:
        if step.kind == "ab_split":
            names += [n for n in step.params.get("variants", {}) if n not in names]
    return names


@router.get("/endpoints/{name}/reports/ab", dependencies=[VIEWER])
def ab_report(
    name: str,
    engine: EngineDep,
    metric: Annotated[Metric, Query(description="what to compare between variants")] = "score",
    since: Annotated[float | None, Query(description="unix time: records since")] = None,
) -> AbReport:
    """Online A/B from the prediction log: per variant the samples and the metric's mean, and a
    significance test between variants (Welch's t-test for score and latency, a two-proportion
    z-test for error_rate) with its p-value and a verdict."""
    stored = engine.store.get(name)  # 404 for an unknown endpoint
    order = _variant_order(stored.spec)
    return engine.store.ab_report(name, metric, since=since, order=order)


@router.get("/endpoints/{name}/reports/shadow", dependencies=[VIEWER])
def shadow_report(
    name: str,
    engine: EngineDep,
    since: Annotated[float | None, Query(description="unix time: records since")] = None,
) -> ShadowReport:
    """Shadow candidates against the primary, from the prediction log (answer and shadow records
    joined on request id and row): requests, agreement on the top label, latency p50/p99 of
    both on the same requests, errors."""
    engine.store.get(name)
    return engine.store.shadow_report(name, since=since)


@router.post(
    "/endpoints/{name}/predict",
    response_model=PredictResponse,
    openapi_extra=PREDICT_BODY,
    dependencies=[PREDICT],
)
async def predict(
    name: str,
    request: Request,
    outputs: Annotated[
        Literal["all"] | None,
        Query(description='all: also every raw output tensor by name, as `"outputs": true`'),
    ] = None,
    top_k: Annotated[
        int | None,
        Query(
            ge=1,
            description='also each row\'s N best classes with their scores, as `"top_k": N` '
            "(1 to the number of classes)",
        ),
    ] = None,
) -> Response:
    """Body: `{"inputs": [[...], ...]}` (rows), `{"image_b64": "..."}` / `{"images_b64": [...]}`,
    `{"id": "..."}` / `{"ids": [...]}` (an endpoint with a data cache), an image itself
    (`Content-Type: image/png`), or a tensor of rows (rows first) with no JSON:
    `Content-Type: application/x-npy` (numpy's .npy, as `np.save` writes it; numeric dtypes
    only, never unpickled) or `application/octet-stream` with headers
    `X-Tensor-Shape: 1,3,224,224` and `X-Tensor-Dtype: float32` (C order, little-endian; the
    size must be the shape's). A tensor is checked as JSON rows are. Answers labels and scores
    per row (or the head's result per row: detections, points, class counts, a vector), the
    steps that ran and the cache hits and misses; with `?outputs=all` (or `"outputs": true`)
    also every raw output tensor by name; with `?top_k=N` (or `"top_k": N`) also each row's N
    best classes with their scores, best first.

    A full endpoint (its cap on request bytes in flight or on rows queued: the spec's
    `max_in_flight_bytes` / `max_queued_rows`, else the hub's) answers 503 with `Retry-After`,
    the error naming the cap."""
    # the hot path: the engine and settings from the app's state, no dependency to solve
    engine = await get_engine(request)
    settings = cast(Hub, request.app.state.hub).settings
    limits, admission = engine.limits(name, _default_limits(settings))
    length = request.headers.get("content-length")
    announced = int(length) if length is not None and length.isdigit() else 0
    ticket = admission.admit_bytes(min(announced, limits.max_body_bytes), limits.caps)
    try:
        body = await read_body(request, limits.max_body_bytes)
        if len(body) > announced:
            ticket.grow_bytes(len(body) - announced, limits.caps)
        parsed = parse_body(body, request.headers.get("content-type", ""), request.headers)
        parsed.headers = dict(request.headers)  # Starlette gives the names in lower case
        if outputs == "all":  # as the agent's ?outputs=all
            parsed.outputs = True
        if top_k is not None:
            parsed.top_k = top_k
        if parsed.request_id is None:
            parsed.request_id = request.headers.get("x-request-id") or None
        ticket.admit_rows(parsed.row_count(), limits.caps)
        result = await engine.apredict(name, parsed, ticket=ticket)
    finally:
        if not ticket.followed:  # else given back when the run ends
            ticket.release()
    # serialised once, here: FastAPI would validate the model again, then encode it
    return Response(
        result.model_dump_json(),
        media_type="application/json",
        headers={"x-request-id": result.request_id},
    )


def _default_limits(settings: HubSettings) -> Limits:
    return Limits(
        max_body_bytes=settings.serving_max_body_bytes,
        caps=Caps(
            in_flight_bytes=settings.serving_max_in_flight_bytes,
            queued_rows=settings.serving_max_queued_rows,
        ),
    )


def _with_step(code: int, exc: Exception, step: str | None) -> JSONResponse:
    return error_response(code, str(exc), type(exc).__name__, step=step)


def add_error_handlers(app: FastAPI) -> None:
    """Serving errors as the API's error body (cloud_hub.api.hygiene.ErrorBody), naming the step
    at fault."""

    @app.exception_handler(SpecError)
    async def spec_error(_: Request, exc: SpecError) -> JSONResponse:
        return _with_step(status.HTTP_422_UNPROCESSABLE_CONTENT, exc, exc.step)

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> JSONResponse:
        return _with_step(status.HTTP_422_UNPROCESSABLE_CONTENT, exc, exc.step)

    @app.exception_handler(PayloadTooLarge)
    async def too_large(_: Request, exc: PayloadTooLarge) -> JSONResponse:
        return _with_step(status.HTTP_413_CONTENT_TOO_LARGE, exc, None)

    @app.exception_handler(EndpointUnavailable)
    async def unavailable(_: Request, exc: EndpointUnavailable) -> JSONResponse:
        return _with_step(status.HTTP_503_SERVICE_UNAVAILABLE, exc, None)

    @app.exception_handler(EndpointBusy)
    async def busy(request: Request, exc: EndpointBusy) -> JSONResponse:
        settings = cast(Hub, request.app.state.hub).settings
        response = error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            str(exc),
            type(exc).__name__,
            headers={"Retry-After": str(settings.serving_retry_after_s)},
        )
        return response

    @app.exception_handler(ModelOff)
    async def model_off(_: Request, exc: ModelOff) -> JSONResponse:
        return _with_step(status.HTTP_503_SERVICE_UNAVAILABLE, exc, exc.step)

    @app.exception_handler(StepFailed)
    async def failed(_: Request, exc: StepFailed) -> JSONResponse:
        return _with_step(status.HTTP_500_INTERNAL_SERVER_ERROR, exc, exc.step)
