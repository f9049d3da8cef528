"""examples/monitoring, applied and exercised against real processes.

A real hub (`edgepilot hub serve` with its MQTT service) on Mosquitto, devices speaking the wire
protocol, a real agent process. Every EdgePilot rule file in examples/monitoring/rules is
applied through the hub's REST API; then the condition each watches for is made: a device whose
inferences are slow, an endpoint whose requests fail, a device whose inputs drift, a device that
drops off the network (its last will), a device whose outbox backlog grows. Each fires, and
the healthy devices and endpoint beside them do not. The Prometheus rules and the Grafana
dashboard are parsed, and every metric they name is on the hub's or the agent's /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.monitoring.baseline import BaselineStore, compute_baseline
from edge_agent.core.features import summary_lists
from edge_agent.core.wire import DeviceStatus, LogBatch, LogRecord, TelemetryBatch, TelemetryRecord
from tests.agent_processes import AgentProc, agent_toml
from tests.cloud_hub.conftest import Device, register_model, unique
from tests.conftest import BIN, REPO, free_port, wait_for_port
from tests.waiting import wait_until

EXAMPLES = REPO / "examples" / "monitoring"
API = "/api/v1"
pytestmark = pytest.mark.slow  # the offline rule waits out its 30 s


class RunningHub:
    def __init__(self, base: str, token: str, version: int, public_key: str) -> None:
        self.base = base
        self.auth = {"Authorization": f"Bearer {token}"}
        self.version = version
        self.public_key = public_key

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{API}{path}", json=body, headers=self.auth, timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.base}{API}{path}", params=params, headers=self.auth, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def running_hub(
    cli_env: dict[str, str], mosquitto: tuple[str, int], onnx_bytes: bytes
) -> Iterator[RunningHub]:
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    version = register_model(hub, onnx_bytes, tflite=False)
    x, y = load_iris(return_X_y=True)
    BaselineStore(hub.db).save(
        compute_baseline(
            version.id,
            x.astype(np.float32),
            source="training",
            labels=["setosa", "versicolor", "virginica"],
            y=y,
        )
    )
    public_key = hub.fleet.signer.public_key_b64
    hub.close()
    host, port = mosquitto
    api_port = free_port()
    log = (data_dir / "hub.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "edgepilot"), "hub", "serve", "--port", str(api_port), "--no-scheduler",
         "--mqtt", f"{host}:{port}"],
        env=cli_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(api_port, timeout=60, proc=proc)
        token = (data_dir / "admin-token").read_text().strip()
        yield RunningHub(f"http://127.0.0.1:{api_port}", token, version.id, public_key)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _logs(
    device: str, seq0: int, x: np.ndarray, latency_ms: float, version: int
) -> list[LogRecord]:
    now = time.time()
    features = summary_lists(x.astype(np.float32))
    return [
        LogRecord(
            seq=seq0 + i,
            request_id=f"{device}-{seq0 + i}",
            model_version=version,
            input_digest="ab" * 8,
            output={"task": "classification", "label": "setosa", "scores": [0.8, 0.1, 0.1]},
            latency_ms=latency_ms + (i % 7),
            ts=now - 30 + i * 0.05,
            features=features[i],
        )
        for i in range(len(x))
    ]


def _send_logs(dev: Device, records: list[LogRecord]) -> None:
    for start in range(0, len(records), 100):
        chunk = records[start : start + 100]
        dev.send("logs", LogBatch(device_id=dev.id, floor=1, records=chunk))
        dev.wait_ack(chunk[-1].seq, timeout=20)


def _telemetry(dev: Device, seq0: int, backlog: list[int]) -> None:
    now = time.time()
    records = [
        TelemetryRecord(
            seq=seq0 + i,
            ts=now - 60 * (len(backlog) - 1 - i),
            outbox_pending=pending,
            outbox_dropped=0,
            inferences={"1": 10},
        )
        for i, pending in enumerate(backlog)
    ]
    dev.send("telemetry", TelemetryBatch(device_id=dev.id, floor=1, records=records))
    dev.wait_ack(records[-1].seq, timeout=20)


def _names(text: str) -> set[str]:
    """Every metric name a Prometheus text exposition carries (families and samples)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(s.name for s in family.samples)
    return names


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ep|process)_[a-z0-9_]+)\b", expr))


def test_every_example_rule_fires_on_its_condition_and_not_on_healthy_data(
    running_hub: RunningHub, mosquitto: tuple[str, int], tmp_path: Path
) -> None:
    hub = running_hub
    ids = {
        role: unique(role)
        for role in ("slow", "fast", "drift", "gone", "backlog", "steady", "bad", "good")
    }
    for role in ("slow", "fast", "drift", "gone", "backlog", "steady"):
        made = hub.post("/devices", {"id": ids[role]})
        assert made.status_code == 201, made.text

    # the rule files, as an operator applies them (README): one POST each
    files = sorted((EXAMPLES / "rules").glob("*.json"))
    assert {f.stem for f in files} == {
        "device-latency",
        "endpoint-error-rate",
        "device-input-drift",
        "device-offline",
        "outbox-backlog-growing",
    }
    rule_of: dict[str, str] = {}
    for f in files:
        created = hub.post("/alerts/rules", json.loads(f.read_text()))
        assert created.status_code == 201, (f.name, created.text)
        rule_of[created.json()["key"]] = f.stem
    assert sorted(r["key"] for r in hub.get("/alerts/rules")) == sorted(rule_of)

    # a device drops off the network first (its offline alert needs 30 s of absence)
    gone = Device(mosquitto, "ep", ids["gone"])
    fast = Device(mosquitto, "ep", ids["fast"])
    devices = [gone, fast]
    try:
        for dev in (gone, fast):
            dev.send("status", DeviceStatus(device_id=dev.id, state="online"))
        wait_until(lambda: hub.get(f"/devices/{ids['gone']}")["status"] == "online", 10, "online")
        gone.kill()  # no DISCONNECT: the broker publishes its last will
        wait_until(
            lambda: hub.get(f"/devices/{ids['gone']}")["status"] == "offline", 15, "the will"
        )

        # slow inferences; inputs that drift; a healthy device with plenty of both
        x, _ = load_iris(return_X_y=True)
        rng = np.random.default_rng(0)
        pick = x[rng.integers(0, len(x), 250)]
        _send_logs(fast, _logs(fast.id, 1, pick, 20.0, hub.version))
        slow = Device(mosquitto, "ep", ids["slow"])
        drift = Device(mosquitto, "ep", ids["drift"])
        backlog = Device(mosquitto, "ep", ids["backlog"])
        steady = Device(mosquitto, "ep", ids["steady"])
        devices += [slow, drift, backlog, steady]
        _send_logs(slow, _logs(slow.id, 1, pick[:60], 400.0, hub.version))
        _send_logs(drift, _logs(drift.id, 1, pick + 25.0, 20.0, hub.version))
        # an outbox backlog growing over the last minutes, and one holding steady
        _telemetry(backlog, 1, [100, 900, 2200, 3600, 5000])
        _telemetry(steady, 1, [20, 25, 18, 22, 20])

        # an endpoint whose requests fail (a third refused: 3 values for 4 inputs), one healthy
        for name in (ids["bad"], ids["good"]):
            spec = {
                "name": name,
                "models": {"m": f"fleet/iris:{1}"},
                "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
            }
            made = hub.post("/endpoints", spec)
            assert made.status_code == 201, made.text
        for i in range(30):
            good = hub.post(f"/endpoints/{ids['good']}/predict", {"inputs": [x[i].tolist()]})
            assert good.status_code == 200, good.text
            inputs = [[1.0, 2.0, 3.0]] if i % 3 == 0 else [x[i].tolist()]
            answered = hub.post(f"/endpoints/{ids['bad']}/predict", {"inputs": inputs})
            assert answered.status_code == (422 if i % 3 == 0 else 200), answered.text

        expected = {
            ("device-latency", ids["slow"]),
            ("endpoint-error-rate", ids["bad"]),
            ("device-input-drift", ids["drift"]),
            ("device-offline", ids["gone"]),
            ("outbox-backlog-growing", ids["backlog"]),
        }

        def firing() -> set[tuple[str, str]]:
            evaluated = hub.post("/alerts/evaluate", None)
            assert evaluated.status_code == 200, evaluated.text
            return {
                (rule_of[a["rule"]], a["target"])
                for a in hub.get("/alerts", state="open")
                if a["target"] in ids.values()
            }

        wait_until(lambda: expected <= firing(), 60, "every example rule to fire")
        assert firing() == expected  # and none on the healthy devices and endpoint
        alerts = {a["target"]: a for a in hub.get("/alerts", state="open")}
        assert "offline for" in alerts[ids["gone"]]["message"]
        assert "grew by 4900 records" in alerts[ids["backlog"]]["message"]

        # the device comes back: its offline alert resolves
        back = Device(mosquitto, "ep", ids["gone"])
        devices.append(back)
        back.send("status", DeviceStatus(device_id=back.id, state="online"))
        wait_until(
            lambda: ("device-offline", ids["gone"]) not in firing(),
            20,
            "the offline alert resolved",
        )
        hub_metrics = httpx.get(f"{hub.base}/metrics", headers=hub.auth, timeout=30)
        assert hub_metrics.status_code == 200
        hub_names = _names(hub_metrics.text)
    finally:
        for dev in devices:
            dev.close()

    # a real agent's /metrics, for the ep_agent_* names
    root = tmp_path / "agent"
    root.mkdir()
    config = root / "agent.toml"
    config.write_text(agent_toml(unique("agent"), root / "data", mosquitto, hub.public_key))
    agent = AgentProc(config, root / "data", root / "agent.log").start()
    try:
        got = httpx.get(f"{agent.url}/metrics", timeout=10)
        assert got.status_code == 200, got.text
        agent_names = _names(got.text)
    finally:
        agent.kill()
    assert {"ep_device_online", "ep_device_outbox_backlog"} <= hub_names
    assert {"ep_agent_inferences_total", "ep_agent_outbox_pending"} <= agent_names
    known = hub_names | agent_names

    # Prometheus alerting rules: well formed, and every metric they use exists
    doc = yaml.safe_load((EXAMPLES / "prometheus-rules.yml").read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"].startswith("EdgePilot") and rule["annotations"]["summary"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert re.fullmatch(r"[0-9]+[smh]", str(rule.get("for", "1m"))), rule
        used = _metrics_in(rule["expr"])
        assert used and used <= known, (rule["alert"], used - known)

    # the Grafana dashboard: valid JSON, unique panel ids, every query's metrics exist
    dash = json.loads((EXAMPLES / "grafana-fleet.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        used = _metrics_in(expr)
        assert used and used <= known, (expr, used - known)
