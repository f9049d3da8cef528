"""What the live views show: the fleet overview (`GET /api/v1/overview`) and the events of the
live stream (`GET /api/v1/stream`) that keep it current.

A client loads the overview, then reads the stream from the overview's `last_event_id` and
merges each event into what it holds (see docs/watch-the-fleet.md):
  device      merge into the device of that id (its status and what it runs)
  telemetry   merge into the device of that id (its newest numbers; at most one a second each)
  deployment  replace the deployment of that id
  alert       open: add or replace; closed: remove
  endpoint    replace the endpoint of that name
  missed      the client lost events (it read too slowly, the hub restarted, or it resumed from
              too long ago): load the overview again
An event naming a device the client does not hold means the fleet grew: load the overview.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "EVENT_KINDS",
    "EVENT_PAYLOADS",
    "AlertLive",
    "DeploymentLive",
    "DeviceLive",
    "DeviceState",
    "EndpointLive",
    "EventKind",
    "FleetOverview",
    "Hello",
    "Missed",
    "TelemetryLive",
]

EventKind = Literal["hello", "device", "telemetry", "deployment", "alert", "endpoint", "missed"]
EVENT_KINDS: tuple[EventKind, ...] = (
    "hello",
    "device",
    "telemetry",
    "deployment",
    "alert",
    "endpoint",
    "missed",
)


class DeviceState(BaseModel):
    """A device's status and what it runs: the `device` event."""

    id: str
    status: Literal["unknown", "online", "offline"]
    status_since: float | None = Field(
        description="unix s of the last status change as the hub learnt it (for an offline "
        "device: when its last will arrived)"
    )
    last_seen: float | None = Field(description="unix s of the newest message from it")
    agent_version: str | None
    active_version_id: int | None
    active_model: str | None = Field(description="PROJECT/MODEL:N of the active version")
    artifact: str | None = Field(description="FORMAT/PRECISION the device runs, e.g. onnx/fp32")
    shadow: str | None = Field(description="PROJECT/MODEL:N FORMAT/PRECISION of its shadow")


class TelemetryLive(BaseModel):
    """A device's newest numbers: the `telemetry` event (coalesced to one a second)."""

    id: str
    telemetry_ts: float | None = Field(description="the device's clock of the newest sample")
    last_seen: float | None = Field(
        default=None, description="unix s (the hub's clock) when the newest batch arrived"
    )
    cpu: float | None = Field(default=None, description="percent; 100 = one core busy")
    memory: float | None = Field(default=None, description="percent of the device's memory")
    memory_rss: float | None = Field(default=None, description="the agent's resident MB")
    temperature: float | None = Field(default=None, description="°C")
    inferences_per_s: float | None = None
    latency_p50: float | None = Field(default=None, description="ms")
    latency_p99: float | None = Field(default=None, description="ms")
    outbox_backlog: int | None = Field(default=None, description="records not yet acked")
    outbox_drops: int | None = Field(default=None, description="records the outbox dropped")


class DeviceLive(DeviceState, TelemetryLive):
    """One row of the fleet table."""

    name: str
    tags: list[str]
    group: str | None
    hardware: str
    open_alerts: int = Field(description="open alerts about this device")


class DeploymentLive(BaseModel):
    id: int
    version: str = Field(description="PROJECT/MODEL:N")
    artifact: str
    strategy: str
    state: str = Field(description="canary, rolling_out, completed, halted or superseded")
    target: str
    created_at: str
    devices: dict[str, int] = Field(
        description="`total` and how many devices are in each state (waiting, downloading, "
        "active, failed...)"
    )
    canary: dict[str, int] = Field(
        default_factory=dict, description="the same counts for the canary phase's devices"
    )
    progress: float = Field(ge=0, le=1, description="devices in a final state / total")
    shadow: str | None = None


class AlertLive(BaseModel):
    id: int
    rule: str
    severity: Literal["warning", "critical"]
    metric: str
    scope: str = Field(description="version, endpoint or device")
    subject: str = Field(description="the version id, endpoint name or device id")
    message: str
    since: str = Field(description="when it opened")
    open: bool = True


class EndpointLive(BaseModel):
    name: str
    requests: int
    errors: int
    rows: int
    p50_ms: float | None
    p99_ms: float | None


class FleetOverview(BaseModel):
    server_time: float = Field(description="the hub's clock, unix s")
    last_event_id: str = Field(description="read the stream from here (Last-Event-ID)")
    devices: list[DeviceLive]
    deployments: list[DeploymentLive] = Field(
        description="live ones first, then the newest finished"
    )
    alerts: list[AlertLive] = Field(description="open alerts")
    endpoints: list[EndpointLive]


class Hello(BaseModel):
    """The first event of every connection."""

    boot: str = Field(description="this hub process's id: event ids start with it")
    server_time: float
    last_event_id: str


class Missed(BaseModel):
    reason: Literal["slow", "restart", "expired"] = Field(
        description="slow: the client read too slowly; restart: the id is from another hub "
        "process; expired: it is older than what the hub keeps"
    )
    missed: int | None = Field(description="how many events were lost, where known")


# what each event's `data` is, and when it is sent (docs/wire.md is generated from this)
EVENT_PAYLOADS: dict[EventKind, tuple[type[BaseModel], str]] = {
    "hello": (Hello, "first, on every connection"),
    "device": (DeviceState, "a status message (online, offline by last will) or a report"),
    "telemetry": (TelemetryLive, "a stored telemetry batch; at most one per device per second"),
    "deployment": (DeploymentLive, "a deployment created, progressing, promoted or finished"),
    "alert": (AlertLive, "an alert opened (`open: true`) or resolved"),
    "endpoint": (EndpointLive, "an endpoint's numbers changed (looked at every 2 s)"),
    "missed": (Missed, "the client lost events: load the overview again"),
}
