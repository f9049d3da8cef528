"""The whole loop with the real parts: the hub's fleet service, Mosquitto, real agent processes.

Each test registers devices at the hub the way a user does, starts `edgepilot-agent run` with the
credentials and key the registration returned, deploys through the hub, and checks what the user
would see at the hub: device states, deployment states, logs stored.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.core.settings import HubSettings
from cloud_hub.devtools.local_broker import LocalBroker
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.registry.schemas import Version
from cloud_hub.stream.client import HubStream, fetch_overview
from tests.agent_processes import AgentProc, agent_toml
from tests.conftest import BIN, REPO, Mosquitto
from tests.waiting import wait_until

IRIS_SAMPLE = [[5.1, 3.5, 1.4, 0.2]]


def _iris_onnx(hidden: int, seed: int) -> bytes:
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant here
        model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=200, random_state=seed)
        model.fit(X, y)
    return sklearn_to_onnx(model, 4)


@pytest.fixture(scope="module")
def iris_onnx() -> list[bytes]:
    """Two different real ONNX models of the same task: version 1 and version 2."""
    return [_iris_onnx(32, 0), _iris_onnx(48, 1)]


def register(hub: Hub, data: bytes) -> Version:
    return hub.registry.register_version(
        "e2e",
        "iris",
        artifacts=[NewArtifact("onnx", "fp32", data)],
        source="uploaded",
        labels=["setosa", "versicolor", "virginica"],
        preprocessing={"input_kind": "tabular", "layout": "NF"},
    )


class Fleet:
    """The hub (registry + fleet service, in-process) and the agents it has registered."""

    def __init__(self, tmp_path: Path, address: tuple[str, int]) -> None:
        self.tmp_path = tmp_path
        self.address = address
        root = f"e2e{uuid.uuid4().hex[:8]}"
        self.settings = HubSettings(
            data_dir=tmp_path / "hub",
            run_scheduler=False,
            mqtt_host=address[0],
            mqtt_port=address[1],
            mqtt_client_id=f"hub-{root}",
            topic_root=root,
            chunk_size=4096,
            fleet_poll_s=0.1,
        )
        self.hub = Hub.open(self.settings)
        self.service: FleetService | None = None
        self.agents: dict[str, AgentProc] = {}
        self.closed = False

    def start_service(self) -> None:
        self.service = FleetService.from_hub(self.hub)
        self.service.start()
        assert self.service.wait_connected(10), "the hub's MQTT client did not connect"

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def add_agent(self, device_id: str, **device: Any) -> AgentProc:
        reg = self.hub.fleet.devices.register(DeviceCreate(id=device_id, **device))
        root = self.tmp_path / device_id
        root.mkdir()
        config = root / "agent.toml"
        text = agent_toml(
            device_id,
            root / "data",
            self.address,
            reg.hub_public_key,
            mqtt={
                "username": reg.username,
                "password": reg.password,
                "topic_root": reg.broker.topic_root,
            },
            transfer={"chunk_size": 4096, "window": 4, "timeout_s": 2.0},
            forwarder={"resend_after_s": 2.0},
        )
        config.write_text(text)
        agent = AgentProc(config, root / "data", root / "agent.log")
        self.agents[device_id] = agent
        return agent.start()

    def device(self, device_id: str) -> Any:
        return self.hub.fleet.devices.get(device_id)

    def wait_active(self, version: Version, *device_ids: str, timeout: float = 30) -> None:
        for device_id in device_ids:
            wait_until(
                lambda d=device_id: self.device(d).active_version_id == version.id,
                timeout,
                f"{device_id} active on version {version.id}",
            )

    def logs_at_hub(self, device_id: str) -> list[Any]:
        return self.hub.fleet.devices.logs(device_id, limit=10_000)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for agent in self.agents.values():
            agent.kill()
        self.stop_service()
        self.hub.close()


def _predict_ok(agent: AgentProc) -> str:
    code, body = agent.predict(IRIS_SAMPLE)
    assert code == 200, body
    return str(body["request_id"])


def test_a_failing_canary_halts_the_rollout_and_a_healthy_one_is_promoted(
    make_fleet: Callable[[tuple[str, int]], Fleet],
    mosquitto: tuple[str, int],
    iris_onnx: list[bytes],
) -> None:
    fleet = make_fleet(mosquitto)
    fleet.start_service()
    ids = ["cell-a", "cell-b", "cell-c"]  # the canary is the first by id
    agents = [fleet.add_agent(d, tags=["line-1"]) for d in ids]
    v1, v2 = register(fleet.hub, iris_onnx[0]), register(fleet.hub, iris_onnx[1])

    first = fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v1.id), tag="line-1"))
    fleet.wait_active(v1, *ids)
    assert fleet.hub.fleet.deployments.get(first.id).status == "completed"

    # v2 with a probation no model can pass: the canary activates it, its first requests are
    # "too slow", it rolls back to v1 on its own and reports; the hub halts the rollout.
    bad = fleet.hub.fleet.deployments.create(
        DeploymentCreate(
            version=str(v2.id),
            tag="line-1",
            strategy="canary",
            canary_count=1,
            promote_after_s=5,  # the canary soaks this long before the rest get it
            probation={"window_s": 60, "min_requests": 1, "max_latency_ms": 1e-6},
        )
    )
    wait_until(lambda: agents[0].status()["active_version"] == v2.id, 30, "canary on v2")
    _predict_ok(agents[0])
    wait_until(
        lambda: fleet.hub.fleet.deployments.get(bad.id).status == "halted", 30, "rollout halted"
    )
    halted = fleet.hub.fleet.deployments.get(bad.id)
    states = {d.device_id: d.state for d in halted.devices}
    assert states == {"cell-a": "rolled_back", "cell-b": "waiting", "cell-c": "waiting"}
    canary_row = next(d for d in halted.devices if d.device_id == "cell-a")
    assert canary_row.reason and "latency" in canary_row.reason
    # Every device still serves v1: the canary rolled back, the rest never received v2.
    fleet.wait_active(v1, *ids)
    for agent in agents:
        assert agent.status()["active_version"] == v1.id
        _predict_ok(agent)

    # The same version with an ordinary probation: the canary stays healthy and is promoted.
    good = fleet.hub.fleet.deployments.create(
        DeploymentCreate(
            version=str(v2.id),
            tag="line-1",
            strategy="canary",
            canary_count=1,
            promote_after_s=1,
        )
    )
    fleet.wait_active(v2, *ids)
    wait_until(
        lambda: fleet.hub.fleet.deployments.get(good.id).status == "completed", 30, "promotion"
    )
    assert {d.state for d in fleet.hub.fleet.deployments.get(good.id).devices} == {"active"}


def test_logs_survive_a_hub_outage_and_an_agent_kill(
    make_fleet: Callable[[tuple[str, int]], Fleet],
    mosquitto: tuple[str, int],
    iris_onnx: list[bytes],
) -> None:
    fleet = make_fleet(mosquitto)
    fleet.start_service()
    agent = fleet.add_agent("cam-1")
    v1 = register(fleet.hub, iris_onnx[0])
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v1.id), device="cam-1"))
    fleet.wait_active(v1, "cam-1")
    made = {_predict_ok(agent) for _ in range(20)}
    wait_until(lambda: len(fleet.logs_at_hub("cam-1")) == 20, 20, "20 logs at the hub")

    # The hub goes away; the agent keeps serving and keeps its logs.
    fleet.stop_service()
    made |= {_predict_ok(agent) for _ in range(60)}
    # kill -9 while it holds logs nobody acknowledged, then start it again: it serves at once.
    agent.kill()
    agent.start()
    assert agent.status()["active_version"] == v1.id
    made |= {_predict_ok(agent) for _ in range(20)}
    assert len(fleet.logs_at_hub("cam-1")) == 20

    # The hub returns: every log arrives, none twice.
    fleet.start_service()
    wait_until(lambda: len(fleet.logs_at_hub("cam-1")) >= 100, 30, "100 logs at the hub")
    stored = fleet.logs_at_hub("cam-1")
    assert sorted(log.request_id for log in stored) == sorted(made)
    seqs = sorted(log.seq for log in stored)
    assert len(seqs) == len(set(seqs)) == 100
    assert all(log.model_version == v1.id for log in stored)
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 20, "outbox emptied by acks")


def test_a_transfer_interrupted_by_a_broker_restart_resumes_and_completes(
    make_fleet: Callable[[tuple[str, int]], Fleet],
    own_mosquitto: Mosquitto,
) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    # A 1.5 MB model: ~370 chunks of 4 KB, long enough to pull the broker out from under it.
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 96_000)).astype(np.float32), "W")
    proj = numpy_helper.from_array(rng.normal(size=(96_000, 3)).astype(np.float32) * 1e-3, "P")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("MatMul", ["h", "P"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [weight, proj],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()

    fleet = make_fleet(own_mosquitto.address)
    fleet.start_service()
    agent = fleet.add_agent("far-1")
    version = register(fleet.hub, data)
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(version.id), device="far-1"))

    def received() -> int:
        transfer = (agent.status().get("deployment") or {}).get("transfer") or {}
        return int(transfer.get("received_bytes") or 0)

    wait_until(lambda: received() > len(data) // 4, 30, "a quarter of the model to arrive")
    own_mosquitto.stop()
    got_before = received()
    assert 0 < got_before < len(data), "the transfer finished before the broker went away"
    own_mosquitto.start()

    fleet.wait_active(version, "far-1", timeout=60)
    assert agent.status()["active_version"] == version.id
    assert _predict_ok(agent)
    # Resumed, not restarted: the hub served each chunk about once (a few in flight at the
    # moment of the cut are asked again), not the part received before the cut a second time.
    assert fleet.service is not None
    chunks = -(-len(data) // 4096)
    assert fleet.service.stats()["chunks"] < chunks + (got_before // 4096) // 2


def test_a_model_damaged_on_the_hub_is_refused_and_the_old_one_keeps_serving(
    make_fleet: Callable[[tuple[str, int]], Fleet],
    mosquitto: tuple[str, int],
    iris_onnx: list[bytes],
) -> None:
    fleet = make_fleet(mosquitto)
    fleet.start_service()
    agent = fleet.add_agent("gate-1")
    v1, v2 = register(fleet.hub, iris_onnx[0]), register(fleet.hub, iris_onnx[1])
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v1.id), device="gate-1"))
    fleet.wait_active(v1, "gate-1")

    # v2's file rots on the hub's disk after it was registered: same size, other bytes.
    blob = fleet.hub.registry.store.path_for(v2.artifacts[0].sha256)
    blob.chmod(0o644)
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))

    dep = fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v2.id), device="gate-1"))

    def row() -> Any:
        return fleet.hub.fleet.deployments.get(dep.id).devices[0]

    wait_until(lambda: row().state == "failed", 30, "the device to refuse v2")
    assert "sha256" in (row().reason or ""), row().reason
    assert fleet.device("gate-1").active_version_id == v1.id
    assert agent.status()["active_version"] == v1.id
    assert _predict_ok(agent)


def test_the_loop_runs_over_the_embedded_broker(
    make_fleet: Callable[[tuple[str, int]], Fleet],
    tmp_path: Path,
    iris_onnx: list[bytes],
) -> None:
    """Where Mosquitto is not installed the demo brings its own broker: the loop must hold."""
    with LocalBroker(tmp_path / "amqtt", prefer="embedded") as broker:
        assert broker.kind == "embedded"
        fleet = make_fleet((broker.host, broker.port))
        fleet.start_service()
        agent = fleet.add_agent("tiny-1")
        v1 = register(fleet.hub, iris_onnx[0])
        fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v1.id), device="tiny-1"))
        fleet.wait_active(v1, "tiny-1")
        made = {_predict_ok(agent) for _ in range(25)}
        wait_until(lambda: len(fleet.logs_at_hub("tiny-1")) == 25, 30, "25 logs at the hub")
        assert {log.request_id for log in fleet.logs_at_hub("tiny-1")} == made
        fleet.close()


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    """The README's first command, shortened: both agents active, every log made is at the hub;
    while it runs, the live views' overview and stream (with the viewer token the demo made and
    printed) show both devices online, running their artifact, with telemetry."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            str(BIN / "edgepilot"),
            "demo",
            "--duration",
            "8",
            "--json",  # the default epochs: a CNN trained for 3 quantizes below the 0.99
            "--rate",  # top-1 agreement the validate step asks for, with onnxruntime 1.32
            "15",
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        hub_line = wait_until(
            lambda: (
                next((line for line in list(said) if line.startswith("hub: ")), None)
                or (proc.poll() is not None and "exited")
            ),
            240,
            "the demo's hub",
        )
        assert hub_line != "exited", "".join(said)[-3000:]
        url = hub_line.split()[1].removesuffix("/docs")
        token_file = workdir / "viewer.token"
        wait_until(token_file.exists, 30, "the demo's viewer token")
        token = token_file.read_text().strip()
        assert any(f"{url}/ui/#token={token}" in line for line in said)

        def running() -> dict[str, Any] | None:
            rows = {d["id"]: d for d in fetch_overview(url, token)["devices"]}
            live = all(
                d["status"] == "online" and d["artifact"] and d["inferences_per_s"]
                for d in rows.values()
            )
            return rows if len(rows) == 2 and live else None

        rows = wait_until(running, 120, "both demo devices online, serving, with telemetry")
        assert rows["demo-pi"]["artifact"] == "tflite/int8"
        assert rows["demo-jetson"]["active_model"] == "digits/digits-cnn:1"
        events = HubStream(url, token).events()
        seen = next(e for e in events if e.kind == "telemetry")
        events.close()
        assert seen.data["id"] in rows
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    stderr = "".join(said)
    proc_out = stdout
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(proc_out)
    assert out["deployed_version"] == "digits/digits-cnn:1"
    devices = {d["device_id"]: d for d in out["devices"]}
    assert set(devices) == {"demo-pi", "demo-jetson"}
    assert devices["demo-pi"]["artifact"] == "tflite/int8"
    assert devices["demo-jetson"]["artifact"] == "onnx/fp32"
    for d in devices.values():
        assert d["active_version"] == "digits/digits-cnn:1"
        assert d["inferences"] > 0 and d["errors"] == 0
        assert d["logs_made"] == d["inferences"]
        assert d["logs_at_hub"] == d["logs_made"]
        assert d["accuracy"] > 0.8  # digits the model never saw, scored on the device
    assert out["all_logs_at_hub"] is True
