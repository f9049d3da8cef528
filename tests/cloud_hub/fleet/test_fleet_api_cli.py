"""Devices and deployments through the REST API and through `edgepilot` as a real process,
including a deployment made by the CLI reaching a device through a running `hub serve`."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate, ShadowCreate
from cloud_hub.hub import Hub
from edge_agent.core.wire import LogBatch, LogRecord
from edge_agent.signing import verify_model
from tests.cloud_hub.conftest import Device, register_model, unique
from tests.conftest import BIN, REPO, admin_headers, free_port, run_cli, wait_for_port
from tests.waiting import wait_until


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub, scheduler=False), headers=admin_headers(hub)) as c:
        yield c


def test_rest_devices(client: TestClient, hub: Hub) -> None:
    made = client.post(
        "/api/v1/devices",
        json={"id": "pi-01", "hardware": "rpi5", "runtimes": ["litert"], "tags": ["lab"]},
    )
    assert made.status_code == 201, made.text
    reg = made.json()
    assert reg["username"] == "pi-01" and reg["password"]
    assert reg["broker"] == {
        "host": "127.0.0.1",
        "port": 1883,
        "topic_root": "ep",
        "tls": False,
        "ca_pem": None,
    }
    assert reg["hub_public_key"] == hub.fleet.signer.public_key_b64
    dup = client.post("/api/v1/devices", json={"id": "pi-01"})
    assert dup.status_code == 409 and dup.json()["detail"] == "device 'pi-01' already exists"
    for bad in ({"id": "has space"}, {"id": "pi-02", "runtimes": ["tensorrt"]}, {}):
        assert client.post("/api/v1/devices", json=bad).status_code == 422
    assert client.post("/api/v1/devices", json={"id": "pi-03", "runtimes": []}).status_code == 422
    listed = client.get("/api/v1/devices").json()
    assert [d["id"] for d in listed] == ["pi-01"] and "password" not in json.dumps(listed)
    one = client.get("/api/v1/devices/pi-01").json()
    assert one["logs_stored"] == 0 and one["status"] == "unknown" and one["tags"] == ["lab"]
    assert client.get("/api/v1/devices/nope").status_code == 404
    assert client.get("/api/v1/devices/pi-01/logs?limit=5").json() == []
    assert client.get("/api/v1/devices/pi-01/logs?limit=0").status_code == 422


def test_rest_deployments(client: TestClient, hub: Hub, onnx_bytes: bytes) -> None:
    version = register_model(hub, onnx_bytes)
    client.post("/api/v1/devices", json={"id": "a", "runtimes": ["onnxruntime"], "group": "g"})
    client.post("/api/v1/devices", json={"id": "b", "runtimes": ["litert"], "group": "g"})
    made = client.post(
        "/api/v1/deployments",
        json={"version": version.ref, "group": "g", "strategy": "canary", "canary_count": 1},
    )
    assert made.status_code == 201, made.text
    dep = made.json()
    assert dep["status"] == "canary" and dep["version"] == version.ref
    assert [(d["device_id"], d["state"]) for d in dep["devices"]] == [
        ("a", "pending"),
        ("b", "waiting"),
    ]
    assert client.get(f"/api/v1/deployments/{dep['id']}").json()["id"] == dep["id"]
    assert [d["id"] for d in client.get("/api/v1/deployments").json()] == [dep["id"]]
    assert client.get("/api/v1/deployments/99").status_code == 404
    cases = [
        ({"version": version.ref}, 422, "needs one target"),
        ({"version": version.ref, "device": "a", "group": "g"}, 422, "device and group"),
        ({"version": "fleet/other", "device": "a"}, 404, "not found"),
        ({"version": version.ref, "device": "zz"}, 404, "device 'zz' not found"),
        ({"version": version.ref, "tag": "none"}, 404, "tag 'none' not found"),
        ({"version": version.ref, "device": "b", "artifact": "onnx/fp32"}, 422, "b (runs litert)"),
        ({"version": version.ref, "device": "a", "failure_threshold": 2}, 422, "less than"),
        ({"version": version.ref, "devices": ["a", "a"]}, 422, "a given more than once"),
        ({"version": version.ref, "devices": ["a", "zz"]}, 404, "device 'zz' not found"),
        ({"version": version.ref, "devices": ["a"], "device": "a"}, 422, "device and devices"),
        ({"version": version.ref, "devices": []}, 422, "at least 1"),
    ]
    for body, code, message in cases:
        resp = client.post("/api/v1/deployments", json=body)
        assert resp.status_code == code, (body, resp.text)
        assert message in json.dumps(resp.json()), (body, resp.text)
    assert len(client.get("/api/v1/deployments").json()) == 1  # nothing stored on error
    several = client.post(
        "/api/v1/deployments", json={"version": version.ref, "devices": ["b", "a"]}
    )
    assert several.status_code == 201, several.text
    assert [d["device_id"] for d in several.json()["devices"]] == ["a", "b"]
    assert several.json()["target"] == "b,a"


def test_cli_register_list_deploy(
    cli_env: dict[str, str], tmp_path: Path, onnx_bytes: bytes
) -> None:
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    version = register_model(hub, onnx_bytes)
    hub.close()
    config = tmp_path / "agent.toml"
    made = run_cli(
        [
            "devices", "register", "pi-01", "--hardware", "rpi5", "--runtime", "litert",
            "--runtime", "onnxruntime", "--tag", "lab", "--broker", "10.0.0.5:1884",
            "--write-config", str(config), "--json",
        ],
        cli_env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    reg = json.loads(made.stdout)
    agent = tomllib.loads(config.read_text())
    assert agent["device_id"] == "pi-01" and agent["data_dir"] == "./agent-data"
    assert agent["hub_public_key"] == reg["hub_public_key"]
    assert agent["mqtt"] == {
        "host": "10.0.0.5",
        "port": 1884,
        "username": "pi-01",
        "password": reg["password"],
        "topic_root": "ep",
    }
    assert agent["http"] == {"host": "127.0.0.1", "port": 8081}
    assert config.stat().st_mode & 0o077 == 0  # it holds a password

    dup = run_cli(["devices", "register", "pi-01"], cli_env)
    assert dup.returncode == 2 and "device 'pi-01' already exists" in dup.stderr
    bad = run_cli(["devices", "register", "pi-02", "--runtime", "tensorrt"], cli_env)
    assert bad.returncode == 2 and "runtimes" in bad.stderr
    table = run_cli(["devices", "list"], cli_env)
    assert table.returncode == 0 and "pi-01" in table.stdout and "┃" in table.stdout
    shown = json.loads(run_cli(["devices", "show", "pi-01", "--json"], cli_env).stdout)
    assert shown["runtimes"] == ["litert", "onnxruntime"]

    for args, message in [
        (["deploy", version.ref], "needs one target"),
        (["deploy", version.ref, "--device", "pi-01", "--tag", "lab"], "device and tag"),
        (["deploy", "fleet/nope", "--device", "pi-01"], "not found"),
        (["deploy", version.ref, "--device", "ghost"], "device 'ghost' not found"),
        (["deploy", version.ref, "--tag", "lab", "--strategy", "yolo"], "'yolo' is not one"),
        (["deploy", version.ref, "--tag", "lab", "--artifact", "onnx/int8"], "onnx/int8"),
    ]:
        out = run_cli(args, cli_env)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
    ok = run_cli(["deploy", version.ref, "--tag", "lab", "--json"], cli_env)
    assert ok.returncode == 0, ok.stderr
    dep = json.loads(ok.stdout)
    assert dep["devices"][0]["artifact"] == "tflite/int8" and dep["status"] == "rolling_out"
    listed = run_cli(["deployments", "list"], cli_env)
    assert listed.returncode == 0 and version.ref in listed.stdout
    shown_dep = run_cli(["deployments", "show", str(dep["id"])], cli_env)
    assert "pi-01" in shown_dep.stdout and "pending" in shown_dep.stdout

    conf = run_cli(["hub", "broker-config", "--listen", "127.0.0.1:1999"], cli_env)
    assert conf.returncode == 0, conf.stderr
    assert "listener 1999 127.0.0.1" in conf.stdout and "max_queued_messages" in conf.stdout
    acl = (data_dir / "mosquitto" / "acl").read_text()
    assert "user pi-01\ntopic write ep/dev/pi-01/status\n" in acl
    assert "topic read ep/dev/pi-01/desired\n" in acl and "readwrite" not in acl


def test_cli_deployment_reaches_a_device_through_hub_serve(
    cli_env: dict[str, str], mosquitto: tuple[str, int], onnx_bytes: bytes
) -> None:
    """The CLI writes the deployment; the running hub's MQTT service publishes it (--watch
    follows the device's reports until the rollout completes)."""
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    version = register_model(hub, onnx_bytes)
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
    dev: Device | None = None
    watcher: subprocess.Popen[str] | None = None
    try:
        wait_for_port(api_port, proc=proc)
        dev_id = unique("pi")
        auth = {"Authorization": f"Bearer {(data_dir / 'admin-token').read_text().strip()}"}
        reg = httpx.post(
            f"http://127.0.0.1:{api_port}/api/v1/devices",
            json={"id": dev_id, "runtimes": ["onnxruntime"]},
            headers=auth,
        )
        assert reg.status_code == 201, reg.text
        dev = Device(mosquitto, "ep", dev_id)
        watcher = subprocess.Popen(
            [str(BIN / "edgepilot"), "deploy", version.ref, "--device", dev_id, "--watch",
             "--timeout", "60", "--json"],
            env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        desired = dev.desired(timeout=30)
        assert desired.model is not None
        verify_model(desired.model, dev.fetch(desired, window=4096), public_key)
        from edge_agent.core.wire import Report

        dev.send(
            "report",
            Report(
                device_id=dev_id,
                deployment_id=desired.deployment_id,
                version_id=desired.model.version_id,
                state="active",
            ),
        )
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, err
        assert json.loads(out)["status"] == "completed"
        wait_until(
            lambda: (
                httpx.get(
                    f"http://127.0.0.1:{api_port}/api/v1/devices/{dev_id}", headers=auth
                ).json()["active_version_id"]
                == version.id
            )
        )
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        if dev is not None:
            dev.close()
        proc.terminate()
        proc.wait(20)
        log.close()


def test_rest_shadow_promote_and_params(client: TestClient, hub: Hub, onnx_bytes: bytes) -> None:
    v1 = register_model(hub, onnx_bytes, tflite=False)
    v2 = register_model(hub, onnx_bytes + b"\0", tflite=False)
    client.post("/api/v1/devices", json={"id": "a", "runtimes": ["onnxruntime"]})
    base = {"version": v1.ref, "device": "a"}
    for body, field in [
        ({**base, "shadow": {"version": "fleet/iris:9"}}, "shadow.version"),
        ({**base, "shadow": {"version": v1.ref}}, "shadow.version"),
        ({**base, "shadow": {"version": v2.ref, "artifact": "tflite/int8"}}, "shadow.artifact"),
        ({**base, "params": {"min_score": 2}}, "min_score"),
        ({**base, "params": {"treshold": 0.5}}, "treshold"),
    ]:
        resp = client.post("/api/v1/deployments", json=body)
        assert resp.status_code == 422 and field in resp.text, (body, resp.text)
    assert client.get("/api/v1/deployments").json() == []

    made = client.post("/api/v1/deployments", json={**base, "shadow": {"version": v2.ref}})
    assert made.status_code == 201, made.text
    dep = made.json()
    assert dep["shadow_version"] == v2.ref and dep["devices"][0]["shadow_artifact"] == "onnx/fp32"
    report = client.get(f"/api/v1/deployments/{dep['id']}/shadow").json()
    assert report["compared"] == 0 and report["agreement"] is None
    assert report["devices"][0]["device_id"] == "a"
    put = client.put(f"/api/v1/deployments/{dep['id']}/params", json={"min_score": 0.8})
    assert put.status_code == 200 and put.json()["params"] == {"min_score": 0.8}
    bad = client.put(f"/api/v1/deployments/{dep['id']}/params", json={"min_score": "high"})
    assert bad.status_code == 422 and "min_score" in bad.text
    promoted = client.post(f"/api/v1/deployments/{dep['id']}/promote")
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["version"] == v2.ref and promoted.json()["params"] == {"min_score": 0.8}
    assert client.post(f"/api/v1/deployments/{promoted.json()['id']}/promote").status_code == 422
    assert client.post("/api/v1/deployments/99/promote").status_code == 404
    assert client.get(f"/api/v1/deployments/{promoted.json()['id']}/shadow").status_code == 422


def test_cli_shadow_report_promote_and_params(cli_env: dict[str, str], onnx_bytes: bytes) -> None:
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    v1 = register_model(hub, onnx_bytes, tflite=False)
    v2 = register_model(hub, onnx_bytes + b"\0", tflite=False)
    hub.fleet.devices.register(DeviceCreate(id="cam-1"))
    hub.close()

    refused = run_cli(
        ["deploy", v1.ref, "--device", "cam-1", "--shadow", v2.ref, "--param", "min_score=3"],
        cli_env,
    )
    assert refused.returncode == 2 and "params.min_score" in refused.stderr, refused.stderr
    made = run_cli(
        [
            "deploy", v1.ref, "--device", "cam-1", "--shadow", v2.ref,
            "--param", "min_score=0.6", "--param", "default_label=unsure", "--json",
        ],
        cli_env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    dep = json.loads(made.stdout)
    assert dep["shadow_version"] == v2.ref
    assert dep["params"] == {"min_score": 0.6, "default_label": "unsure"}

    # logs as the agent sends them: the active and the shadow answer of each request
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    records = []
    for i in range(4):
        shadow_out = [0.8, 0.2] if i == 0 else [0.3, 0.7]
        records += [
            LogRecord(seq=2 * i + 1, request_id=f"r{i}", model_version=v1.id, input_digest="d",
                      output=[0.1, 0.9], latency_ms=2.0, ts=1.0),
            LogRecord(seq=2 * i + 2, request_id=f"r{i}", model_version=v2.id, input_digest="d",
                      output=shadow_out, latency_ms=3.0, ts=1.0, role="shadow"),
        ]  # fmt: skip
    Ingest(hub.db).store_logs("cam-1", LogBatch(device_id="cam-1", floor=1, records=records))
    hub.close()
    table = run_cli(["deployments", "shadow", str(dep["id"])], cli_env)
    assert table.returncode == 0, table.stderr
    assert "agreement 75.0%" in table.stdout and "cam-1" in table.stdout, table.stdout
    report = json.loads(
        run_cli(["deployments", "shadow", str(dep["id"]), "--json"], cli_env).stdout
    )
    assert report["compared"] == 4 and report["agreed"] == 3
    assert report["devices"][0]["shadow_latency_ms"] == {"p50": 3.0, "p99": 3.0}

    params = run_cli(
        ["deployments", "params", str(dep["id"]), "--set", "disabled=true", "--set",
         "min_score=null", "--json"],
        cli_env,
    )  # fmt: skip
    assert params.returncode == 0, params.stderr
    assert json.loads(params.stdout)["params"] == {"default_label": "unsure", "disabled": True}
    typo = run_cli(["deployments", "params", str(dep["id"]), "--set", "disable=true"], cli_env)
    assert typo.returncode == 2 and "params.disable" in typo.stderr
    promoted = run_cli(["deployments", "promote", str(dep["id"])], cli_env)
    assert promoted.returncode == 0, promoted.stderr
    assert v2.ref in promoted.stdout and "promoted" in promoted.stdout
    again = run_cli(["deployments", "promote", str(dep["id"])], cli_env)
    assert again.returncode == 2 and "already promoted" in again.stderr


def test_cli_deploy_promote_as_the_issue_writes_it(
    cli_env: dict[str, str], onnx_bytes: bytes
) -> None:
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    v1 = register_model(hub, onnx_bytes, tflite=False)
    v2 = register_model(hub, onnx_bytes + b"\0", tflite=False)
    hub.fleet.devices.register(DeviceCreate(id="cam-2"))
    dep = hub.fleet.deployments.create(
        DeploymentCreate(version=v1.ref, device="cam-2", shadow=ShadowCreate(version=v2.ref))
    )
    hub.close()
    missing = run_cli(["deploy", "promote"], cli_env)
    assert missing.returncode == 2 and "which deployment" in missing.stderr, missing.stderr
    promoted = run_cli(["deploy", "promote", str(dep.id), "--json"], cli_env)
    assert promoted.returncode == 0, promoted.stderr
    doc = json.loads(promoted.stdout)
    assert doc["version"] == v2.ref and doc["promoted_from"] == dep.id
    extra = run_cli(["deploy", v1.ref, "7", "--device", "cam-2"], cli_env)
    assert extra.returncode == 2 and "unexpected argument 7" in extra.stderr, extra.stderr


def test_a_repeated_option_is_honoured_or_refused_never_half_obeyed(
    cli_env: dict[str, str], onnx_bytes: bytes
) -> None:
    """`deploy --device dev-a --device dev-b` used to deploy to dev-b alone, without a word:
    now it deploys to both, as one rollout; a single-valued option given twice is refused."""
    hub = Hub.open(HubSettings(data_dir=Path(cli_env["EDGEPILOT_DATA_DIR"]), run_scheduler=False))
    version = register_model(hub, onnx_bytes)
    for device_id in ("dev-a", "dev-b", "dev-c"):
        tags = ["lab"] if device_id != "dev-c" else []
        hub.fleet.devices.register(DeviceCreate(id=device_id, tags=tags))
    hub.close()
    twice = run_cli(
        ["deploy", version.ref, "--device", "dev-a", "--device", "dev-b", "--json"], cli_env
    )
    assert twice.returncode == 0, twice.stderr
    dep = json.loads(twice.stdout)
    assert sorted(d["device_id"] for d in dep["devices"]) == ["dev-a", "dev-b"]
    assert (dep["target_kind"], dep["target"]) == ("device", "dev-a,dev-b")
    shown = run_cli(["deployments", "list"], cli_env)
    assert "dev-a,dev-b" in shown.stdout
    again = run_cli(["deploy", version.ref, "--device", "dev-a", "--device", "dev-a"], cli_env)
    assert again.returncode == 2 and "dev-a given more than once" in again.stderr
    ghost = run_cli(["deploy", version.ref, "--device", "dev-a", "--device", "ghost"], cli_env)
    assert ghost.returncode == 2 and "device 'ghost' not found" in ghost.stderr
    assert len(json.loads(run_cli(["deployments", "list", "--json"], cli_env).stdout)) == 1
    both = run_cli(
        ["deploy", version.ref, "--tag", "lab", "--artifact", "best", "--artifact", "onnx/fp32"],
        cli_env,
    )
    assert both.returncode == 2 and "--artifact was given 2 times" in both.stderr
    # options that take a list stay repeatable, flags may be said twice
    ok = run_cli(
        ["deploy", version.ref, "--tag", "lab", "--param", "min_score=0.5", "--param",
         "default_label=unsure", "--json", "--json"],
        cli_env,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    dep = json.loads(ok.stdout)
    assert sorted(d["device_id"] for d in dep["devices"]) == ["dev-a", "dev-b"]
    assert dep["params"] == {"min_score": 0.5, "default_label": "unsure"}
