"""The agent's `GET /metrics`, on a real agent process over Mosquitto: what Prometheus scrapes.

The numbers it serves are the agent's own: inferences per version counted as they happen (and
still reported in its telemetry, which the hub stores), latency quantiles, the active model,
the outbox and the process's memory; the route is guarded by the API's token like /v1/status.
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_processes import AgentProc
from tests.edge_agent.conftest import IrisModels
from tests.waiting import wait_until

TOKEN = "lan-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(agent: AgentProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(f"{agent.url}/metrics", headers=AUTH, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_the_agent_serves_its_inferences_outbox_and_model_as_prometheus_metrics(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(
        device_id, mosquitto, http={"token": TOKEN}, telemetry={"interval_s": 0.5}
    )
    # guarded like /v1/status: no token or another one → 401, nothing leaked
    for headers in ({}, {"Authorization": "Bearer wrong-token-0000000"}):
        refused = httpx.get(f"{agent.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401 and TOKEN not in refused.text
    before = scrape(agent)
    assert ("ep_agent_model_version", (("role", "active"),)) not in before  # no model yet
    assert before[("ep_agent_outbox_pending", ())] >= 0
    assert before[("ep_agent_memory_rss_mb", ())] > 10  # a Python process with numpy
    assert before[("process_resident_memory_bytes", ())] > 10e6

    hub.deploy(hub.ref(iris_models.a, 1), iris_models.a, deployment_id=1)
    hub.wait_report(1, "active")
    for _ in range(25):
        code, doc = agent.request(
            "POST", "/v1/predict", b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', {**AUTH, **JSON}
        )
        assert code == 200, doc
    got = scrape(agent)
    assert got[("ep_agent_inferences_total", (("version", "1"),))] == 25
    assert got[("ep_agent_inference_failures_total", (("version", "1"),))] == 0
    assert got[("ep_agent_model_version", (("role", "active"),))] == 1
    p50 = got[("ep_agent_latency_ms", (("quantile", "0.5"), ("version", "1")))]
    p99 = got[("ep_agent_latency_ms", (("quantile", "0.99"), ("version", "1")))]
    assert 0 < p50 <= p99 < 5000
    assert got[("ep_agent_mqtt_connected", ())] == 1
    assert got[("ep_agent_outbox_dropped_total", ())] == 0
    status = httpx.get(f"{agent.url}/v1/status", headers=AUTH, timeout=10).json()
    assert status["inference_count"] == 25 and status["active_version"] == 1

    # the telemetry still reports every inference (the tracker it reads is the same one)
    def reported() -> int:
        with hub.lock:
            records = list(hub.telemetry.values())
        return sum(int(r["inferences"].get("1", 0)) for r in records)

    wait_until(lambda: reported() == 25, timeout=15, what="25 inferences in the telemetry")
    # a second scrape counts on from the first (a counter, never reset by the telemetry)
    assert scrape(agent)[("ep_agent_inferences_total", (("version", "1"),))] == 25


JSON = {"Content-Type": "application/json"}
