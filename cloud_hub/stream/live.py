"""The hub's live stream: what feeds the event bus, and the one object the app holds.

- `FleetFeed` is the fleet service's observer: a status message becomes a `device` event, a
  stored telemetry batch a coalesced `telemetry` event (one per device per second), a report a
  `device` event and a nudge to the sampler.
- `Sampler` is a thread that every `interval_s` compares what changed where nothing pushes:
  deployments (created over REST, promoted or halted by the rollout, progressing with reports),
  alerts (opened and resolved by the monitor, perhaps in another process) and the serving
  engine's endpoint numbers; it publishes what differs from its last look.
- `LiveStream` builds both around one `EventBus` and one `Overview`.
Errors in a feed are logged and counted, never raised into the fleet service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_hub.hub import Hub
from cloud_hub.monitoring.alerts import AlertStore
from cloud_hub.stream.bus import EventBus
from cloud_hub.stream.events import FleetOverview
from cloud_hub.stream.overview import (
    EndpointStats,
    Overview,
    alert_live,
    deployment_live,
    endpoint_live,
)
from cloud_hub.stream.telemetry_cache import TelemetryCache
from edge_agent.core.wire import TelemetryRecord

__all__ = ["FleetFeed", "LiveStream", "Sampler"]

log = logging.getLogger("cloud_hub.stream")

FINISHED = frozenset({"completed", "halted", "superseded"})


class FleetFeed:
    """The fleet service's observer (cloud_hub.fleet.observer.FleetObserver)."""

    def __init__(
        self, bus: EventBus, overview: Overview, *, on_report: Callable[[int], None]
    ) -> None:
        self.bus = bus
        self.overview = overview
        self._on_report = on_report
        self.errors = 0

    def device_changed(self, device_id: str) -> None:
        try:
            state = self.overview.device_state(device_id)
            if state is not None:
                self.bus.publish("device", state)
        except Exception:
            self.errors += 1
            log.exception("live stream: device event for %s", device_id)

    def telemetry_stored(self, device_id: str, records: Sequence[TelemetryRecord]) -> None:
        try:
            live = self.overview.telemetry.update(device_id, records)
            if live is not None:
                self.bus.publish("telemetry", live, key=device_id)
        except Exception:
            self.errors += 1
            log.exception("live stream: telemetry event for %s", device_id)

    def report_applied(self, device_id: str, deployment_id: int | None) -> None:
        if deployment_id is not None:
            self._on_report(deployment_id)
        self.device_changed(device_id)


class Sampler:
    def __init__(
        self,
        bus: EventBus,
        overview: Overview,
        *,
        interval_s: float = 1.0,
        endpoint_every: int = 2,
    ) -> None:
        self.bus = bus
        self.overview = overview
        self.interval_s = interval_s
        self.endpoint_every = endpoint_every
        self._seen_deployments: dict[int, str] = {}
        self._seen_heads: dict[int, str] = {}
        self._seen_alerts: dict[int, bool] = {}
        self._seen_endpoints: dict[str, str] = {}
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rounds = 0
        self.errors = 0

    def nudge(self, deployment_id: int) -> None:
        """A report arrived for this deployment: look at it on the next round."""
        with self._lock:
            self._dirty.add(deployment_id)

    def start(self) -> Sampler:
        self._prime()
        self._thread = threading.Thread(target=self._run, name="live-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _prime(self) -> None:
        """What exists at start is not news: only changes from here on become events."""
        try:
            for d in self.overview.deployments.list(limit=20):
                self._seen_deployments[d.id] = deployment_live(d).model_dump_json()
                self._seen_heads[d.id] = f"{d.status} {d.updated_at}"
            for a in self.overview.alerts.list("all", limit=200):
                self._seen_alerts[a.id] = a.resolved_at is None
        except Exception:
            log.exception("live stream: could not read the starting state")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception:
                self.errors += 1
                log.exception("live stream: sampler round failed")
            self._stop.wait(self.interval_s)

    def round(self) -> None:
        """One look at deployments, alerts and (every `endpoint_every` rounds) endpoints."""
        self._rounds += 1
        self._deployments()
        self._alerts()
        if self._rounds % self.endpoint_every == 1 or self.endpoint_every == 1:
            self._endpoints()

    def _deployments(self) -> None:
        """Read whole only what may have changed: new, live, updated or reported on."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        look = set(dirty)
        for deployment_id, status, updated_at in self.overview.deployments.heads(limit=20):
            head = f"{status} {updated_at}"
            if status not in FINISHED or self._seen_heads.get(deployment_id) != head:
                look.add(deployment_id)
            self._seen_heads[deployment_id] = head
        for deployment_id in sorted(look):
            d = self.overview.refresh_deployment(deployment_id)
            if d is None:
                continue
            live = deployment_live(d)
            text = live.model_dump_json()
            if self._seen_deployments.get(d.id) != text:
                self._seen_deployments[d.id] = text
                self.bus.publish("deployment", live)

    def _alerts(self) -> None:
        store: AlertStore = self.overview.alerts
        for a in reversed(store.list("all", limit=200)):
            is_open = a.resolved_at is None
            if self._seen_alerts.get(a.id) != is_open:
                self._seen_alerts[a.id] = is_open
                self.bus.publish("alert", alert_live(a))

    def _endpoints(self) -> None:
        stats = self.overview.endpoint_stats
        if stats is None:
            return
        for name, s in sorted(stats().items()):
            live = endpoint_live(name, s)
            text = live.model_dump_json()
            if self._seen_endpoints.get(name) != text:
                self._seen_endpoints[name] = text
                self.bus.publish("endpoint", live)


class LiveStream:
    """The bus, the overview and their feeders; `start()` runs the sampler."""

    def __init__(
        self,
        hub: Hub,
        *,
        endpoint_stats: EndpointStats | None = None,
        capacity: int | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = hub.settings
        self.max_clients = settings.stream_max_clients
        self.bus = EventBus(
            capacity=capacity or settings.stream_ring_events,
            coalesce_s=settings.stream_coalesce_s,
        )
        self.clock = clock
        self.overview = Overview(
            devices=hub.fleet.devices,
            deployments=hub.fleet.deployments,
            alerts=AlertStore(hub.db),
            registry=hub.registry,
            telemetry=TelemetryCache(),
            endpoint_stats=endpoint_stats,
        )
        self.sampler = Sampler(
            self.bus, self.overview, interval_s=interval_s or settings.stream_sample_s
        )
        self.feed = FleetFeed(self.bus, self.overview, on_report=self.sampler.nudge)

    def start(self) -> LiveStream:
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()

    def snapshot(self) -> FleetOverview:
        """The overview, with the id to resume the stream from (taken first: a change made
        while the overview is read is sent again, never lost)."""
        last = self.bus.last_id
        return self.overview.build(server_time=self.clock(), last_event_id=last)

    def stats(self) -> dict[str, Any]:
        return {
            **self.bus.stats(),
            "feed_errors": self.feed.errors,
            "sampler_errors": self.sampler.errors,
        }
