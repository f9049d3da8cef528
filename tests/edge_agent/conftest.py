"""Agent test fixtures: real agent processes, and a small "hub on the wire" (a paho client).

`WireHub` plays the hub's MQTT side as the contract describes it: it publishes a retained
DesiredState with a signed ModelRef, answers FetchRequests with chunks (optionally damaged, slow
or not at all), records reports, statuses and infer results, and stores logs and telemetry by
sequence number, acknowledging the highest contiguous sequence (honouring the batch floor).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from cloud_hub.registry.signing import HubSigner
from converters import sklearn_to_onnx
from edge_agent.core.wire import (
    Ack,
    Chunk,
    DesiredState,
    DeviceStatus,
    FetchRequest,
    InferResult,
    LogBatch,
    ModelRef,
    ProbationPolicy,
    Report,
    ServingParams,
    TelemetryBatch,
    Topics,
)
from tests.agent_processes import AgentProc, agent_toml
from tests.waiting import wait_until


# -- models -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IrisModels:
    X: np.ndarray
    a: bytes  # LogisticRegression (about 500 bytes: one chunk)
    b: bytes  # an MLP with the same input (about 20 KB: many chunks)
    clf_a: Any
    clf_b: Any


@pytest.fixture(scope="session")
def iris_models() -> IrisModels:
    iris = load_iris()
    X = iris.data.astype(np.float32)
    clf_a = LogisticRegression(max_iter=500).fit(X, iris.target)
    clf_b = MLPClassifier((64, 64), max_iter=300, random_state=0).fit(X, iris.target)
    return IrisModels(X, sklearn_to_onnx(clf_a, 4), sklearn_to_onnx(clf_b, 4), clf_a, clf_b)


@pytest.fixture(scope="session")
def signer() -> HubSigner:
    return HubSigner.generate()


# -- the hub on the wire ----------------------------------------------------------------------
@dataclass
class Deployment:
    deployment_id: int
    ref: ModelRef
    data: bytes  # what the hub serves (may differ from what the ref promises)
    corrupt: set[int] = field(default_factory=set)  # offsets whose chunks always arrive damaged
    corrupt_once: set[int] = field(default_factory=set)
    shadow: tuple[ModelRef, bytes] | None = None

    def bytes_for(self, sha256: str) -> bytes:
        if self.shadow is not None and self.shadow[0].sha256 == sha256:
            return self.shadow[1]
        return self.data


class WireHub:
    def __init__(self, address: tuple[str, int], device_id: str, signer: HubSigner) -> None:
        self.host, self.port = address
        self.device_id = device_id
        self.signer = signer
        self.topics = Topics()
        self.lock = threading.Lock()
        self.reports: list[Report] = []
        self.statuses: list[DeviceStatus] = []
        self.results: list[InferResult] = []
        self.fetches: list[FetchRequest] = []
        self.logs: dict[int, dict[str, Any]] = {}
        self.telemetry: dict[int, dict[str, Any]] = {}
        self.duplicates = 0
        self.contiguous = 0
        self.acking = True
        self.answering = True
        self.chunk_delay_s = 0.0
        self.deployments: dict[int, Deployment] = {}
        self.desired: DesiredState | None = None
        self.connected = threading.Event()
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"wire-hub-{self.device_id}-{time.monotonic()}"
        )
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = self._on_message
        return client

    def t(self, kind: Any) -> str:
        return self.topics.device(self.device_id, kind)

    # -- lifecycle
    def start(self) -> WireHub:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        wait_until(self.connected.is_set, 10, "the wire hub to connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def restart(self) -> None:
        """A new client (a hub that went away and came back)."""
        self.client = self._client()
        self.start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(
            [(self.t(k), 1) for k in ("status", "fetch", "report", "logs", "telemetry", "result")]
        )
        if self.desired is not None:  # a restarted broker forgot the retained message
            client.publish(self.t("desired"), self.desired.dumps(), qos=1, retain=True)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[1]
        payload = bytes(msg.payload)
        if kind == "status":
            if payload:
                with self.lock:
                    self.statuses.append(DeviceStatus.loads(payload))
        elif kind == "report":
            with self.lock:
                self.reports.append(Report.loads(payload))
        elif kind == "result":
            with self.lock:
                self.results.append(InferResult.loads(payload))
        elif kind == "fetch":
            request: FetchRequest = FetchRequest.loads(payload)
            with self.lock:
                self.fetches.append(request)
            if self.answering:
                threading.Thread(target=self._answer, args=(request,), daemon=True).start()
        elif kind in ("logs", "telemetry"):
            batch: LogBatch | TelemetryBatch = (
                LogBatch.loads(payload) if kind == "logs" else TelemetryBatch.loads(payload)
            )
            self._store(kind, batch)

    def _answer(self, request: FetchRequest) -> None:
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        if not self.answering:
            return
        deployment = self.deployments.get(request.deployment_id)
        if deployment is None:
            return
        whole = deployment.bytes_for(request.sha256)
        data = whole[request.offset : request.offset + request.length]
        encoded = Chunk(
            request.deployment_id, request.sha256, request.offset, len(whole), data
        ).encode()
        damaged = request.offset in deployment.corrupt
        if request.offset in deployment.corrupt_once:
            deployment.corrupt_once.discard(request.offset)
            damaged = True
        if damaged:
            encoded = encoded[:-1] + bytes([encoded[-1] ^ 0xFF])
        self.client.publish(self.t("chunk"), encoded, qos=1)

    def _store(self, kind: str, batch: LogBatch | TelemetryBatch) -> None:
        with self.lock:
            target = self.logs if kind == "logs" else self.telemetry
            for record in batch.records:
                if record.seq in self.logs or record.seq in self.telemetry:
                    self.duplicates += 1
                    continue
                target[record.seq] = record.model_dump()
            self.contiguous = max(self.contiguous, batch.floor - 1)
            while self.contiguous + 1 in self.logs or self.contiguous + 1 in self.telemetry:
                self.contiguous += 1
            upto = self.contiguous
        if self.acking:
            self.client.publish(self.t("ack"), Ack(upto=upto).dumps(), qos=1)

    # -- deploying
    def ref(
        self,
        data: bytes,
        version_id: int,
        *,
        preprocessing: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ModelRef:
        sha = hashlib.sha256(data).hexdigest()
        fields: dict[str, Any] = {
            "version_id": version_id,
            "ref": f"demo/iris:{version_id}",
            "format": "onnx",
            "precision": "fp32",
            "sha256": sha,
            "size": len(data),
            "preprocessing": preprocessing,
            "labels": ["setosa", "versicolor", "virginica"],
        }
        fields.update(overrides)
        if "signature" not in fields:
            fields["signature"] = self.signer.sign_model(
                version_id, fields["sha256"], fields["size"], "onnx"
            )
        return ModelRef(**fields)

    def deploy(
        self,
        ref: ModelRef,
        data: bytes,
        deployment_id: int,
        *,
        probation: ProbationPolicy | None = None,
        params: dict[str, Any] | None = None,
        shadow: tuple[ModelRef, bytes] | None = None,
        corrupt: set[int] | None = None,
        corrupt_once: set[int] | None = None,
    ) -> None:
        self.deployments[deployment_id] = Deployment(
            deployment_id, ref, data, set(corrupt or ()), set(corrupt_once or ()), shadow
        )
        self.desired = DesiredState(
            device_id=self.device_id,
            deployment_id=deployment_id,
            model=ref,
            shadow=shadow[0] if shadow is not None else None,
            probation=probation or ProbationPolicy(window_s=0),
            params=ServingParams.model_validate(params or {}),
        )
        self.client.publish(
            self.t("desired"), self.desired.dumps(), qos=1, retain=True
        ).wait_for_publish(5)

    def report_states(self, deployment_id: int) -> list[str]:
        with self.lock:
            return [r.state for r in self.reports if r.deployment_id == deployment_id]

    def wait_report(self, deployment_id: int, state: str, timeout: float = 15.0) -> Report:
        def found() -> Report | None:
            with self.lock:
                for report in self.reports:
                    if report.deployment_id == deployment_id and report.state == state:
                        return report
            return None

        return wait_until(
            found,
            timeout,
            f"report {state!r} for deployment {deployment_id} "
            f"(have {self.report_states(deployment_id)})",
        )

    def clear_retained(self) -> None:
        self.client.publish(self.t("desired"), b"", qos=1, retain=True).wait_for_publish(5)


@pytest.fixture
def make_hub(signer: HubSigner) -> Iterator[Callable[..., WireHub]]:
    hubs: list[WireHub] = []

    def make(address: tuple[str, int], device_id: str) -> WireHub:
        hub = WireHub(address, device_id, signer).start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        with contextlib.suppress(Exception):
            hub.clear_retained()
        hub.stop()


@pytest.fixture
def make_agent(tmp_path: Path, signer: HubSigner) -> Iterator[Callable[..., AgentProc]]:
    agents: list[AgentProc] = []

    def make(device_id: str, address: tuple[str, int], **sections: Any) -> AgentProc:
        root = tmp_path / device_id
        root.mkdir(parents=True, exist_ok=True)
        data_dir = root / "data"
        config = root / "agent.toml"
        config.write_text(
            agent_toml(device_id, data_dir, address, signer.public_key_b64, **sections)
        )
        agent = AgentProc(config, data_dir, root / "agent.log")
        agents.append(agent)
        return agent.start()

    yield make
    for agent in agents:
        agent.kill()


_ids = iter(range(1, 1_000_000))


@pytest.fixture
def device_id(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("test_", "").replace("[", "-").replace("]", "")
    return f"{name[:40]}-{os.getpid()}-{next(_ids)}"
