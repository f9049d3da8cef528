"""`GET /metrics`: the serving engine's counters and the fleet's gauges in the Prometheus text
format.

One collector reads the engine's live stats when Prometheus scrapes (no second set of counters
to keep in step): per endpoint its requests, errors by kind, rows and latency quantiles; per
step the numbers its kind reports (cache hits, batch sizes, a circuit breaker's failures) and
its states as labelled gauges (`ep_step_state{state="open"} 1` for a breaker that is open); and
the prediction log writer's written/dropped counts. A registry of its own per app, so two apps
in one process (tests) never clash.

Fleet gauges (`FleetCollector`), per device, read from the stores at each scrape: online (0/1,
the devices table's status), the seconds since it was last seen, and from its telemetry history
the newest outbox backlog, outbox drops, latency p99, CPU, and its inferences per second over
the last whole minute; plus the devices per status. Two queries however large the fleet (the
devices table, and the metrics store's rollups: `MetricsStore.latest`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_hub.api.auth import METRICS
from cloud_hub.fleet.metrics_store import MetricsStore
from cloud_hub.hub import Hub
from cloud_hub.serving import ServingEngine

router = APIRouter(tags=["meta"])
log = logging.getLogger(__name__)

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}_{k}" if prefix else str(k), v)
    else:
        yield prefix, value


class EngineCollector(Collector):
    def __init__(self, engine: ServingEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ep_endpoint_requests", "Predict calls per endpoint", labels=["endpoint"]
        )
        errors = CounterMetricFamily(
            "ep_endpoint_errors", "Failed predict calls by kind", labels=["endpoint", "kind"]
        )
        rows = CounterMetricFamily("ep_endpoint_rows", "Rows answered", labels=["endpoint"])
        latency = GaugeMetricFamily(
            "ep_endpoint_latency_ms",
            "Engine latency over the recent window",
            labels=["endpoint", "quantile"],
        )
        step_value = GaugeMetricFamily(
            "ep_step_value",
            "A number a step reports (hits, failures, batch sizes...)",
            labels=["endpoint", "step", "kind", "name"],
        )
        step_state = GaugeMetricFamily(
            "ep_step_state",
            "A step's state (1 for the state it is in: a breaker's closed/open/half_open)",
            labels=["endpoint", "step", "kind", "name", "state"],
        )
        for info in self.engine.list():
            name = info.name
            try:
                stats = self.engine.stats(name)
            except Exception:  # deleted meanwhile
                continue
            requests.add_metric([name], stats.get("requests", 0))
            rows.add_metric([name], stats.get("rows", 0))
            for kind, n in (stats.get("errors") or {}).items():
                errors.add_metric([name, kind], n)
            for q, ms in (stats.get("latency_ms") or {}).items():
                if ms is not None:
                    latency.add_metric([name, q], ms)
            for step, step_stats in (stats.get("steps") or {}).items():
                kind = str(step_stats.get("kind", ""))
                for key, value in _flatten(
                    "", {k: v for k, v in step_stats.items() if k != "kind"}
                ):
                    label = _NAME.sub("_", key)
                    if isinstance(value, int | float):  # bools too: 0/1
                        step_value.add_metric([name, step, kind, label], float(value))
                    elif isinstance(value, str) and label.endswith("state"):
                        step_state.add_metric([name, step, kind, label, value], 1.0)
        yield from (requests, errors, rows, latency, step_value, step_state)
        log = self.engine.log
        if log is not None:
            written = CounterMetricFamily(
                "ep_prediction_log_records", "Prediction log records by fate", labels=["fate"]
            )
            stats = log.stats()
            for fate in ("written", "dropped", "failed"):
                written.add_metric([fate], stats[fate])
            yield written
            yield GaugeMetricFamily(
                "ep_prediction_log_pending", "Records queued, not yet written", stats["pending"]
            )


# the telemetry metrics carried per device: (store metric, gauge name, help)
FLEET_SERIES = (
    ("outbox_backlog", "ep_device_outbox_backlog", "Records the device's outbox holds unsent"),
    ("outbox_drops", "ep_device_outbox_drops", "Records the device's outbox dropped (total)"),
    ("latency_p99", "ep_device_latency_p99_ms", "The device's latest inference latency p99"),
    ("cpu", "ep_device_cpu_percent", "The agent's CPU (100 = one core)"),
)
STATUSES = ("online", "offline", "unknown")


def _unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class FleetCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        try:
            devices = self.hub.fleet.devices.live_rows()
            points = MetricsStore(self.hub.db, self.hub.settings).latest(
                [m for m, _, _ in FLEET_SERIES] + ["inferences"], now=now
            )
        except Exception:  # a scrape never fails for the fleet's sake: the engine's still count
            log.exception("/metrics: the fleet's gauges could not be read")
            return
        online = GaugeMetricFamily(
            "ep_device_online", "1 while the device is online, else 0", labels=["device"]
        )
        seen = GaugeMetricFamily(
            "ep_device_last_seen_age_seconds",
            "Seconds since the hub last heard from the device",
            labels=["device"],
        )
        rate = GaugeMetricFamily(
            "ep_device_inferences_per_second",
            "The device's inferences per second over the last whole minute",
            labels=["device"],
        )
        series = {
            metric: GaugeMetricFamily(name, text, labels=["device"])
            for metric, name, text in FLEET_SERIES
        }
        counts = dict.fromkeys(STATUSES, 0)
        for d in devices:
            counts[d.status] = counts.get(d.status, 0) + 1
            online.add_metric([d.id], 1.0 if d.status == "online" else 0.0)
            last = _unix(d.last_seen)
            if last is not None:
                seen.add_metric([d.id], max(now - last, 0.0))
            mine = points.get(d.id, {})
            for metric, family in series.items():
                if metric in mine:
                    family.add_metric([d.id], mine[metric].value)
            inferences = mine.get("inferences")
            if inferences is not None:
                rate.add_metric([d.id], (inferences.minute_sum or 0.0) / 60.0)
        total = GaugeMetricFamily("ep_fleet_devices", "Devices per status", labels=["status"])
        for status_, n in counts.items():
            total.add_metric([status_], float(n))
        yield from (online, seen, rate, *series.values(), total)


@router.get("/metrics", include_in_schema=False, dependencies=[METRICS])
def metrics(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    hub: Hub = request.app.state.hub
    held = getattr(request.app.state, "metrics_registry", None)
    if held is None or held[0] is not engine:  # one registry per engine the app runs
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(hub))
        if engine is not None:
            registry.register(EngineCollector(engine))
        held = request.app.state.metrics_registry = (engine, registry)
    body = generate_latest(held[1])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
