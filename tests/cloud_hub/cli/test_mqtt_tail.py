"""`edgepilot mqtt tail`: the fleet's traffic decoded with the wire contract, against real
Mosquitto brokers (an open one, and one configured by `broker-config` with a viewer account)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import HUB_USER, BrokerFiles, hub_password
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.fleet.traffic import MESSAGE_CLASSES, decode
from cloud_hub.hub import Hub
from edge_agent.core.wire import (
    TOPIC_KINDS,
    Ack,
    Chunk,
    DesiredState,
    DeviceStatus,
    FetchRequest,
    InferRequest,
    InferResult,
    LogBatch,
    LogRecord,
    Message,
    Report,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    VariantReport,
    VariantTiming,
)
from tests.conftest import BIN, REPO, SecureMosquitto, free_port, run_cli
from tests.waiting import wait_until

ROOT = "ep"


def log_batch(device: str) -> LogBatch:
    records = [
        LogRecord(
            seq=seq,
            request_id=f"req-{seq}",
            model_version=3,
            input_digest="ab" * 8,
            output={"task": "classification", "label": "cat", "score": 0.91},
            latency_ms=2.5,
            ts=1_700_000_000.0 + seq,
        )
        for seq in (4, 5, 6)
    ]
    return LogBatch(device_id=device, epoch="e0a1", floor=4, records=records)


def telemetry_batch(device: str) -> TelemetryBatch:
    record = TelemetryRecord(
        seq=7,
        ts=1_700_000_000.0,
        cpu_percent=12.5,
        memory_rss_mb=80.0,
        temperature_c=51.0,
        inferences={"3": 40},
        outbox_pending=2,
    )
    return TelemetryBatch(device_id=device, epoch="e0a1", floor=7, records=[record])


def chunk() -> Chunk:
    data = b"\x00\x01model-bytes" * 10
    return Chunk(
        deployment_id=9,
        sha256=hashlib.sha256(data).hexdigest(),
        offset=0,
        total=len(data),
        data=data,
    )


def messages(device: str) -> dict[str, Message]:
    """A real wire message of every JSON kind."""
    return {
        "status": DeviceStatus(device_id=device, state="online", agent_version="1.2"),
        "desired": DesiredState(device_id=device, deployment_id=9),
        "fetch": FetchRequest(deployment_id=9, sha256="ff" * 32, offset=0, length=100),
        "report": Report(device_id=device, deployment_id=9, version_id=3, state="active"),
        "variants": VariantReport(
            device_id=device,
            deployment_id=9,
            version_id=3,
            timings=[
                VariantTiming(
                    sha256="ab" * 32,
                    format="onnx",
                    precision="int8",
                    threads=2,
                    p50_ms=0.5,
                    p99_ms=0.9,
                    runs=40,
                )
            ],
            chosen_sha256="ab" * 32,
            chosen_threads=2,
        ),
        "logs": log_batch(device),
        "telemetry": telemetry_batch(device),
        "ack": Ack(upto=6, epoch="e0a1"),
        "infer": InferRequest(request_id="r1", inputs=[[1.0, 2.0]]),
        "result": InferResult(request_id="r1", ok=True, model_version=3),
    }


# -- the decoding module ----------------------------------------------------------------------
def test_every_topic_kind_is_decoded_with_its_wire_class() -> None:
    topics = Topics(ROOT)
    docs = messages("cam-1")
    assert set(docs) | {"chunk"} == set(TOPIC_KINDS) == set(MESSAGE_CLASSES) | {"chunk"}
    for kind, msg in docs.items():
        got = decode(topics.device("cam-1", kind), msg.dumps(), topic_root=ROOT)  # type: ignore[arg-type]
        assert (got.kind, got.device, got.ok) == (kind, "cam-1", True)
        assert got.document == msg.model_dump(mode="json")
    shown = decode(topics.device("cam-1", "ack"), docs["ack"].dumps(), topic_root=ROOT)
    assert shown.text == 'Ack {"v":1,"upto":6,"epoch":"e0a1"}'


def test_batches_are_pretty_printed_and_chunks_summarised() -> None:
    topics = Topics(ROOT)
    logs = decode(topics.device("cam-1", "logs"), log_batch("cam-1").dumps(), topic_root=ROOT)
    lines = logs.text.splitlines()
    assert lines[0] == "LogBatch 3 records, seq 4..6, epoch e0a1, floor 4"
    assert lines[1] == "  #4 req-4 v3 2.5 ms api: classification label=cat score=0.91"
    assert len(lines) == 4

    telemetry = telemetry_batch("cam-1").dumps()
    tele = decode(topics.device("cam-1", "telemetry"), telemetry, topic_root=ROOT)
    assert tele.text.splitlines() == [
        "TelemetryBatch 1 record, seq 7..7, epoch e0a1, floor 7",
        "  #7 cpu 12.5%, rss 80.0 MB, temp 51.0 °C, backlog 2, inferences v3=40",
    ]

    many = LogBatch(
        device_id="cam-1",
        floor=1,
        records=[
            r.model_copy(update={"seq": i})
            for i in range(1, 13)
            for r in [log_batch("x").records[0]]
        ],
    )
    text = decode(topics.device("cam-1", "logs"), many.dumps(), topic_root=ROOT).text
    assert text.splitlines()[0] == "LogBatch 12 records, seq 1..12, epoch '', floor 1"
    assert text.splitlines()[-1] == "  … 7 more"

    c = chunk()
    got = decode(topics.device("cam-1", "chunk"), c.encode(), topic_root=ROOT)
    assert got.ok and got.kind == "chunk"
    assert got.text == f"Chunk deployment 9 sha256 {c.sha256[:12]}… 0..130/130 (130 bytes)"
    assert got.document == {
        "deployment_id": 9,
        "sha256": c.sha256,
        "offset": 0,
        "total": 130,
        "bytes": 130,
    }
    assert "model-bytes" not in json.dumps(got.document)


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("status", b"not json", "invalid DeviceStatus: "),
        ("logs", b'{"v":1,"device_id":"cam-1","floor":0,"records":[]}', "invalid LogBatch: "),
        ("telemetry", b"\xff\xfe\x00", "invalid TelemetryBatch: "),
        ("ack", b'{"v":2,"upto":1}', "invalid Ack: "),
        ("chunk", b"XXXX\x00\x00\x00\x02{}", "invalid Chunk: not a model chunk (bad magic)"),
        ("chunk", chunk().encode()[:-1] + b"!", "invalid Chunk: corrupted chunk at offset 0"),
        ("desired", b"", "invalid DesiredState: "),
    ],
)
def test_a_payload_off_the_contract_is_named_invalid_with_its_size(
    kind: Any, payload: bytes, reason: str
) -> None:
    got = decode(Topics(ROOT).device("cam-1", kind), payload, topic_root=ROOT)
    assert not got.ok and got.kind == kind and got.device == "cam-1"
    assert got.text.startswith(reason), got.text
    assert got.text.endswith(f"({len(payload)} bytes)")
    assert "\n" not in got.text
    assert got.document["size"] == len(payload)


def test_unknown_topics_are_shown_raw_truncated_and_escaped() -> None:
    got = decode("ep/dev/cam-1/firmware", b"line\n\x00\xffok", topic_root=ROOT)
    assert (got.kind, got.device, got.ok) == ("unknown", None, True)
    assert got.text == "raw (9 bytes): line\\n\\x00\\xffok"
    big = decode("other/thing", b"a" * 1000, topic_root=ROOT)
    assert big.text == f"raw (1000 bytes): {'a' * 200}…"
    assert big.document == {"raw": "a" * 200 + "…", "size": 1000, "truncated": True}
    # another root's device topic is not this fleet's
    assert decode("xx/dev/cam-1/status", b"{}", topic_root=ROOT).kind == "unknown"


def test_alerts_are_shown_as_json() -> None:
    got = decode("ep/alerts", b'{"rule":"offline","device":"cam-1"}', topic_root=ROOT)
    assert got.kind == "alerts" and got.ok
    assert got.text == 'alert {"rule":"offline","device":"cam-1"}'
    assert not decode("ep/alerts", b"{nope", topic_root=ROOT).ok


# -- the CLI against real brokers -------------------------------------------------------------
class Tail:
    """`edgepilot mqtt tail ...` as a running process, its output read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "edgepilot"), "mqtt", "tail", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_subscribed(self) -> str:
        def ready() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"tail exited {self.proc.returncode}: {self.err}")
            return next((line for line in self.err if line.startswith("subscribed")), None)

        return str(wait_until(ready, timeout=30, what="the tail's subscription"))

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Client:
    """A paho client; `got` collects what its subscriptions receive."""

    def __init__(
        self, address: tuple[str, int], username: str | None = None, password: str | None = None
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username or f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.got: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(*address)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_tail_on_an_open_broker_prints_decoded_traffic(
    mosquitto: tuple[str, int], cli_env: dict[str, str]
) -> None:
    root = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(root)
    host, port = mosquitto
    args = ["--broker", f"{host}:{port}", "--anonymous", "--topic-root", root, "--count", "6"]
    tail = Tail(args, cli_env)
    pub = Client(mosquitto)
    try:
        assert "subscribed to" in tail.wait_subscribed()
        c = chunk()
        pub.publish(topics.device("cam-1", "logs"), log_batch("cam-1").dumps())
        pub.publish(topics.device("cam-1", "telemetry"), telemetry_batch("cam-1").dumps())
        pub.publish(topics.device("cam-1", "chunk"), c.encode())
        pub.publish(topics.device("cam-1", "status"), messages("cam-1")["status"].dumps())
        pub.publish(topics.device("cam-1", "report"), b"{broken")
        pub.publish(f"{root}/alerts", b'{"rule":"offline"}')
        assert tail.finish() == 0, tail.err
    finally:
        tail.kill()
        pub.close()
    text = "\n".join(tail.out)
    assert f"{root}/dev/cam-1/logs  LogBatch 3 records, seq 4..6, epoch e0a1, floor 4" in text
    assert "  #5 req-5 v3 2.5 ms api: classification label=cat score=0.91" in text
    assert f"{root}/dev/cam-1/telemetry  TelemetryBatch 1 record, seq 7..7" in text
    assert f"Chunk deployment 9 sha256 {c.sha256[:12]}… 0..130/130 (130 bytes)" in text
    assert f'{root}/dev/cam-1/status  DeviceStatus {{"v":1,"device_id":"cam-1"' in text
    assert f"{root}/dev/cam-1/report  invalid Report: " in text
    assert "(7 bytes)" in text
    assert f'{root}/alerts  alert {{"rule":"offline"}}' in text


def test_tail_json_lines_and_retained_messages(
    mosquitto: tuple[str, int], cli_env: dict[str, str]
) -> None:
    root = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(root)
    host, port = mosquitto
    pub = Client(mosquitto)
    status = messages("cam-2")["status"]
    info = pub.client.publish(topics.device("cam-2", "status"), status.dumps(), qos=1, retain=True)
    info.wait_for_publish(10)
    base = ["--broker", f"{host}:{port}", "--anonymous", "--topic-root", root, "--json"]
    try:
        # retained: the device's status comes first, marked
        seen = Tail([*base, "--count", "1"], cli_env)
        assert seen.finish() == 0, seen.err
        doc = json.loads(seen.out[0])
        assert doc["retained"] is True and doc["kind"] == "status"
        assert doc["decoded"] == status.model_dump(mode="json")

        tail = Tail([*base, "--no-retained", "--count", "2"], cli_env)
        try:
            tail.wait_subscribed()
            pub.publish(topics.device("cam-2", "chunk"), chunk().encode())
            pub.publish(f"{root}/dev/cam-2/firmware", b"\x00\xff")
            assert tail.finish() == 0, tail.err
        finally:
            tail.kill()
    finally:
        pub.client.publish(topics.device("cam-2", "status"), b"", retain=True).wait_for_publish(10)
        pub.close()
    docs = [json.loads(line) for line in tail.out]
    assert [d["kind"] for d in docs] == ["chunk", "unknown"]
    assert docs[0]["device"] == "cam-2" and docs[0]["decoded"]["bytes"] == 130
    assert set(docs[0]) >= {"ts", "topic", "kind", "device", "decoded"}
    assert docs[1]["decoded"] == {"raw": "\\x00\\xff", "size": 2, "truncated": False}


def test_tail_stops_when_idle(mosquitto: tuple[str, int], cli_env: dict[str, str]) -> None:
    host, port = mosquitto
    root = f"t{uuid.uuid4().hex[:8]}"
    args = ["--broker", f"{host}:{port}", "--anonymous", "--topic-root", root, "--timeout", "0.5"]
    done = run_cli(["mqtt", "tail", *args], cli_env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_an_unreachable_broker_is_named(cli_env: dict[str, str]) -> None:
    port = free_port()
    done = run_cli(
        ["mqtt", "tail", "--broker", f"127.0.0.1:{port}", "--anonymous"], cli_env, timeout=30
    )
    assert done.returncode == 2
    assert f"127.0.0.1:{port}" in done.stderr and "cannot reach" in done.stderr


def test_without_a_viewer_account_it_says_how_to_make_one(cli_env: dict[str, str]) -> None:
    done = run_cli(["mqtt", "tail", "--broker", "127.0.0.1:1883"], cli_env, timeout=30)
    assert done.returncode == 2
    assert "edgepilot hub broker-config --viewer NAME" in " ".join(done.stderr.split())
    refused = run_cli(["mqtt", "tail", "--username", HUB_USER], cli_env, timeout=30)
    assert refused.returncode == 2
    assert "would disconnect the hub" in " ".join(refused.stderr.split())


def fleet_with_viewer(data_dir: Path, secure_mosquitto: Any) -> tuple[str, SecureMosquitto]:
    """Device cam-9 registered at a hub of `data_dir`, and its broker (configured by
    broker-config, no TLS) with a viewer account `watcher`: (cam-9's password, the broker)."""
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        device_password = hub.fleet.devices.register(DeviceCreate(id="cam-9")).password
    finally:
        hub.close()
    return device_password, secure_mosquitto(data_dir, tls=False, args=("--viewer", "watcher"))


def test_a_viewer_reads_the_fleet_and_cannot_publish(
    tmp_path: Path, secure_mosquitto: Any, cli_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "hub"
    device_password, broker = fleet_with_viewer(data_dir, secure_mosquitto)
    env = {**cli_env, "EDGEPILOT_DATA_DIR": str(data_dir)}
    where = f"{broker.host}:{broker.port}"
    topics = Topics(ROOT)

    tail = Tail(["--broker", where, "--no-tls", "--count", "2"], env)
    device = Client(broker.address, "cam-9", device_password)
    try:
        assert "as watcher" in tail.wait_subscribed()
        device.publish(topics.device("cam-9", "telemetry"), telemetry_batch("cam-9").dumps())
        device.publish(topics.device("cam-9", "status"), messages("cam-9")["status"].dumps())
        assert tail.finish() == 0, tail.err
    finally:
        tail.kill()
    text = "\n".join(tail.out)
    assert "ep/dev/cam-9/telemetry  TelemetryBatch 1 record, seq 7..7" in text
    assert "ep/dev/cam-9/status  DeviceStatus" in text

    # the viewer's publish never reaches a subscriber; the device's, after it, does
    hub_client = Client(broker.address, HUB_USER, hub_password(BrokerFiles.in_data_dir(data_dir)))
    password = (data_dir / "mosquitto" / "account-watcher.password").read_text().strip()
    viewer = Client(broker.address, "watcher", password)
    try:
        hub_client.subscribe(topics.all_devices("status"))
        forged = DeviceStatus(device_id="cam-9", state="offline", agent_version="forged")
        viewer.publish(topics.device("cam-9", "status"), forged.dumps())
        real = DeviceStatus(device_id="cam-9", state="online", agent_version="real")
        device.publish(topics.device("cam-9", "status"), real.dumps())
        wait_until(lambda: any(b"real" in p for _, p in hub_client.got), what="the status")
        assert not any(b"forged" in p for _, p in hub_client.got)
    finally:
        viewer.close()
        hub_client.close()
        device.close()

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-it\n")
    refused = run_cli(
        ["mqtt", "tail", "--broker", where, "--username", "watcher", "--password-file", str(wrong)],
        env,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "the broker at" in refused.stderr and "refused watcher" in refused.stderr
    assert "not-it" not in refused.stderr


def test_tls_checks_the_broker_with_the_fleet_ca(
    tmp_path: Path, secure_mosquitto: Any, cli_env: dict[str, str]
) -> None:
    from edge_agent.core.mqtt import tls_context

    data_dir = tmp_path / "hub"
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        device_password = hub.fleet.devices.register(DeviceCreate(id="cam-8")).password
    finally:
        hub.close()
    broker: SecureMosquitto = secure_mosquitto(data_dir, tls=True, args=("--viewer", "watcher"))
    env = {**cli_env, "EDGEPILOT_DATA_DIR": str(data_dir)}
    where = f"{broker.host}:{broker.port}"

    plain = run_cli(["mqtt", "tail", "--broker", where, "--no-tls"], env, timeout=60)
    assert plain.returncode == 2, plain.stderr
    assert where in plain.stderr and "--tls" in plain.stderr

    tail = Tail(["--broker", where, "--tls", "--count", "1"], env)  # the CA: the data dir's
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-8", protocol=mqtt.MQTTv311)
    device.username_pw_set("cam-8", device_password)
    device.tls_set_context(tls_context(broker.ca_file))
    try:
        tail.wait_subscribed()
        device.connect(*broker.address)
        device.loop_start()
        status = DeviceStatus(device_id="cam-8", state="online").dumps()
        device.publish(Topics(ROOT).device("cam-8", "status"), status, qos=1).wait_for_publish(10)
        assert tail.finish() == 0, tail.err
    finally:
        tail.kill()
        device.disconnect()
        device.loop_stop()
    assert "ep/dev/cam-8/status  DeviceStatus" in tail.out[0]


MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def test_mosquitto_sub_with_the_viewer_account_prints_telemetry_and_its_publish_is_refused(
    tmp_path: Path, secure_mosquitto: Any
) -> None:
    """What README tells an operator to run: Mosquitto's own clients (Debian's
    mosquitto-clients), logged in as the viewer account broker-config made."""
    data_dir = tmp_path / "hub"
    device_password, broker = fleet_with_viewer(data_dir, secure_mosquitto)
    password = (data_dir / "mosquitto" / "account-watcher.password").read_text().strip()
    login = ["-h", broker.host, "-p", str(broker.port), "-u", "watcher", "-P", password]
    sub = subprocess.Popen(
        [MOSQUITTO_SUB, *login, "-v", "-t", "ep/#", "-C", "1", "-W", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    device = Client(broker.address, "cam-9", device_password)
    try:
        batch = telemetry_batch("cam-9").dumps()

        def printed() -> bool:  # sent until mosquitto_sub, subscribed by then, prints one
            device.publish(topics_of("cam-9", "telemetry"), batch)
            return sub.poll() is not None

        wait_until(printed, 30, "mosquitto_sub to print the device's telemetry")
        out, err = sub.communicate(timeout=30)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    topic, _, payload = out.strip().partition(" ")
    assert topic == "ep/dev/cam-9/telemetry"
    assert json.loads(payload)["records"][0]["seq"] == 7  # plain JSON, the wire contract's

    # its publish: MQTT 5 says "not authorized"; nothing reaches the hub's subscription
    hub_client = Client(broker.address, HUB_USER, hub_password(BrokerFiles.in_data_dir(data_dir)))
    try:
        hub_client.subscribe(topics_of("+", "status"))
        forged = DeviceStatus(device_id="cam-9", state="offline", agent_version="forged").dumps()
        pub = subprocess.run(
            [MOSQUITTO_PUB, *login, "-V", "mqttv5", "-q", "1", "-t", topics_of("cam-9", "status")]
            + ["-m", forged.decode()],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "not authorized" in (pub.stdout + pub.stderr).lower(), pub
        real = DeviceStatus(device_id="cam-9", state="online", agent_version="real").dumps()
        device.publish(topics_of("cam-9", "status"), real)
        wait_until(lambda: any(b"real" in p for _, p in hub_client.got), what="the status")
        assert not any(b"forged" in p for _, p in hub_client.got)
    finally:
        hub_client.close()
        device.close()
    assert password not in out + err + pub.stdout + pub.stderr


def topics_of(device: str, kind: Any) -> str:
    return Topics(ROOT).device(device, kind)
