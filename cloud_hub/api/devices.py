"""Devices: register (broker credentials and the hub's public key), list, show, stored logs."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response, status

from cloud_hub.api.auth import ADMIN, DEVICE_SELF, VIEWER
from cloud_hub.api.deps import HubDep
from cloud_hub.fleet.devices import DEFAULT_PAGE, MAX_PAGE
from cloud_hub.fleet.metrics_store import MetricNames, MetricSeries, MetricsStore
from cloud_hub.fleet.schemas import Device, DeviceCreate, DeviceRegistration, InferenceLog

router = APIRouter(tags=["fleet"])


@router.post("/devices", status_code=status.HTTP_201_CREATED, dependencies=[ADMIN])
def register_device(body: DeviceCreate, hub: HubDep) -> DeviceRegistration:
    """Register a device. The response carries its broker password: it is shown only once
    (the hub keeps a hash)."""
    return hub.fleet.devices.register(body)


@router.get("/devices", dependencies=[VIEWER])
def list_devices(
    hub: HubDep,
    request: Request,
    response: Response,
    tag: str | None = None,
    group: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="devices per page")] = DEFAULT_PAGE,
    after: Annotated[
        str | None,
        Query(max_length=256, description="the cursor: devices whose ids sort after this one"),
    ] = None,
) -> list[Device]:
    """Devices by id, a page at a time: still a JSON list (clients that read one list keep
    working, for fleets up to `limit`). When there are more, the response says where the next
    page starts: `X-Next-After: <last id>` and `Link: <...?after=<last id>&limit=N>;
    rel="next"`; follow it until neither is there."""
    devices, next_after = hub.fleet.devices.page(tag=tag, group=group, limit=limit, after=after)
    if next_after is not None:
        url = request.url.include_query_params(after=next_after, limit=limit)
        response.headers["X-Next-After"] = quote(next_after, safe="")
        response.headers["Link"] = f'<{url}>; rel="next"'
    return devices


@router.get("/devices/{device_id}", dependencies=[DEVICE_SELF])
def get_device(device_id: str, hub: HubDep) -> Device:
    return hub.fleet.devices.get(device_id)


@router.get("/devices/{device_id}/logs", dependencies=[VIEWER])
def device_logs(
    device_id: str, hub: HubDep, limit: Annotated[int, Query(ge=1, le=10000)] = 100
) -> list[InferenceLog]:
    """The device's stored inference logs, newest first."""
    return hub.fleet.devices.logs(device_id, limit=limit)


@router.get("/devices/{device_id}/metrics", dependencies=[VIEWER])
def device_metrics(
    device_id: str,
    hub: HubDep,
    metric: Annotated[str, Query(max_length=64)] = "cpu",
    since: Annotated[str, Query(max_length=64, description="ISO-8601, now, or an age: 1h")] = "1h",
    until: Annotated[str | None, Query(max_length=64)] = None,
    step: Annotated[str, Query(max_length=8, description="raw, 1m, 1h or auto")] = "auto",
) -> MetricSeries:
    """A telemetry metric's history: raw points, or 1-minute / 1-hour rollups (mean, min, max)."""
    hub.fleet.devices.get(device_id)  # NotFound
    store = MetricsStore(hub.db, hub.settings)
    return store.query(device_id, metric, since=since, until=until, step=step, now=time.time())


@router.get("/devices/{device_id}/metrics/names", dependencies=[VIEWER])
def device_metric_names(device_id: str, hub: HubDep) -> MetricNames:
    """The telemetry metrics the device has history for."""
    hub.fleet.devices.get(device_id)  # NotFound
    return MetricsStore(hub.db, hub.settings).names(device_id)
