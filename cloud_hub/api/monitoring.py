"""Monitoring over REST: rolling windows per version, endpoint and device (latency, errors,
answers, drift against the training baseline), and the versions' baselines."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import HubDep
from cloud_hub.core.errors import NotFound
from cloud_hub.fleet.devices import device_exists
from cloud_hub.hub import Hub
from cloud_hub.monitoring import Baseline, BaselineStore, By, WindowReader, WindowStats
from cloud_hub.monitoring.baseline import dataset_baseline
from cloud_hub.predlog import device_logs, endpoint_logs
from cloud_hub.serving.engine.store import EndpointStore

router = APIRouter(tags=["monitoring"])

WindowQ = Annotated[
    float, Query(ge=1, le=7 * 86400, description="the window: the last window_s seconds")
]
LastQ = Annotated[
    int | None,
    Query(ge=1, description="... and at most its latest last_n records (capped by the hub)"),
]


def _reader(hub: Hub) -> WindowReader:
    return WindowReader(hub.db, max_records=hub.settings.monitor_max_records)


@router.get("/monitoring", dependencies=[VIEWER])
def list_windows(
    hub: HubDep,
    by: Annotated[By, Query(description="version, endpoint or device")] = "version",
    window_s: WindowQ = 300.0,
    last_n: LastQ = None,
) -> list[WindowStats]:
    """One window per version, endpoint or device with records in the last `window_s` s."""
    return _reader(hub).windows(by, window_s=window_s, last_n=last_n)


@router.get("/monitoring/versions/{version_id}", dependencies=[VIEWER])
def version_window(
    version_id: int, hub: HubDep, window_s: WindowQ = 300.0, last_n: LastQ = None
) -> WindowStats:
    hub.registry.get_version_by_id(version_id)  # 404 for an unknown version
    return _reader(hub).window("version", version_id, window_s=window_s, last_n=last_n)


@router.get("/monitoring/endpoints/{name}", dependencies=[VIEWER])
def endpoint_window(
    name: str, hub: HubDep, window_s: WindowQ = 300.0, last_n: LastQ = None
) -> WindowStats:
    """An endpoint's window (also one deleted since, while its records are in the log)."""
    if not (EndpointStore(hub.db).exists(name) or endpoint_logs.logged(hub.db.conn, name)):
        raise NotFound("endpoint", name)
    return _reader(hub).window("endpoint", name, window_s=window_s, last_n=last_n)


@router.get("/monitoring/devices/{device_id}", dependencies=[VIEWER])
def device_window(
    device_id: str, hub: HubDep, window_s: WindowQ = 300.0, last_n: LastQ = None
) -> WindowStats:
    """A device's window, from the inference logs it forwarded."""
    if not (device_exists(hub.db.conn, device_id) or device_logs.logged(hub.db.conn, device_id)):
        raise NotFound("device", device_id)
    return _reader(hub).window("device", device_id, window_s=window_s, last_n=last_n)


@router.get("/versions/{version_id}/baseline", dependencies=[VIEWER])
def get_baseline(version_id: int, hub: HubDep) -> Baseline:
    """The version's baseline: saved when it was trained, or computed by POST."""
    hub.registry.get_version_by_id(version_id)
    return BaselineStore(hub.db).get(version_id)


class BaselineBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="digits, iris, csv or images")
    path: str | None = Field(default=None, description="the CSV file or image folder")
    label_column: str | None = None


@router.post(
    "/versions/{version_id}/baseline", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR]
)
def create_baseline(version_id: int, body: BaselineBody, hub: HubDep) -> Baseline:
    """Compute the version's baseline from a dataset (prepared with its preprocessing spec,
    answered by its fp32 artifact), replacing any it had: for an uploaded version."""
    baseline = dataset_baseline(
        hub.registry,
        version_id,
        dataset=body.dataset,
        path=body.path,
        label_column=body.label_column,
    )
    return BaselineStore(hub.db).save(baseline)
