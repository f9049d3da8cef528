"""Fleet fixtures: a hub with its MQTT service on the session's Mosquitto, a small registered
model, and a simulated device that speaks the wire contract the way an agent does."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.registry.schemas import Version
from edge_agent.core.wire import (
    Ack,
    Chunk,
    DesiredState,
    DeviceStatus,
    FetchRequest,
    Message,
    TopicKind,
    Topics,
)
from tests.waiting import wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def onnx_bytes() -> bytes:
    """A real, small ONNX model (about 8 KB, several chunks): an iris MLP through skl2onnx."""
    import warnings

    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant here
        model = MLPClassifier(hidden_layer_sizes=(256,), max_iter=20, random_state=0).fit(X, y)
    return sklearn_to_onnx(model, 4)


def register_model(hub: Hub, onnx_bytes: bytes, *, tflite: bool = True) -> Version:
    """A version with onnx/fp32 and (stand-in bytes for) tflite/int8 and tflite/fp32."""
    arts = [NewArtifact("onnx", "fp32", onnx_bytes)]
    if tflite:
        arts += [
            NewArtifact("tflite", "int8", b"TFL3-int8-" + uuid.uuid4().bytes * 300),
            NewArtifact("tflite", "fp32", b"TFL3-fp32-" + uuid.uuid4().bytes * 600),
        ]
    return hub.registry.register_version(
        "fleet",
        "iris",
        artifacts=arts,
        source="uploaded",
        labels=["setosa", "versicolor", "virginica"],
        preprocessing={"kind": "tabular"},
    )


@pytest.fixture
def fleet_settings(tmp_path: Path, mosquitto: tuple[str, int]) -> HubSettings:
    host, port = mosquitto
    return HubSettings(
        data_dir=tmp_path / "hub",
        run_scheduler=False,
        mqtt_host=host,
        mqtt_port=port,
        mqtt_username="hub",
        mqtt_password="unused-on-an-anonymous-broker",
        mqtt_client_id=unique("hub"),
        topic_root=unique("t"),
        chunk_size=1024,
        fleet_poll_s=0.05,
    )


@pytest.fixture
def fleet_hub(fleet_settings: HubSettings) -> Iterator[Hub]:
    opened = Hub.open(fleet_settings)
    yield opened
    opened.close()


@pytest.fixture
def service(fleet_hub: Hub) -> Iterator[FleetService]:
    svc = FleetService.from_hub(fleet_hub)
    svc.start()
    assert svc.wait_connected(10), "the hub's MQTT client did not connect"
    yield svc
    svc.stop()


class Device:
    """A test device: publishes what an agent publishes, records what the hub sends it."""

    def __init__(self, address: tuple[str, int], root: str, device_id: str) -> None:
        self.id = device_id
        self.topics = Topics(root)
        self.received: dict[str, list[bytes]] = {"desired": [], "chunk": [], "ack": []}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique(f"dev-{device_id}"))
        offline = DeviceStatus(device_id=device_id, state="offline").dumps()
        self.client.will_set(self.topic("status"), offline, qos=1, retain=True)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(*address)
        self.client.loop_start()
        self.client.subscribe(
            [(self.topic("desired"), 1), (self.topic("chunk"), 1), (self.topic("ack"), 1)]
        )
        assert self._subscribed.wait(30), f"device {self.id}: no SUBACK from the broker in 30 s"

    def topic(self, kind: TopicKind) -> str:
        return self.topics.device(self.id, kind)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[1]
        with self._lock:
            self.received.setdefault(kind, []).append(bytes(msg.payload))

    def messages(self, kind: str) -> list[bytes]:
        with self._lock:
            return list(self.received.get(kind, []))

    def send(self, kind: TopicKind, payload: Message | bytes) -> None:
        data = payload if isinstance(payload, bytes) else payload.dumps()
        self.client.publish(self.topic(kind), data, qos=1).wait_for_publish(10)

    def desired(self, timeout: float = 10.0) -> DesiredState:
        wait_until(lambda: self.messages("desired"), timeout, f"{self.id}'s desired state")
        state = DesiredState.loads(self.messages("desired")[-1])
        assert isinstance(state, DesiredState)
        return state

    def acked(self) -> int:
        acks = [Ack.loads(m).upto for m in self.messages("ack")]
        return max(acks, default=0)

    def wait_ack(self, upto: int, timeout: float = 10.0) -> None:
        wait_until(lambda: self.acked() >= upto, timeout, f"ack {upto} for {self.id}")

    def fetch(self, state: DesiredState, *, window: int, start: int = 0) -> bytes:
        """Fetch the desired model window by window (as the agent does) and reassemble it."""
        assert state.model is not None and state.deployment_id is not None
        size, sha = state.model.size, state.model.sha256
        offset = start
        while offset < size:
            self.send(
                "fetch",
                FetchRequest(
                    deployment_id=state.deployment_id, sha256=sha, offset=offset, length=window
                ),
            )
            end = min(size, offset + window)

            def have(start: int = offset, end: int = end) -> bool:
                return self._contiguous(sha, start) >= end

            wait_until(have, 10, f"chunks up to {end}")
            offset = end
        return self._assemble(sha, start, size)

    def _chunks(self, sha: str) -> dict[int, bytes]:
        chunks = (Chunk.decode(m) for m in self.messages("chunk"))
        return {c.offset: c.data for c in chunks if c.sha256 == sha}

    def _contiguous(self, sha: str, start: int) -> int:
        chunks, pos = self._chunks(sha), start
        while pos in chunks:
            pos += len(chunks[pos])
        return pos

    def _assemble(self, sha: str, start: int, end: int) -> bytes:
        chunks, pos, out = self._chunks(sha), start, bytearray()
        while pos < end:
            out += chunks[pos]
            pos += len(chunks[pos])
        return bytes(out)

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT: the broker sends the last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_device(
    fleet_settings: HubSettings, mosquitto: tuple[str, int]
) -> Iterator[Callable[[str], Device]]:
    made: list[Device] = []

    def make(device_id: str) -> Device:
        dev = Device(mosquitto, fleet_settings.topic_root, device_id)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.close()
