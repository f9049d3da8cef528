"""`GET /metrics`: the serving engine's counters in the Prometheus text format.

One collector reads the engine's live stats when Prometheus scrapes (no second set of counters
to keep in step): per endpoint its requests, errors by kind, rows and latency quantiles; per
step the numbers its kind reports (cache hits, batch sizes, a circuit breaker's failures) and
its states as labelled gauges (`ep_step_state{state="open"} 1` for a breaker that is open); and
the prediction log writer's written/dropped counts. A registry of its own per app, so two apps
in one process (tests) never clash.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_hub.api.auth import METRICS
from cloud_hub.serving import ServingEngine

router = APIRouter(tags=["meta"])

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


@router.get("/metrics", include_in_schema=False, dependencies=[METRICS])
def metrics(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return Response(b"", media_type=CONTENT_TYPE_LATEST)
    held = getattr(request.app.state, "metrics_registry", None)
    if held is None or held[0] is not engine:  # one registry per engine the app runs
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineCollector(engine))
        held = request.app.state.metrics_registry = (engine, registry)
    body = generate_latest(held[1])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
