"""The fleet registry without a broker in the loop: registration and broker auth files,
artifact choice, deployment validation and superseding, idempotent ingest and its ack mark."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import hash_password, mosquitto_conf, verify_password
from cloud_hub.fleet.desired import DesiredStates
from cloud_hub.fleet.devices import RELOAD_COALESCE_FROM
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.fleet.rollout import Rollout
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate, ShadowCreate
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.registry.schemas import Version
from edge_agent.core.wire import (
    LogBatch,
    LogRecord,
    ServingParams,
    TelemetryBatch,
    TelemetryRecord,
)
from edge_agent.signing import verify_model
from tests.cloud_hub.conftest import register_model
from tests.conftest import _mosquitto, free_port, wait_for_port
from tests.waiting import wait_until


def _count(hub: Hub, table: str) -> int:
    return int(hub.db.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_register_stores_only_a_hash_and_refuses_duplicates(hub: Hub) -> None:
    reg = hub.fleet.devices.register(
        DeviceCreate(id="pi-01", hardware="rpi5", runtimes=["litert", "onnxruntime"], tags=["lab"])
    )
    assert reg.username == "pi-01" and len(reg.password) >= 24
    assert reg.hub_public_key == hub.fleet.signer.public_key_b64
    assert reg.device.runtimes == ["litert", "onnxruntime"] and reg.device.tags == ["lab"]
    (stored,) = hub.db.conn.execute("SELECT password_hash FROM devices").fetchone()
    assert reg.password not in stored and verify_password(reg.password, stored)
    assert not verify_password("wrong", stored)
    with pytest.raises(AlreadyExists, match="device 'pi-01' already exists"):
        hub.fleet.devices.register(DeviceCreate(id="pi-01"))
    with pytest.raises(InvalidInput, match="at least one runtime"):
        hub.fleet.devices.register(DeviceCreate(id="pi-02", runtimes=[]))
    with pytest.raises(InvalidInput, match="tag name"):
        hub.fleet.devices.register(DeviceCreate(id="pi-03", tags=["no spaces"]))
    assert [d.id for d in hub.fleet.devices.all()] == ["pi-01"]


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our `$7$` hashes verify the same way as the ones mosquitto_passwd writes."""
    pwfile = tmp_path / "pw"
    pwfile.touch()
    tool = Path(_mosquitto()).parent.parent / "bin" / "mosquitto_passwd"
    if not tool.exists():
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([str(tool), "-b", str(pwfile), "alice", "s3cret"], check=True)
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$")
    assert verify_password("s3cret", theirs) and not verify_password("nope", theirs)
    assert hash_password("x").startswith("$7$101$")


def _connect(port: int, user: str, password: str) -> tuple[mqtt.Client, mqtt.ReasonCode | None]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"c-{user}-{password[:4]}")
    client.username_pw_set(user, password)
    result: list[mqtt.ReasonCode] = []
    client.on_connect = lambda c, u, f, rc, p: result.append(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: result, 10, "CONNACK")
    return client, result[0]


def test_broker_config_authenticates_devices_and_confines_them(hub: Hub, tmp_path: Path) -> None:
    a = hub.fleet.devices.register(DeviceCreate(id="dev-a"))
    b = hub.fleet.devices.register(DeviceCreate(id="dev-b"))
    files = hub.fleet.devices.write_broker_files()
    acl = files.acl_file.read_text()
    assert "user dev-a\ntopic write ep/dev/dev-a/status\n" in acl
    assert "topic read ep/dev/dev-a/desired\n" in acl and "readwrite" not in acl
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(mosquitto_conf(files, host="127.0.0.1", port=port, persistence=False))
    assert "max_queued_messages 100000" in conf.read_text()
    proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    clients: list[mqtt.Client] = []
    try:
        wait_for_port(port, proc=proc)
        bad, rc = _connect(port, "dev-a", "not-the-password")
        clients.append(bad)
        assert rc is not None and rc.is_failure
        spy, rc = _connect(port, "dev-a", a.password)
        clients.append(spy)
        assert rc is not None and not rc.is_failure
        got: list[str] = []
        spy.on_message = lambda c, u, m: got.append(m.topic)
        spy.subscribe([("ep/dev/dev-b/#", 1), ("ep/dev/dev-a/#", 1)])
        owner, rc = _connect(port, "dev-b", b.password)
        clients.append(owner)
        assert rc is not None and not rc.is_failure
        hub_client, rc = _connect(port, "edgepilot-hub", files.hub_secret.read_text().strip())
        clients.append(hub_client)
        assert rc is not None and not rc.is_failure
        time.sleep(0.2)  # let the subscription settle before publishing
        owner.publish("ep/dev/dev-b/report", b"b's own", qos=1).wait_for_publish(5)
        hub_client.publish("ep/dev/dev-a/desired", b"for a", qos=1).wait_for_publish(5)
        wait_until(lambda: "ep/dev/dev-a/desired" in got, 10, "a's own topic")
        assert "ep/dev/dev-b/report" not in got  # the ACL hides b's topics from a
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        proc.terminate()
        proc.wait(10)


def _devices(hub: Hub) -> None:
    store = hub.fleet.devices
    store.register(DeviceCreate(id="onnx-1", runtimes=["onnxruntime"], tags=["cams"], group="g1"))
    store.register(DeviceCreate(id="lite-1", runtimes=["litert"], tags=["cams"]))
    store.register(DeviceCreate(id="both-1", runtimes=["litert", "onnxruntime"], group="g1"))


def test_best_artifact_follows_each_devices_runtimes(hub: Hub, onnx_bytes: bytes) -> None:
    _devices(hub)
    version = register_model(hub, onnx_bytes)
    dep = hub.fleet.deployments.create(DeploymentCreate(version=version.ref, tag="cams"))
    assert {d.device_id: d.artifact for d in dep.devices} == {
        "lite-1": "tflite/int8",
        "onnx-1": "onnx/fp32",
    }
    assert dep.status == "rolling_out" and {d.state for d in dep.devices} == {"pending"}
    grp = hub.fleet.deployments.create(
        DeploymentCreate(version=str(version.id), group="g1", artifact="onnx/fp32")
    )
    assert {d.device_id: d.artifact for d in grp.devices} == {
        "both-1": "onnx/fp32",
        "onnx-1": "onnx/fp32",
    }
    # onnx-1 moved to the newer deployment: its row in the first one is superseded
    first = hub.fleet.deployments.get(dep.id)
    assert {d.device_id: d.state for d in first.devices}["onnx-1"] == "superseded"
    assert first.status == "rolling_out"  # lite-1 still belongs to it
    last = hub.fleet.deployments.create(DeploymentCreate(version=version.ref, device="lite-1"))
    assert hub.fleet.deployments.get(dep.id).status == "superseded"
    assert last.devices[0].artifact == "tflite/int8"


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ({"version": "fleet/iris"}, InvalidInput, "needs one target"),
        (
            {"version": "fleet/iris", "device": "onnx-1", "tag": "cams"},
            InvalidInput,
            "device and tag",
        ),
        ({"version": "fleet/nope", "device": "onnx-1"}, NotFound, "model 'fleet/nope' not found"),
        ({"version": "fleet/iris:9", "device": "onnx-1"}, NotFound, "fleet/iris:9"),
        ({"version": "fleet/iris", "device": "ghost"}, NotFound, "device 'ghost' not found"),
        ({"version": "fleet/iris", "tag": "nobody"}, NotFound, "tag 'nobody' not found"),
        ({"version": "fleet/iris", "group": "g9"}, NotFound, "group 'g9' not found"),
        (
            {"version": "fleet/iris", "device": "lite-1", "artifact": "onnx/int8"},
            InvalidInput,
            "no 'onnx/int8' artifact that lite-1 \\(runs litert\\) can run",
        ),
        ({"version": "fleet/iris", "device": "onnx-1", "artifact": "keras"}, InvalidInput, "keras"),
        (
            {"version": "fleet/iris", "device": "onnx-1", "canary_count": 1},
            InvalidInput,
            "need strategy 'canary'",
        ),
        (
            {
                "version": "fleet/iris",
                "tag": "cams",
                "strategy": "canary",
                "canary_count": 1,
                "canary_percent": 50,
            },
            InvalidInput,
            "not both",
        ),
        (
            {"version": "fleet/iris", "device": "onnx-1", "probation": {"window_s": -1}},
            InvalidInput,
            "probation",
        ),
    ],
)
def test_invalid_deployments_store_nothing(
    hub: Hub, onnx_bytes: bytes, body: dict[str, object], error: type[Exception], message: str
) -> None:
    _devices(hub)
    register_model(hub, onnx_bytes, tflite=False)
    with pytest.raises(error, match=message):
        hub.fleet.deployments.create(DeploymentCreate.model_validate(body))
    assert _count(hub, "deployments") == 0 and _count(hub, "deployment_devices") == 0


def test_canary_splits_targets(hub: Hub, onnx_bytes: bytes) -> None:
    store = hub.fleet.devices
    for i in range(5):
        store.register(DeviceCreate(id=f"n{i}", tags=["all"]))
    version = register_model(hub, onnx_bytes)
    dep = hub.fleet.deployments.create(
        DeploymentCreate(version=version.ref, tag="all", strategy="canary", canary_percent=40)
    )
    assert dep.status == "canary"
    phases = {d.device_id: (d.phase, d.state) for d in dep.devices}
    assert phases == {
        "n0": ("canary", "pending"),
        "n1": ("canary", "pending"),
        "n2": ("rest", "waiting"),
        "n3": ("rest", "waiting"),
        "n4": ("rest", "waiting"),
    }
    # A canary soaks through the agent's probation window before the rest follow, unless the
    # user says otherwise; all-at-once has nothing to wait for.
    assert dep.promote_after_s == 60
    soak = hub.fleet.deployments.create(
        DeploymentCreate(
            version=version.ref,
            tag="all",
            strategy="canary",
            probation={"window_s": 15},
        )
    )
    assert soak.promote_after_s == 15
    now = hub.fleet.deployments.create(DeploymentCreate(version=version.ref, tag="all"))
    assert now.promote_after_s == 0


def _logs(device: str, seqs: list[int], floor: int = 1) -> LogBatch:
    records = [
        LogRecord(
            seq=s,
            request_id=f"r{s}",
            model_version=1,
            input_digest="d",
            output=[0.1, 0.9],
            latency_ms=1.0,
            ts=1.0,
        )
        for s in seqs
    ]
    return LogBatch(device_id=device, floor=floor, records=records)


def test_ingest_is_idempotent_and_acks_contiguously(hub: Hub) -> None:
    hub.fleet.devices.register(DeviceCreate(id="d1"))
    ingest = Ingest(hub.db)
    assert ingest.store_logs("d1", _logs("d1", [1, 2, 4])) == 2  # 3 is missing
    assert ingest.store_logs("d1", _logs("d1", [4, 1, 2])) == 2  # the same batch again
    tele = TelemetryBatch(device_id="d1", floor=1, records=[TelemetryRecord(seq=3, ts=2.0)])
    assert ingest.store_telemetry("d1", tele) == 4  # one sequence for logs and telemetry
    # the agent dropped 5 and 6 (its floor is 7); 7 and 8 are still to come
    assert ingest.store_logs("d1", _logs("d1", [9, 10], floor=7)) == 6
    assert ingest.store_logs("d1", _logs("d1", [9, 10], floor=9)) == 10  # ... then dropped too
    assert ingest.store_logs("d1", _logs("d1", [8], floor=7)) == 10  # a stale batch: no harm
    assert _count(hub, "inference_logs") == 6 and _count(hub, "telemetry") == 1
    device = hub.fleet.devices.get("d1")
    assert device.acked_upto == 10 and device.logs_stored == 6 and device.telemetry_stored == 1
    with pytest.raises(sqlite3.IntegrityError):  # the primary key holds even outside ingest
        hub.db.conn.execute(
            "INSERT INTO telemetry (device_id, seq, ts, data) VALUES ('d1', 3, 0, '{}')"
        )


# -- shadow and serving parameters ------------------------------------------------------------
def _two_versions(hub: Hub, onnx_bytes: bytes) -> tuple[Version, Version]:
    return register_model(hub, onnx_bytes), register_model(hub, onnx_bytes + b"\0")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"shadow": {"version": "fleet/nope:1"}}, r"shadow\.version: .*not found"),
        ({"shadow": {"version": "fleet/iris:1"}}, r"shadow\.version: .* is the version being"),
        ({"shadow": {"version": "other/iris:1"}}, r"shadow\.version: .* prepares its inputs"),
        ({"shadow": {"version": "fleet/iris:2", "artifact": "onnx/fp16"}}, r"shadow\.artifact"),
        (
            {"device": "lite-1", "artifact": "tflite/int8", "shadow": {"version": "fleet/iris:3"}},
            r"shadow\.artifact: .* lite-1 \(runs litert\)",
        ),
        ({"params": {"min_score": 1.5}}, r"params\.min_score"),
        ({"params": {"min_score": -0.1}}, r"params\.min_score"),
        ({"params": {"default_label": ""}}, r"params\.default_label"),
        ({"params": {"disabled": "maybe"}}, r"params\.disabled"),
        ({"params": {"kill": True}}, r"params\.kill"),
        ({"shadow": {"version": "fleet/iris:2", "artefact": "x"}}, r"shadow\.artefact"),
    ],
)
def test_bad_shadow_or_params_are_refused_naming_the_field(
    hub: Hub, onnx_bytes: bytes, body: dict[str, object], message: str
) -> None:
    _devices(hub)
    _two_versions(hub, onnx_bytes)
    register_model(hub, onnx_bytes + b"\1", tflite=False)  # fleet/iris:3: no tflite artifact
    hub.registry.register_version(
        "other",
        "iris",
        artifacts=[NewArtifact("onnx", "fp32", onnx_bytes + b"\2")],
        source="uploaded",
        preprocessing={"kind": "image", "size": [8, 8]},
    )
    full = {"version": "fleet/iris:1", "device": "onnx-1", **body}
    with pytest.raises((InvalidInput, ValidationError), match=message):
        hub.fleet.deployments.create(DeploymentCreate.model_validate(full))
    assert _count(hub, "deployments") == 0 and _count(hub, "deployment_devices") == 0


def test_a_shadow_travels_in_the_desired_state_and_promotion_reuses_its_artifact(
    hub: Hub, onnx_bytes: bytes
) -> None:
    _devices(hub)
    v1, v2 = _two_versions(hub, onnx_bytes)
    deployments = hub.fleet.deployments
    dep = deployments.create(
        DeploymentCreate(
            version=v1.ref,
            tag="cams",
            shadow=ShadowCreate(version=v2.ref),
            params=ServingParams(min_score=0.7, default_label="unsure"),
        )
    )
    assert dep.shadow_version == v2.ref and dep.params == {
        "min_score": 0.7,
        "default_label": "unsure",
    }
    assert {d.device_id: d.shadow_artifact for d in dep.devices} == {
        "lite-1": "tflite/int8",  # each device's own best artifact of the shadow, too
        "onnx-1": "onnx/fp32",
    }
    desired = DesiredStates(hub.db, hub.registry, hub.fleet.signer).build(dep.id, "onnx-1")
    assert desired.model is not None and desired.model.version_id == v1.id
    assert desired.shadow is not None and desired.shadow.version_id == v2.id
    assert desired.params == ServingParams(min_score=0.7, default_label="unsure")
    # the shadow is signed like any model: the agent verifies it the same way
    onnx_v2 = next(a for a in v2.artifacts if a.format == "onnx")
    assert desired.shadow.sha256 == onnx_v2.sha256
    verify_model(
        desired.shadow,
        hub.registry.store.path_for(onnx_v2.sha256).read_bytes(),
        hub.fleet.signer.public_key_b64,
    )
    rollout = Rollout(hub.db)
    for a in rollout.unpublished():
        assert rollout.claim_desired(a)
        rollout.mark_published(a)
    onnx_v1 = next(a for a in v1.artifacts if a.format == "onnx")
    assert rollout.fetchable_sha256s("onnx-1") == [onnx_v1.sha256, onnx_v2.sha256]

    # promote: a new deployment of v2 with the artifact each device holds as its shadow
    new = deployments.promote(dep.id)
    assert new.version == v2.ref and new.promoted_from == dep.id and new.shadow_version is None
    assert new.params == dep.params and new.status == "rolling_out"
    assert {d.device_id: (d.artifact, d.state) for d in new.devices} == {
        "lite-1": ("tflite/int8", "pending"),
        "onnx-1": ("onnx/fp32", "pending"),
    }
    old = deployments.get(dep.id)
    assert old.status == "superseded" and old.promoted_to == new.id
    assert "promoted" in (old.reason or "")
    with pytest.raises(InvalidInput, match="already promoted"):
        deployments.promote(dep.id)
    with pytest.raises(InvalidInput, match="has no shadow"):
        deployments.promote(new.id)
    with pytest.raises(InvalidInput, match="superseded"):
        deployments.set_params(dep.id, ServingParams(disabled=True))


def test_new_params_are_republished_to_the_devices_that_run_the_deployment(
    hub: Hub, onnx_bytes: bytes
) -> None:
    _devices(hub)
    v1, _ = _two_versions(hub, onnx_bytes)
    deployments = hub.fleet.deployments
    dep = deployments.create(DeploymentCreate(version=v1.ref, tag="cams"))
    rollout = Rollout(hub.db)
    assert rollout.params_changed() == []
    changed = deployments.set_params(dep.id, ServingParams(disabled=True, default_label="off"))
    assert changed.params == {"disabled": True, "default_label": "off"}
    assert rollout.params_changed() == []  # nothing published yet: the first publication has them
    (first, second) = rollout.unpublished()
    for a in (first, second):
        assert rollout.claim_desired(a)
        rollout.mark_published(a)
    deployments.set_params(dep.id, ServingParams(min_score=0.5))
    pending = rollout.params_changed()
    assert [(a.device_id, rev) for a, rev in pending] == [("lite-1", 2), ("onnx-1", 2)]
    rollout.mark_params_published(first, 2)
    assert [a.device_id for a, _ in rollout.params_changed()] == [second.device_id]
    desired = DesiredStates(hub.db, hub.registry, hub.fleet.signer).build(dep.id, "onnx-1")
    assert desired.params == ServingParams(min_score=0.5)


def test_shadow_report_compares_the_stored_logs_of_both_models(hub: Hub, onnx_bytes: bytes) -> None:
    _devices(hub)
    v1, v2 = _two_versions(hub, onnx_bytes)
    dep = hub.fleet.deployments.create(
        DeploymentCreate(version=v1.ref, device="onnx-1", shadow=ShadowCreate(version=v2.ref))
    )
    records = []
    for i in range(10):
        # the active model answers class 1 each time; the shadow agrees on 8 of the 10
        records.append((f"r{i}", v1.id, "active", [0.1, 0.9], 1.0 + i))
        records.append((f"r{i}", v2.id, "shadow", [0.9, 0.1] if i < 2 else [0.2, 0.8], 10.0 + i))
    records.append(("lone", v2.id, "shadow", [0.9, 0.1], 5.0))  # its active log never arrived
    batch = LogBatch(
        device_id="onnx-1",
        floor=1,
        records=[
            LogRecord(
                seq=n + 1,
                request_id=rid,
                model_version=version,
                input_digest="d",
                output=out,
                latency_ms=ms,
                ts=1.0,
                role=role,  # type: ignore[arg-type]
            )
            for n, (rid, version, role, out, ms) in enumerate(records)
        ],
    )
    Ingest(hub.db).store_logs("onnx-1", batch)
    report = hub.fleet.deployments.shadow_report(dep.id)
    assert (report.compared, report.agreed, report.agreement) == (10, 8, 0.8)
    (row,) = report.devices
    assert row.device_id == "onnx-1" and row.compared == 10 and row.agreement == 0.8
    assert row.active_latency_ms["p50"] == 5.5 and row.shadow_latency_ms["p50"] == 14.5
    assert row.active_latency_ms["p99"] == pytest.approx(9.91)
    stored = hub.fleet.devices.logs("onnx-1", limit=100)
    assert {log.role for log in stored} == {"active", "shadow"}
    no_shadow = hub.fleet.deployments.create(DeploymentCreate(version=v1.ref, device="lite-1"))
    with pytest.raises(InvalidInput, match="has no shadow"):
        hub.fleet.deployments.shadow_report(no_shadow.id)


def test_shadow_report_pairs_each_shadow_log_once_when_a_request_id_is_reused(
    hub: Hub, onnx_bytes: bytes
) -> None:
    _devices(hub)
    v1, v2 = _two_versions(hub, onnx_bytes)
    dep = hub.fleet.deployments.create(
        DeploymentCreate(version=v1.ref, device="onnx-1", shadow=ShadowCreate(version=v2.ref))
    )
    # An MQTT client that sends every request as "same": three requests, three inputs; the
    # shadow agrees on the first only. Each is logged active first, then its shadow.
    records = [
        ("active", v1.id, "x1", [0.1, 0.9], 1.0),
        ("shadow", v2.id, "x1", [0.2, 0.8], 10.0),
        ("active", v1.id, "x2", [0.1, 0.9], 2.0),
        ("active", v1.id, "x3", [0.1, 0.9], 3.0),
        ("shadow", v2.id, "x2", [0.9, 0.1], 20.0),
        ("shadow", v2.id, "x3", [0.9, 0.1], 30.0),
    ]
    batch = LogBatch(
        device_id="onnx-1",
        floor=1,
        records=[
            LogRecord(
                seq=n + 1,
                request_id="same",
                model_version=version,
                input_digest=digest,
                output=out,
                latency_ms=ms,
                ts=1.0,
                role=role,  # type: ignore[arg-type]
            )
            for n, (role, version, digest, out, ms) in enumerate(records)
        ],
    )
    Ingest(hub.db).store_logs("onnx-1", batch)
    report = hub.fleet.deployments.shadow_report(dep.id)
    assert (report.compared, report.agreed) == (3, 1)
    assert report.active_latency_ms["p50"] == 2.0 and report.shadow_latency_ms["p50"] == 20.0


def test_threads_asking_for_the_fleet_at_once_share_one(tmp_path: Path) -> None:
    """One Fleet per hub: two would batch registrations and pace broker reloads apart."""
    hub = Hub.open(HubSettings(data_dir=tmp_path / "hub", run_scheduler=False))
    try:
        with ThreadPoolExecutor(8) as pool:
            fleets = list(pool.map(lambda _: hub.fleet, range(8)))
        assert len({id(f) for f in fleets}) == 1
    finally:
        hub.close()


def test_closing_the_hub_runs_a_reload_still_waiting_for_its_gap(tmp_path: Path) -> None:
    """In a large fleet a registration inside the reload gap waits for a trailing reload;
    the hub stopping runs it then, so that device is let in and nothing fires afterwards."""
    reloads = tmp_path / "reloads"
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        run_scheduler=False,
        broker_reload_command=f"sh -c 'echo x >> {reloads}'",
    )
    hub = Hub.open(settings)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: hub.fleet.devices.register(DeviceCreate(id=f"d-{i:04d}")),
                range(RELOAD_COALESCE_FROM),
            )
        )

    def count() -> int:
        return reloads.read_text().count("x")

    waiting = None
    for i in range(5):  # the first inside a gap is not reloaded at once (a slow host: try again)
        before = count()
        hub.fleet.devices.register(DeviceCreate(id=f"late-{i}"))
        if count() == before:
            waiting = before
            break
    assert waiting is not None, "every registration reloaded the broker at once"
    hub.close()
    assert count() == waiting + 1
