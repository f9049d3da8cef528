"""The hub's MQTT service against a real Mosquitto, driven by test devices that speak the wire
contract: desired state, chunked model transfer, reports and rollouts, logs, telemetry, acks."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.registry.schemas import Version
from edge_agent.core.wire import (
    DesiredState,
    DeviceStatus,
    FetchRequest,
    LogBatch,
    LogRecord,
    Report,
    ServingParams,
    TelemetryBatch,
    TelemetryRecord,
)
from edge_agent.signing import VerificationError, verify_model
from tests.cloud_hub.conftest import Device, register_model, unique
from tests.conftest import Mosquitto
from tests.waiting import wait_until

MakeDevice = Callable[[str], Device]


def _register(hub: Hub, *ids: str, **kw: object) -> None:
    for device_id in ids:
        hub.fleet.devices.register(DeviceCreate(id=device_id, **kw))  # type: ignore[arg-type]


def _state(hub: Hub, deployment_id: int) -> dict[str, str]:
    return {d.device_id: d.state for d in hub.fleet.deployments.get(deployment_id).devices}


def _report(dev: Device, desired: DesiredState, state: str, reason: str | None = None) -> None:
    assert desired.model is not None
    dev.send(
        "report",
        Report(
            device_id=dev.id,
            deployment_id=desired.deployment_id,
            version_id=desired.model.version_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,
        ),
    )


@pytest.fixture
def version(fleet_hub: Hub, onnx_bytes: bytes) -> Version:
    return register_model(fleet_hub, onnx_bytes)


def test_desired_state_is_retained_signed_and_fetched_in_chunks(
    fleet_hub: Hub,
    service: FleetService,
    version: Version,
    onnx_bytes: bytes,
    make_device: MakeDevice,
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id, runtimes=["onnxruntime"])
    dep = fleet_hub.fleet.deployments.create(
        DeploymentCreate(
            version=version.ref, device=dev_id, threads=2, params=ServingParams(min_score=0.6)
        )
    )
    wait_until(lambda: fleet_hub.fleet.devices.get(dev_id).desired_deployment_id == dep.id)
    dev = make_device(dev_id)  # subscribes after the publication: it gets the retained one
    desired = dev.desired()
    assert desired.deployment_id == dep.id and desired.threads == 2
    assert desired.params.min_score == 0.6 and not desired.params.disabled
    model = desired.model
    assert model is not None and model.format == "onnx" and model.precision == "fp32"
    assert model.labels == ["setosa", "versicolor", "virginica"]
    assert model.preprocessing == {"kind": "tabular"} and model.ref == version.ref
    assert model.size == len(onnx_bytes) > 3 * 1024  # several 1 KiB chunks

    data = dev.fetch(desired, window=2500)  # windows that are not multiples of the chunk size
    assert data == onnx_bytes and hashlib.sha256(data).hexdigest() == model.sha256
    verify_model(model, data, fleet_hub.fleet.signer.public_key_b64)
    with pytest.raises(VerificationError, match="bad signature"):
        verify_model(
            model.model_copy(update={"version_id": 999}),
            data,
            fleet_hub.fleet.signer.public_key_b64,
        )
    # a resumed transfer asks again from its last good offset
    tail = dev.fetch(desired, window=100_000, start=1000)
    assert tail == onnx_bytes[1000:]


def test_fetch_of_a_foreign_artifact_is_refused(
    fleet_hub: Hub, service: FleetService, version: Version, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id, runtimes=["onnxruntime"])
    fleet_hub.fleet.deployments.create(DeploymentCreate(version=version.ref, device=dev_id))
    dev = make_device(dev_id)
    desired = dev.desired()
    foreign = next(a for a in version.artifacts if a.format == "tflite")
    dev.send(
        "fetch",
        FetchRequest(
            deployment_id=desired.deployment_id or 0, sha256=foreign.sha256, offset=0, length=10
        ),
    )
    wait_until(lambda: service.stats().get("rejected", 0) >= 1, what="the refusal")
    device = fleet_hub.fleet.devices.get(dev_id)
    assert device.last_reason and "not this device's desired artifact" in device.last_reason
    assert dev.messages("chunk") == []


def _logs(dev_id: str, seqs: list[int], floor: int = 1) -> LogBatch:
    return LogBatch(
        device_id=dev_id,
        floor=floor,
        records=[
            LogRecord(
                seq=s,
                request_id=f"req-{s}",
                model_version=1,
                input_digest="abc",
                output={"label": "setosa", "score": 0.9},
                latency_ms=0.5,
                ts=time.time(),
            )
            for s in seqs
        ],
    )


def test_logs_and_telemetry_stored_once_and_acked_contiguously(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    dev.send("logs", _logs(dev_id, [3, 4]))  # out of order: 1 and 2 come later
    wait_until(lambda: service.stats().get("acks", 0) >= 1)
    assert dev.acked() == 0
    dev.send("logs", _logs(dev_id, [1, 2]))
    dev.wait_ack(4)
    dev.send("logs", _logs(dev_id, [1, 2]))  # sent twice (the agent missed the ack)
    dev.send("telemetry", TelemetryBatch(device_id=dev_id, floor=1, records=[
        TelemetryRecord(seq=5, ts=time.time(), cpu_percent=12.5)
    ]))  # fmt: skip
    dev.wait_ack(5)
    # the agent dropped 6-8 under its overflow policy: its floor says so
    dev.send("logs", _logs(dev_id, [9, 10], floor=9))
    dev.wait_ack(10)
    device = fleet_hub.fleet.devices.get(dev_id)
    assert device.logs_stored == 6 and device.telemetry_stored == 1 and device.acked_upto == 10
    logs = fleet_hub.fleet.devices.logs(dev_id, limit=3)
    assert [r.seq for r in logs] == [10, 9, 4]
    assert logs[0].output == {"label": "setosa", "score": 0.9}


def test_ten_thousand_buffered_records_arrive_in_batches(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    started = time.monotonic()
    for first in range(1, 10_001, 500):  # as an agent drains its outbox after a partition
        seqs = list(range(first, first + 500))
        dev.client.publish(dev.topic("logs"), _logs(dev_id, seqs).dumps(), qos=1)
    dev.wait_ack(10_000, timeout=60)
    assert fleet_hub.fleet.devices.get(dev_id).logs_stored == 10_000
    assert time.monotonic() - started < 30


def test_malformed_and_unknown_messages_are_counted_and_survived(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    dev.send("logs", b"{not json")
    dev.send("report", b'{"v": 1, "device_id": "x"}')
    dev.send("fetch", b"\x00\x01binary")
    wait_until(lambda: service.stats().get("malformed", 0) >= 3, what="3 malformed")
    device = fleet_hub.fleet.devices.get(dev_id)
    assert (
        device.rejected == 3 and device.last_reason and "invalid FetchRequest" in device.last_reason
    )
    other = unique("ghost")
    stranger = make_device(other)  # not registered
    stranger.send("logs", _logs(other, [1]))
    wait_until(lambda: service.stats().get("unknown_device", 0) >= 1, what="unknown device")
    # a message naming another device on this device's topic is refused
    dev.send("logs", _logs("someone-else", [1]))
    wait_until(lambda: service.stats().get("rejected", 0) >= 1)
    # the client thread is alive and well
    dev.send("logs", _logs(dev_id, [1]))
    dev.wait_ack(1)


def test_status_and_last_will(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    dev.send(
        "status",
        DeviceStatus(
            device_id=dev_id, state="online", agent_version="0.1.0", runtimes=["onnxruntime"]
        ),
    )
    wait_until(lambda: fleet_hub.fleet.devices.get(dev_id).status == "online", what="online")
    device = fleet_hub.fleet.devices.get(dev_id)
    assert device.agent_version == "0.1.0" and device.reported_runtimes == ["onnxruntime"]
    assert device.last_seen is not None
    dev.kill()  # no DISCONNECT: the broker publishes the last will
    wait_until(lambda: fleet_hub.fleet.devices.get(dev_id).status == "offline", what="offline")


def test_all_at_once_rollout_completes(
    fleet_hub: Hub, service: FleetService, version: Version, make_device: MakeDevice
) -> None:
    tag = unique("tag")
    a, b = unique("a"), unique("b")
    _register(fleet_hub, a, runtimes=["onnxruntime"], tags=[tag])
    _register(fleet_hub, b, runtimes=["litert"], tags=[tag])
    devs = {d: make_device(d) for d in (a, b)}
    dep = fleet_hub.fleet.deployments.create(DeploymentCreate(version=version.ref, tag=tag))
    desired = {d: dev.desired() for d, dev in devs.items()}
    assert desired[b].model is not None and desired[b].model.format == "tflite"
    assert desired[b].model.precision == "int8"
    _report(devs[a], desired[a], "transferring")
    wait_until(lambda: _state(fleet_hub, dep.id)[a] == "transferring")
    for d, dev in devs.items():
        _report(dev, desired[d], "active")
    wait_until(lambda: fleet_hub.fleet.deployments.get(dep.id).status == "completed")
    assert fleet_hub.fleet.devices.get(a).active_version_id == version.id


def test_failing_canary_halts_and_the_rest_never_receive_it(
    fleet_hub: Hub, service: FleetService, version: Version, make_device: MakeDevice
) -> None:
    tag = unique("tag")
    ids = sorted(unique(f"n{i}") for i in range(3))
    for d in ids:
        _register(fleet_hub, d, tags=[tag])
    devs = {d: make_device(d) for d in ids}
    dep = fleet_hub.fleet.deployments.create(
        DeploymentCreate(
            version=version.ref, tag=tag, strategy="canary", canary_count=1, failure_threshold=0.5
        )
    )
    canary = next(d.device_id for d in dep.devices if d.phase == "canary")
    desired = devs[canary].desired()
    _report(devs[canary], desired, "failed", "onnxruntime: invalid model")
    wait_until(lambda: fleet_hub.fleet.deployments.get(dep.id).status == "halted")
    halted = fleet_hub.fleet.deployments.get(dep.id)
    assert halted.reason and "1 of 1 devices failed" in halted.reason
    assert "invalid model" in halted.reason
    states = _state(fleet_hub, dep.id)
    assert states.pop(canary) == "failed" and set(states.values()) == {"waiting"}
    time.sleep(5 * fleet_hub.settings.fleet_poll_s)  # a few poll rounds: nothing more is sent
    assert all(devs[d].messages("desired") == [] for d in states)


def test_healthy_canary_is_promoted_after_its_probation(
    fleet_hub: Hub, service: FleetService, version: Version, make_device: MakeDevice
) -> None:
    group = unique("grp")
    ids = sorted(unique(f"n{i}") for i in range(4))
    for d in ids:
        _register(fleet_hub, d, group=group)
    devs = {d: make_device(d) for d in ids}
    dep = fleet_hub.fleet.deployments.create(
        DeploymentCreate(
            version=version.ref,
            group=group,
            strategy="canary",
            canary_percent=25,
            promote_after_s=0.5,
        )
    )
    canary = next(d.device_id for d in dep.devices if d.phase == "canary")
    rest = [d for d in ids if d != canary]
    _report(devs[canary], devs[canary].desired(), "active")
    wait_until(lambda: _state(fleet_hub, dep.id)[canary] == "active")
    promoted_at = time.monotonic()
    assert fleet_hub.fleet.deployments.get(dep.id).status == "canary"
    desired = {d: devs[d].desired() for d in rest}
    assert time.monotonic() - promoted_at >= 0.4  # not before promote_after_s
    assert fleet_hub.fleet.deployments.get(dep.id).status == "rolling_out"
    for d in rest:
        _report(devs[d], desired[d], "active")
    wait_until(lambda: fleet_hub.fleet.deployments.get(dep.id).status == "completed")


def test_a_new_deployment_supersedes_the_old_one(
    fleet_hub: Hub, service: FleetService, onnx_bytes: bytes, make_device: MakeDevice
) -> None:
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    v1 = register_model(fleet_hub, onnx_bytes)
    v2 = register_model(fleet_hub, onnx_bytes)
    first = fleet_hub.fleet.deployments.create(DeploymentCreate(version=v1.ref, device=dev_id))
    old = dev.desired()
    second = fleet_hub.fleet.deployments.create(DeploymentCreate(version=v2.ref, device=dev_id))
    wait_until(lambda: dev.desired().deployment_id == second.id)
    assert fleet_hub.fleet.deployments.get(first.id).status == "superseded"
    _report(dev, old, "active")  # a late report of the old deployment changes nothing
    _report(dev, dev.desired(), "active")
    wait_until(lambda: fleet_hub.fleet.deployments.get(second.id).status == "completed")
    assert _state(fleet_hub, first.id)[dev_id] == "superseded"


def test_broker_restart_the_hub_reconnects_and_republishes_desired_state(
    tmp_path: Path, own_mosquitto: Mosquitto, onnx_bytes: bytes
) -> None:
    """The broker loses its retained messages (no persistence): after reconnecting without a
    session the hub publishes every device's desired state again, and ingest goes on."""
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        run_scheduler=False,
        mqtt_host=own_mosquitto.host,
        mqtt_port=own_mosquitto.port,
        mqtt_client_id=unique("hub"),
        mqtt_protocol="5",
        fleet_poll_s=0.05,
    )
    hub = Hub.open(settings)
    svc = FleetService.from_hub(hub)
    svc.start()
    devs: list[Device] = []
    try:
        assert svc.wait_connected(10)
        dev_id = unique("pi")
        _register(hub, dev_id)
        version = register_model(hub, onnx_bytes)
        dep = hub.fleet.deployments.create(DeploymentCreate(version=version.ref, device=dev_id))
        devs.append(Device(own_mosquitto.address, "ep", dev_id))
        assert devs[0].desired().deployment_id == dep.id
        devs[0].close()
        own_mosquitto.stop()
        wait_until(lambda: not svc.connected, what="the hub to notice")
        own_mosquitto.start()
        assert svc.wait_connected(20)
        devs.append(Device(own_mosquitto.address, "ep", dev_id))
        assert devs[1].desired().deployment_id == dep.id  # published again
        devs[1].send("logs", _logs(dev_id, [1, 2]))
        devs[1].wait_ack(2)
    finally:
        for d in devs[1:]:
            d.close()
        svc.stop()
        hub.close()
