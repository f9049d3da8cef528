"""The broker as `edgepilot hub broker-config` configures it, against real Mosquitto over TLS.

Each defect a tester found with mosquitto_pub/sub has a test here: a device forging what the hub
sends it (desired, ack, chunk, and its last will), another account taking over the hub's or an
agent's client id, and one device's 64 MiB message. The hub side is the real FleetService; the
devices and the other accounts are paho clients with the credentials the hub issued.

MQTT 3.1.1 acknowledges a publish the ACL refuses and drops it, so a refusal is shown by what a
subscriber receives: each test sends the forged message first and a genuine one after it on the
same path, and the genuine one's arrival proves the forged one would have arrived before it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import (
    DEVICE_PUBLISHES,
    DEVICE_READS,
    HUB_PUBLISHES,
    HUB_READS,
    HUB_USER,
    BrokerFiles,
    account_password,
    event_topics,
    hub_password,
)
from cloud_hub.fleet.mqtt_service import SUBSCRIBED, FleetService
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.monitoring.alerts import alerts_topic
from cloud_hub.serving.jobs.notify import MqttPublisher, job_topic
from edge_agent.core.mqtt import tls_context
from edge_agent.core.wire import (
    TOPIC_KINDS,
    Ack,
    Chunk,
    DesiredState,
    DeviceStatus,
    FetchRequest,
    LogBatch,
    LogRecord,
    ServingParams,
    TopicKind,
    Topics,
)
from edge_agent.mqtt_link import INBOUND
from tests.cloud_hub.conftest import register_model
from tests.conftest import SecureMosquitto, run_cli
from tests.waiting import wait_until

T = Topics("ep")


class Peer:
    """A paho client logged in as one account, over TLS (the fleet CA), recording deliveries."""

    def __init__(
        self,
        broker: SecureMosquitto,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.username = username
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.username_pw_set(username, password)
        self.client.tls_set_context(tls_context(broker.ca_file))
        self.client.reconnect_delay_set(60, 120)  # a kicked peer stays out: the tests see it
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connacks: list[bool] = []
        self.disconnects = 0
        self.subacks = 0
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.append(not rc.is_failure)
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(*broker.address)
        self.client.loop_start()
        wait_until(lambda: self.connacks, 10, f"CONNACK for {username}")
        assert self.connacks[0], f"the broker refused {username}"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_disconnect(self, *args: object) -> None:
        self.disconnects += 1

    def _on_subscribe(self, *args: object) -> None:
        self.subacks += 1

    def subscribe(self, *topics: str) -> None:
        before = self.subacks
        self.client.subscribe([(t, 1) for t in topics])
        wait_until(lambda: self.subacks > before, 10, f"SUBACK for {self.username}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def got(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(*args: Any, **kwargs: Any) -> Peer:
        peer = Peer(*args, **kwargs)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


class SecureFleet:
    """A hub with two registered devices (dev-a, dev-b), its broker and its fleet service."""

    def __init__(self, tmp_path: Path, start_broker: Callable[..., SecureMosquitto]) -> None:
        data_dir = tmp_path / "hub"
        boot = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
        try:
            self.passwords = {
                dev: boot.fleet.devices.register(DeviceCreate(id=dev)).password
                for dev in ("dev-a", "dev-b")
            }
        finally:
            boot.close()
        self.broker = start_broker(
            data_dir, args=("--viewer", "viewer", "--infer-client", "caller:dev-a")
        )
        self.files = BrokerFiles.in_data_dir(data_dir)
        self.settings = HubSettings(
            data_dir=data_dir,
            run_scheduler=False,
            mqtt_host=self.broker.host,
            mqtt_port=self.broker.port,
            mqtt_tls=True,
            topic_root="ep",
            chunk_size=1024,
            fleet_poll_s=0.05,
        )
        self.hub = Hub.open(self.settings)
        self.service: FleetService | None = None

    def start_service(self) -> FleetService:
        self.service = FleetService.from_hub(self.hub)
        self.service.start()
        assert self.service.wait_connected(10), "the hub did not connect over TLS"
        return self.service

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def password(self, account: str) -> str:
        if account in self.passwords:
            return self.passwords[account]
        return account_password(self.files, account)

    def close(self) -> None:
        self.stop_service()
        self.hub.close()


@pytest.fixture
def secure_fleet(
    tmp_path: Path, secure_mosquitto: Callable[..., SecureMosquitto]
) -> Iterator[SecureFleet]:
    fleet = SecureFleet(tmp_path, secure_mosquitto)
    yield fleet
    fleet.close()


def _log_batch(device_id: str, seqs: range) -> bytes:
    records = [
        LogRecord(
            seq=s,
            request_id=f"r{s}",
            model_version=None,
            input_digest="d",
            output=[0.5, 0.5],
            latency_ms=1.0,
            ts=time.time(),
        )
        for s in seqs
    ]
    return LogBatch(device_id=device_id, floor=seqs.start, records=records).dumps()


def _logs_at_hub(hub: Hub, device_id: str) -> int:
    return len(hub.fleet.devices.logs(device_id, limit=10_000))


# -- the rules themselves ----------------------------------------------------------------------
def test_the_acl_directions_cover_the_wire_contract_and_what_each_side_subscribes() -> None:
    assert set(DEVICE_PUBLISHES) | set(DEVICE_READS) == set(TOPIC_KINDS)
    assert not set(DEVICE_PUBLISHES) & set(DEVICE_READS)
    assert set(DEVICE_READS) == set(INBOUND)  # what the agent subscribes, it may read
    assert set(HUB_READS) == set(SUBSCRIBED)  # likewise the hub
    assert set(HUB_PUBLISHES) <= set(DEVICE_READS) and set(HUB_READS) <= set(DEVICE_PUBLISHES)
    assert event_topics("ep") == (job_topic("ep", "+"), alerts_topic("ep"))


# -- 1. a device forging what the hub sends it --------------------------------------------------
def test_a_device_cannot_forge_its_desired_state_acks_chunks_or_will(
    secure_fleet: SecureFleet, peers: Callable[..., Peer], onnx_bytes: bytes
) -> None:
    fleet = secure_fleet
    fleet.start_service()
    version = register_model(fleet.hub, onnx_bytes, tflite=False)
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=version.ref, device="dev-a"))
    inbound = [T.device("dev-a", k) for k in DEVICE_READS]

    dev = peers(fleet.broker, "dev-a", fleet.password("dev-a"))
    dev.subscribe(*inbound)
    wait_until(lambda: dev.got(T.device("dev-a", "desired")), 20, "the hub's desired state")
    real = DesiredState.loads(dev.got(T.device("dev-a", "desired"))[0])
    assert real.model is not None and real.deployment_id is not None

    # Forged with the device's own credentials: a kill switch, an ack above anything, a chunk.
    forged_desired = real.model_copy(update={"params": ServingParams(disabled=True)})
    dev.publish(T.device("dev-a", "desired"), forged_desired.dumps(), retain=True)
    dev.publish(T.device("dev-a", "ack"), Ack(upto=1_000_000).dumps())
    fake = Chunk(real.deployment_id, real.model.sha256, 0, real.model.size, b"x" * 16)
    dev.publish(T.device("dev-a", "chunk"), fake.encode())
    dev.publish(T.device("dev-a", "infer"), b'{"v":1,"request_id":"r","inputs":[]}')

    # Then the genuine ones, caused the way an agent causes them: logs, a fetch.
    dev.publish(T.device("dev-a", "logs"), _log_batch("dev-a", range(1, 4)))
    wait_until(lambda: dev.got(T.device("dev-a", "ack")), 20, "the hub's ack")
    fetch = FetchRequest(
        deployment_id=real.deployment_id, sha256=real.model.sha256, offset=0, length=1024
    )
    dev.publish(T.device("dev-a", "fetch"), fetch.dumps())
    wait_until(lambda: dev.got(T.device("dev-a", "chunk")), 20, "the hub's chunk")

    assert [Ack.loads(m).upto for m in dev.got(T.device("dev-a", "ack"))] == [3]
    chunk = Chunk.decode(dev.got(T.device("dev-a", "chunk"))[0])
    assert chunk.data == onnx_bytes[:1024]
    assert len(dev.got(T.device("dev-a", "desired"))) == 1
    assert dev.got(T.device("dev-a", "infer")) == []

    # Its last will cannot say anything but its status either.
    will = forged_desired.dumps()
    dropped = peers(
        fleet.broker, "dev-a", fleet.password("dev-a"), will=(T.device("dev-a", "desired"), will)
    )
    wait_until(lambda: dev.disconnects, 10, "the first connection taken over")
    dropped.client.loop_stop()
    dropped.client.socket().close()  # gone without a DISCONNECT: the broker sends the will
    wait_until(
        lambda: (
            "dev-a closed its connection" in fleet.broker.log_text()
            or "Client dev-a disconnected" in fleet.broker.log_text()
        ),
        10,
        "the broker to see the connection drop",
    )
    again = peers(fleet.broker, "dev-a", fleet.password("dev-a"))
    again.subscribe(T.device("dev-a", "desired"))
    wait_until(lambda: again.got(T.device("dev-a", "desired")), 10, "the retained desired state")
    retained = DesiredState.loads(again.got(T.device("dev-a", "desired"))[-1])
    assert retained.params.disabled is False and retained == real


def test_each_account_reads_and_writes_only_its_direction(
    secure_fleet: SecureFleet, peers: Callable[..., Peer]
) -> None:
    fleet = secure_fleet
    hub = peers(fleet.broker, HUB_USER, hub_password(fleet.files))
    viewer = peers(fleet.broker, "viewer", fleet.password("viewer"))
    caller = peers(fleet.broker, "caller", fleet.password("caller"))
    a = peers(fleet.broker, "dev-a", fleet.password("dev-a"))
    b = peers(fleet.broker, "dev-b", fleet.password("dev-b"))
    viewer.subscribe("ep/#")
    caller.subscribe("ep/#")
    a.subscribe("ep/#")
    b.subscribe(*[T.device("dev-b", k) for k in DEVICE_READS])
    hub.subscribe("ep/#")

    # dev-a on dev-b's topics, the viewer and the caller on the hub's: all dropped ...
    a.publish(T.device("dev-b", "report"), b"a as b")
    a.publish(T.device("dev-b", "desired"), b"a to b")
    viewer.publish(T.device("dev-b", "ack"), b"viewer")
    caller.publish(T.device("dev-b", "infer"), b"caller to an unlisted device")
    hub.publish(T.device("dev-b", "status"), b"hub as b")  # the hub cannot speak for a device
    hub.publish(T.device("dev-b", "infer"), b"hub")  # nor call one
    # ... then the genuine traffic on the same topics
    b.publish(T.device("dev-b", "status"), b"b online")
    b.publish(T.device("dev-b", "report"), b"b report")
    hub.publish(T.device("dev-b", "ack"), b"hub ack")
    hub.publish(T.device("dev-b", "desired"), b"hub desired")
    caller.publish(T.device("dev-a", "infer"), b"caller to a")
    a.publish(T.device("dev-a", "result"), b"a result")

    wait_until(lambda: hub.got(T.device("dev-b", "report")), 10, "b's report at the hub")
    assert hub.got(T.device("dev-b", "status")) == [b"b online"]
    assert hub.got(T.device("dev-b", "report")) == [b"b report"]
    wait_until(lambda: b.got(T.device("dev-b", "desired")), 10, "the hub's desired at b")
    assert b.got(T.device("dev-b", "desired")) == [b"hub desired"]
    assert b.got(T.device("dev-b", "ack")) == [b"hub ack"]
    assert b.got(T.device("dev-b", "infer")) == []
    wait_until(lambda: caller.got(T.device("dev-a", "result")), 10, "a's result at the caller")
    wait_until(lambda: viewer.got(T.device("dev-b", "report")), 10, "b's report at the viewer")
    wait_until(lambda: a.got(T.device("dev-a", "infer")), 10, "the caller's request at a")
    # dev-a saw its own inbound topics only; the viewer only device → hub monitoring topics
    assert {t for t, _, _ in a.messages} == {T.device("dev-a", "infer")}
    assert a.got(T.device("dev-a", "infer")) == [b"caller to a"]
    seen: set[TopicKind] = {T.parse(t)[1] for t, _, _ in viewer.messages}
    assert seen == {"status", "report"}
    assert {t for t, _, _ in caller.messages} == {T.device("dev-a", "result")}
    assert T.device("dev-a", "result") not in {t for t, _, _ in hub.messages}


# -- 2. client-id takeover -----------------------------------------------------------------------
def test_no_credential_takes_over_the_hubs_or_an_agents_client_id(
    secure_fleet: SecureFleet, peers: Callable[..., Peer]
) -> None:
    fleet = secure_fleet
    service = fleet.start_service()
    agent = peers(fleet.broker, "dev-a", fleet.password("dev-a"), client_id="edgepilot-agent-dev-a")
    agent.subscribe(T.device("dev-a", "ack"))
    for intruder, cid in [
        ("dev-b", fleet.settings.mqtt_client_id),
        ("viewer", "edgepilot-agent-dev-a"),
        ("caller", HUB_USER),
    ]:
        peer = peers(fleet.broker, intruder, fleet.password(intruder), client_id=cid)
        assert peer.connacks == [True]
    log = fleet.broker.log_text()
    for intruder in ("dev-b", "viewer", "caller"):
        assert f" as {intruder} (" in log  # the broker named each client after its account
    assert "already connected" not in log
    # Both are still there: a round trip through each.
    agent.publish(T.device("dev-a", "logs"), _log_batch("dev-a", range(1, 3)))
    wait_until(lambda: agent.got(T.device("dev-a", "ack")), 10, "the hub's ack to the agent")
    assert agent.disconnects == 0 and service.connected
    assert _logs_at_hub(fleet.hub, "dev-a") == 2

    # The hub's session outlives the hub: what arrives while it is away waits at the broker.
    fleet.stop_service()
    agent.publish(T.device("dev-a", "logs"), _log_batch("dev-a", range(3, 6)))
    fleet.start_service()
    wait_until(lambda: _logs_at_hub(fleet.hub, "dev-a") == 5, 20, "the queued batch stored")


def test_the_hubs_publishers_never_share_an_account(
    secure_fleet: SecureFleet, peers: Callable[..., Peer]
) -> None:
    fleet = secure_fleet
    service = fleet.start_service()
    viewer = peers(fleet.broker, "viewer", fleet.password("viewer"))
    viewer.subscribe(alerts_topic("ep"))
    publishers = [MqttPublisher(fleet.settings).start(wait_s=10) for _ in range(3)]
    try:
        assert all(p.connected for p in publishers)
        for i, p in enumerate(publishers):
            p.publish(alerts_topic("ep"), f"alert {i}".encode())
            assert p.flush(10)
        wait_until(lambda: len(viewer.got(alerts_topic("ep"))) == 3, 10, "three alerts")
        assert "already connected" not in fleet.broker.log_text()
        assert all(p.connected for p in publishers) and service.connected
    finally:
        for p in publishers:
            p.stop()


# -- 3. one device's giant message -------------------------------------------------------------
def test_a_64_mib_message_disconnects_its_sender_and_other_devices_logs_still_flow(
    secure_fleet: SecureFleet, peers: Callable[..., Peer]
) -> None:
    fleet = secure_fleet
    fleet.start_service()
    a = peers(fleet.broker, "dev-a", fleet.password("dev-a"))
    a.subscribe(T.device("dev-a", "ack"))
    b = peers(fleet.broker, "dev-b", fleet.password("dev-b"))
    b.client.publish(T.device("dev-b", "logs"), b"x" * (64 * 2**20), qos=1)
    wait_until(lambda: b.disconnects, 30, "the broker to disconnect the sender")
    assert "disconnected due to oversize packet" in fleet.broker.log_text()
    a.publish(T.device("dev-a", "logs"), _log_batch("dev-a", range(1, 251)))
    wait_until(lambda: a.got(T.device("dev-a", "ack")), 10, "the ack of dev-a's 250 logs")
    assert _logs_at_hub(fleet.hub, "dev-a") == 250
    assert _logs_at_hub(fleet.hub, "dev-b") == 0


def test_broker_config_refuses_a_packet_limit_smaller_than_a_model_chunk(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEPILOT_DATA_DIR": str(tmp_path / "hub"), "COLUMNS": "200"}
    small = run_cli(["hub", "broker-config", "--max-packet-size", "100000"], env)
    assert small.returncode == 2 and "too small for the hub's model chunks" in small.stderr
    ok = run_cli(["hub", "broker-config", "--max-packet-size", "1000000"], env)
    assert ok.returncode == 0, ok.stderr
    assert "max_packet_size 1000000\n" in ok.stdout
    assert "use_username_as_clientid true" in ok.stdout
    default = run_cli(["hub", "broker-config"], env)
    assert f"max_packet_size {8 * 2**20}\n" in default.stdout
    assert "listener 1883 0.0.0.0" in default.stdout and "cafile" not in default.stdout


def test_a_status_will_still_reaches_the_hub(
    secure_fleet: SecureFleet, peers: Callable[..., Peer]
) -> None:
    """The ACL leaves the agent's own last will (offline status, retained) working."""
    fleet = secure_fleet
    fleet.start_service()
    offline = DeviceStatus(device_id="dev-a", state="offline").dumps()
    dev = peers(
        fleet.broker, "dev-a", fleet.password("dev-a"), will=(T.device("dev-a", "status"), offline)
    )
    dev.publish(
        T.device("dev-a", "status"), DeviceStatus(device_id="dev-a", state="online").dumps()
    )
    wait_until(lambda: fleet.hub.fleet.devices.get("dev-a").status == "online", 10, "online")
    dev.client.loop_stop()
    dev.client.socket().close()
    wait_until(lambda: fleet.hub.fleet.devices.get("dev-a").status == "offline", 10, "the will")


def test_accounts_are_kept_removed_and_never_clash_with_devices(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEPILOT_DATA_DIR": str(tmp_path / "hub"), "COLUMNS": "200"}
    assert run_cli(["devices", "register", "cam-1"], env).returncode == 0
    clash = run_cli(["hub", "broker-config", "--viewer", "cam-1"], env)
    assert clash.returncode == 2 and "is a device id" in clash.stderr
    reserved = run_cli(["hub", "broker-config", "--infer-client", HUB_USER], env)
    assert reserved.returncode == 2 and "invalid" in reserved.stderr
    added = run_cli(["hub", "broker-config", "--viewer", "ops", "--infer-client", "app:cam-1"], env)
    assert added.returncode == 0, added.stderr
    files = BrokerFiles.in_data_dir(tmp_path / "hub")
    assert oct(files.account_secret("ops").stat().st_mode & 0o777) == "0o600"
    # kept by every later registration, and a device cannot take an account's name
    assert run_cli(["devices", "register", "cam-2"], env).returncode == 0
    taken = run_cli(["devices", "register", "ops"], env)
    assert taken.returncode == 2 and "names of broker accounts" in taken.stderr
    users = [line.split(":")[0] for line in files.password_file.read_text().splitlines()]
    assert {"ops", "app", "cam-1", "cam-2", HUB_USER} <= set(users)
    acl = files.acl_file.read_text()
    assert "user app\ntopic write ep/dev/cam-1/infer\ntopic read ep/dev/cam-1/result\n" in acl
    removed = run_cli(["hub", "broker-config", "--remove-account", "ops"], env)
    assert removed.returncode == 0, removed.stderr
    assert "ops:" not in files.password_file.read_text()
    assert not files.account_secret("ops").exists()
