"""Logs on a shared subscription: the hub (`fleet_shared_logs`) and an `edgepilot hub ingest`
process take turns on a real Mosquitto configured by `hub broker-config`; every batch is stored
once and acknowledged, and both consumers stored some."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import acl_rules, ingest_users
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from edge_agent.core.wire import Ack, LogBatch, LogRecord, Topics
from tests.conftest import BIN, SecureMosquitto
from tests.waiting import wait_until

ROOT = "ep"


class LoggedInDevice:
    """A device on its own broker account: publishes log batches, keeps the acks."""

    def __init__(self, address: tuple[str, int], device_id: str, password: str) -> None:
        self.id = device_id
        self.topics = Topics(ROOT)
        self.acks: list[int] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, password)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(*address)
        self.client.loop_start()
        self.client.subscribe(self.topics.device(device_id, "ack"), 1)
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.acks.append(Ack.loads(msg.payload).upto)

    def acked(self) -> int:
        with self._lock:
            return max(self.acks, default=0)

    def send(self, seq: int) -> None:
        record = LogRecord(
            seq=seq,
            request_id=f"r{seq}",
            model_version=1,
            input_digest=f"{seq:016x}",
            output={"task": "classification", "label": "a", "score": 0.9},
            latency_ms=1.0,
            ts=1_700_000_000.0 + seq,
        )
        batch = LogBatch(device_id=self.id, epoch="e0", floor=seq, records=[record])
        topic = self.topics.device(self.id, "logs")
        self.client.publish(topic, batch.dumps(), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_hub_and_an_ingest_process_share_the_logs_and_store_each_batch_once(
    tmp_path: Path, secure_mosquitto: Any, cli_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "hub"
    first = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        password = first.fleet.devices.register(DeviceCreate(id="cam-1")).password
    finally:
        first.close()
    broker: SecureMosquitto = secure_mosquitto(data_dir, tls=False)
    settings = HubSettings(
        data_dir=data_dir,
        run_scheduler=False,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        fleet_shared_logs=True,
        fleet_poll_s=0.1,
    )
    hub = Hub.open(settings)
    service = FleetService.from_hub(hub)
    service.start()
    assert service.wait_connected(10)
    env = {**cli_env, "EDGEPILOT_DATA_DIR": str(data_dir)}
    consumer = subprocess.Popen(
        [str(BIN / "edgepilot"), "hub", "ingest", "--mqtt", f"{broker.host}:{broker.port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    device = LoggedInDevice(broker.address, "cam-1", password)
    try:
        assert consumer.stderr is not None
        banner = consumer.stderr.readline()
        assert "ingest consumer edgepilot-hub-ingest-0" in banner, banner
        assert f"$share/edgepilot-ingest/{ROOT}/dev/+/logs" in banner
        # the consumer's subscription is in place once a batch reaches it: send until then
        seq = 0

        def both_took_some() -> bool:
            nonlocal seq
            seq += 1
            device.send(seq)
            return seq >= 40 and service.stats().get("records", 0) < seq

        wait_until(both_took_some, 60, "batches to reach the consumer")
        wait_until(lambda: device.acked() >= seq, 30, f"every batch up to {seq} acked")
    finally:
        device.close()
        consumer.send_signal(signal.SIGTERM)
        _, err = consumer.communicate(timeout=60)
        service.stop()
    rows = hub.db.conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM inference_logs "
        "WHERE device_id = 'cam-1'"
    ).fetchone()
    hub.close()
    assert tuple(rows) == (seq, seq, 1, seq)  # each batch stored once, none lost
    at_hub = service.stats()["records"]
    at_consumer = int(err.split("stored ")[1].split()[0])
    assert at_hub > 0 and at_consumer > 0, (at_hub, err)  # both took turns
    assert at_hub + at_consumer == seq


def test_an_ingest_account_reads_only_logs_and_writes_only_acks() -> None:
    rules = acl_rules([], [], topic_root=ROOT)
    for user in ingest_users():
        assert {(g.access, g.topic) for g in rules[user]} == {
            ("read", f"{ROOT}/dev/+/logs"),
            ("write", f"{ROOT}/dev/+/ack"),
        }
