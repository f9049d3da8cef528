"""The fleet overview the live views start from, and the pieces each stream event carries.

Reads through the stores (devices, deployments, alerts, the registry for version names) and the
in-memory telemetry cache; version names are cached (versions never change) and deployments are
cached by the sampler (`refresh_deployment`), so a device event costs one indexed read.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cloud_hub.core.errors import NotFound
from cloud_hub.fleet.deployments import DeploymentStore
from cloud_hub.fleet.devices import DeviceRow, DeviceStore
from cloud_hub.fleet.schemas import Deployment, DeploymentDevice
from cloud_hub.monitoring.alerts import Alert, AlertStore
from cloud_hub.registry.registry import Registry
from cloud_hub.stream.events import (
    AlertLive,
    DeploymentLive,
    DeviceLive,
    DeviceState,
    EndpointLive,
    FleetOverview,
    TelemetryLive,
)
from cloud_hub.stream.telemetry_cache import TelemetryCache

__all__ = ["EndpointStats", "Overview", "alert_live", "deployment_live", "endpoint_live"]

FINAL_STATES = frozenset({"active", "failed", "rolled_back", "superseded"})
CRITICAL_METRICS = frozenset({"error_rate", "device_offline"})
FINISHED_SHOWN = 20

# name → the engine's stats of that endpoint (None where the hub serves no endpoints)
EndpointStats = Callable[[], dict[str, dict[str, Any]]]


def _unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def deployment_live(d: Deployment) -> DeploymentLive:
    counts: Counter[str] = Counter(str(dev.state) for dev in d.devices)
    canary: Counter[str] = Counter(str(dev.state) for dev in d.devices if dev.phase == "canary")
    total = len(d.devices)
    final = sum(n for state, n in counts.items() if state in FINAL_STATES)
    shadow = None
    if d.shadow_version is not None:
        shadow = f"{d.shadow_version} {d.shadow_artifact or ''}".strip()
    return DeploymentLive(
        id=d.id,
        version=d.version,
        artifact=d.artifact,
        strategy=d.strategy,
        state=d.status,
        target=d.target,
        created_at=d.created_at,
        devices={"total": total, **counts},
        canary=({"total": sum(canary.values()), **canary} if canary else {}),
        progress=1.0 if total == 0 else round(final / total, 4),
        shadow=shadow,
    )


def alert_live(a: Alert) -> AlertLive:
    return AlertLive(
        id=a.id,
        rule=a.rule,
        severity="critical" if a.metric in CRITICAL_METRICS else "warning",
        metric=a.metric,
        scope=a.scope,
        subject=a.target,
        message=a.message,
        since=a.opened_at,
        open=a.resolved_at is None,
    )


def endpoint_live(name: str, stats: dict[str, Any]) -> EndpointLive:
    latency = stats.get("latency_ms") or {}
    return EndpointLive(
        name=name,
        requests=int(stats.get("requests", 0)),
        errors=int(sum((stats.get("errors") or {}).values())),
        rows=int(stats.get("rows", 0)),
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
    )


class Overview:
    def __init__(
        self,
        *,
        devices: DeviceStore,
        deployments: DeploymentStore,
        alerts: AlertStore,
        registry: Registry,
        telemetry: TelemetryCache,
        endpoint_stats: EndpointStats | None = None,
    ) -> None:
        self.devices = devices
        self.deployments = deployments
        self.alerts = alerts
        self.registry = registry
        self.telemetry = telemetry
        self.endpoint_stats = endpoint_stats
        self._refs: dict[int, str] = {}
        self._deployments: dict[int, tuple[Deployment, dict[str, DeploymentDevice]]] = {}
        self._lock = threading.Lock()

    # -- pieces -------------------------------------------------------------------------------
    def version_ref(self, version_id: int | None) -> str | None:
        if version_id is None:
            return None
        ref = self._refs.get(version_id)
        if ref is None:
            try:
                ref = self.registry.get_version_by_id(version_id).ref
            except NotFound:
                return f"version {version_id}"
            self._refs[version_id] = ref
        return ref

    def refresh_deployment(self, deployment_id: int) -> Deployment | None:
        """Read a deployment again (the sampler's job); None when it is gone."""
        try:
            d = self.deployments.get(deployment_id)
        except NotFound:
            with self._lock:
                self._deployments.pop(deployment_id, None)
            return None
        with self._lock:
            self._deployments[deployment_id] = (d, {dev.device_id: dev for dev in d.devices})
        return d

    def _assignment(
        self, deployment_id: int | None, device_id: str
    ) -> tuple[Deployment, DeploymentDevice] | None:
        if deployment_id is None:
            return None
        with self._lock:
            cached = self._deployments.get(deployment_id)
        if cached is None and self.refresh_deployment(deployment_id) is not None:
            with self._lock:
                cached = self._deployments.get(deployment_id)
        if cached is None or device_id not in cached[1]:
            return None
        return cached[0], cached[1][device_id]

    def _state(self, row: DeviceRow) -> DeviceState:
        assignment = self._assignment(row.desired_deployment_id, row.id)
        artifact = shadow = None
        if assignment is not None:
            deployment, dev = assignment
            if row.active_version_id is None or row.active_version_id == deployment.version_id:
                artifact = dev.artifact
            if deployment.shadow_version is not None and dev.shadow_state not in (
                None,
                "failed",
                "rolled_back",
            ):
                shadow = f"{deployment.shadow_version} {dev.shadow_artifact or ''}".strip()
        return DeviceState(
            id=row.id,
            status=row.status,  # type: ignore[arg-type]
            status_since=row.status_since,
            last_seen=_unix(row.last_seen),
            agent_version=row.agent_version,
            active_version_id=row.active_version_id,
            active_model=self.version_ref(row.active_version_id),
            artifact=artifact,
            shadow=shadow,
        )

    def device_state(self, device_id: str) -> DeviceState | None:
        rows = self.devices.live_rows(device_id)
        return self._state(rows[0]) if rows else None

    def endpoints(self) -> list[EndpointLive]:
        if self.endpoint_stats is None:
            return []
        return [endpoint_live(name, s) for name, s in sorted(self.endpoint_stats().items())]

    # -- the whole ----------------------------------------------------------------------------
    def build(self, *, server_time: float, last_event_id: str) -> FleetOverview:
        open_alerts = self.alerts.list("open", limit=1000)
        per_device = Counter(a.target for a in open_alerts if a.scope == "device")
        telemetry = self.telemetry.snapshot()
        deployments = self.deployments.list(limit=100)
        for d in deployments:
            with self._lock:
                self._deployments[d.id] = (d, {dev.device_id: dev for dev in d.devices})
        live = [d for d in deployments if not d.finished]
        finished = [d for d in deployments if d.finished][:FINISHED_SHOWN]
        devices = []
        for row in self.devices.live_rows():
            numbers = telemetry.get(row.id) or TelemetryLive(id=row.id, telemetry_ts=None)
            state = self._state(row)
            seen = [t for t in (state.last_seen, numbers.last_seen) if t is not None]
            devices.append(
                DeviceLive(
                    **numbers.model_dump(exclude={"last_seen"}),
                    **state.model_dump(exclude={"id", "last_seen"}),
                    last_seen=max(seen, default=None),
                    name=row.name,
                    tags=row.tags,
                    group=row.group,
                    hardware=row.hardware,
                    open_alerts=per_device.get(row.id, 0),
                )
            )
        return FleetOverview(
            server_time=server_time,
            last_event_id=last_event_id,
            devices=devices,
            deployments=[deployment_live(d) for d in live + finished],
            alerts=[alert_live(a) for a in open_alerts],
            endpoints=self.endpoints(),
        )
