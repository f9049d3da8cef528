"""The agent's Prometheus metrics: what `GET /metrics` on its local HTTP API answers.

Read when Prometheus scrapes, from what the agent already keeps (no second set of books):
- per model version, inferences and failures since the agent started, and the latency
  quantiles (p50, p95, p99) of its most recent inferences: `RunningTotals`, which sits in front
  of the inference service's `LatencyTracker` (the telemetry keeps reading and resetting the
  tracker per interval as before);
- from the agent's status: the active and shadow model versions, the outbox's pending records
  and its drops, the MQTT link, the inferences in all and the uptime;
- the process's CPU, memory and temperature as the telemetry measures them (`SystemSampler`;
  CPU over the time since the previous scrape), and the standard `process_*` metrics.

Names start with `ep_agent_`; examples/monitoring has alerting rules and a dashboard over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.metrics_totals import RECENT, RunningTotals
from edge_agent.telemetry import SystemSampler

__all__ = ["AgentMetrics"]


def _gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily:
    """A gauge, without a sample while its value is unknown (the family is always listed)."""
    family = GaugeMetricFamily(name, text)
    if value is not None:
        family.add_metric([], float(value))
    return family


class _AgentCollector(Collector):
    def __init__(
        self, totals: RunningTotals, status: Callable[[], dict[str, Any]], sampler: SystemSampler
    ) -> None:
        self.totals = totals
        self.status = status
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        inferences, failures = self.totals.counts()
        done = CounterMetricFamily(
            "ep_agent_inferences",
            "Inferences since the agent started, per model version",
            labels=["version"],
        )
        failed = CounterMetricFamily(
            "ep_agent_inference_failures",
            "Failed inferences since the agent started, per model version",
            labels=["version"],
        )
        for key, n in sorted(inferences.items()):
            done.add_metric([key], n)
            failed.add_metric([key], failures.get(key, 0))
        latency = GaugeMetricFamily(
            "ep_agent_latency_ms",
            f"Inference latency over each version's {RECENT} most recent inferences",
            labels=["version", "quantile"],
        )
        for key, qs in sorted(self.totals.quantiles().items()):
            for q, ms in qs.items():
                latency.add_metric([key, f"{q:g}"], ms)
        yield from (done, failed, latency)
        doc = self.status()
        models = GaugeMetricFamily(
            "ep_agent_model_version",
            "The model version the agent runs in each role (active, shadow)",
            labels=["role"],
        )
        for role in ("active", "shadow"):
            version = doc.get(f"{role}_version")
            if version is not None:
                models.add_metric([role], float(version))
        yield models
        outbox = doc.get("outbox") or {}
        yield GaugeMetricFamily(
            "ep_agent_outbox_pending",
            "Records (logs, telemetry) in the outbox, not yet acknowledged by the hub",
            value=float(outbox.get("pending") or 0),
        )
        yield CounterMetricFamily(
            "ep_agent_outbox_dropped",
            "Records the outbox dropped under its overflow policy, since it was made",
            value=float(outbox.get("dropped") or 0),
        )
        yield GaugeMetricFamily(
            "ep_agent_mqtt_connected",
            "1 while the agent is connected to the hub's broker",
            value=1.0 if doc.get("mqtt_connected") else 0.0,
        )
        yield _gauge(
            "ep_agent_uptime_seconds", "Seconds since the agent started", doc.get("uptime_s")
        )
        system = self.sampler.sample()
        yield from (
            _gauge(
                "ep_agent_cpu_percent",
                "The agent's CPU since the previous scrape (100 = one core)",
                system.get("cpu_percent"),
            ),
            _gauge(
                "ep_agent_memory_rss_mb", "The agent's resident memory", system.get("memory_rss_mb")
            ),
            _gauge(
                "ep_agent_memory_percent",
                "The agent's resident memory, percent of the machine's",
                system.get("memory_percent"),
            ),
            _gauge(
                "ep_agent_temperature_c",
                "The hottest plausible thermal zone",
                system.get("temperature_c"),
            ),
        )


class AgentMetrics:
    """The registry `GET /metrics` renders."""

    def __init__(
        self,
        totals: RunningTotals,
        status: Callable[[], dict[str, Any]],
        sampler: SystemSampler | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(totals, status, sampler or SystemSampler()))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
