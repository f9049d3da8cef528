"""Zero-touch enrollment at the hub: fleets, tokens, `POST /api/v1/enroll`, revocation, and the
broker letting an enrolled device in at once and cutting a revoked one off (real Mosquitto)."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_reload import BrokerReloader
from cloud_hub.hub import Hub
from edge_agent.core.wire import EnrollRequest, enroll_signing_message
from tests.conftest import SecureMosquitto, admin_headers, run_cli
from tests.waiting import wait_until


def signed_request(token: str, hardware_id: str, **changes: Any) -> dict[str, Any]:
    """What an agent sends: a fresh key pair, the request signed with it."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    fields: dict[str, Any] = {
        "token": token,
        "hardware_id": hardware_id,
        "hardware": "Raspberry Pi 5 Model B Rev 1.0",
        "hostname": "raspberrypi",
        "agent_version": "0.1.0",
        "runtimes": ["onnxruntime", "litert"],
        "public_key": base64.b64encode(public).decode(),
        "ts": time.time(),
    }
    fields.update(changes)
    req = EnrollRequest(**fields)
    req.signature = base64.b64encode(key.sign(enroll_signing_message(req))).decode()
    return req.model_dump()


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub, scheduler=False, fleet=False)) as c:
        yield c


def _token(client: TestClient, hub: Hub, fleet: str = "field", **body: Any) -> dict[str, Any]:
    headers = admin_headers(hub)
    if fleet not in [f["name"] for f in client.get("/api/v1/fleets", headers=headers).json()]:
        made = client.post(
            "/api/v1/fleets",
            json={"name": fleet, "group": "lab", "tags": ["cam"]},
            headers=headers,
        )
        assert made.status_code == 201, made.text
    got = client.post("/api/v1/enroll-tokens", json={"fleet": fleet, **body}, headers=headers)
    assert got.status_code == 201, got.text
    return dict(got.json())


def test_a_device_enrolls_into_its_fleet_and_a_reflashed_card_comes_back_as_itself(
    client: TestClient, hub: Hub
) -> None:
    token = _token(client, hub)["token"]
    first = client.post("/api/v1/enroll", json=signed_request(token, "serial:10000000abcd0001"))
    assert first.status_code == 201, first.text
    body = first.json()
    device_id = body["device_id"]
    assert device_id.startswith("field-") and body["fleet"] == "field"
    assert body["username"] == device_id and len(body["password"]) >= 24
    assert body["hub_public_key"] == hub.fleet.signer.public_key_b64
    assert body["reenrolled"] is False
    device = client.get(f"/api/v1/devices/{device_id}", headers=admin_headers(hub)).json()
    assert device["group"] == "lab" and device["tags"] == ["cam"] and device["fleet"] == "field"
    assert device["runtimes"] == ["onnxruntime", "litert"]

    # the card is re-flashed: a new key pair, the same serial
    again = client.post("/api/v1/enroll", json=signed_request(token, "serial:10000000abcd0001"))
    assert again.status_code == 200, again.text
    assert again.json()["device_id"] == device_id and again.json()["reenrolled"] is True
    assert again.json()["password"] != body["password"]  # the old card's password is dead
    other = client.post("/api/v1/enroll", json=signed_request(token, "serial:10000000abcd0002"))
    assert other.status_code == 201 and other.json()["device_id"] != device_id
    devices = client.get("/api/v1/devices", headers=admin_headers(hub)).json()
    assert sorted(d["id"] for d in devices) == sorted([device_id, other.json()["device_id"]])

    listed = client.get("/api/v1/enroll-tokens", headers=admin_headers(hub)).json()
    assert [t["uses"] for t in listed] == [2]  # the re-enrollment was no new use
    assert "token" not in listed[0] and token not in str(listed)


def test_revoked_expired_and_used_up_tokens_are_refused_with_the_reason(
    client: TestClient, hub: Hub
) -> None:
    one_use = _token(client, hub, max_uses=1)
    assert client.post("/api/v1/enroll", json=signed_request(one_use["token"], "hw-1")).is_success
    used_up = client.post("/api/v1/enroll", json=signed_request(one_use["token"], "hw-2"))
    assert used_up.status_code == 401 and "has enrolled its 1 devices" in used_up.json()["detail"]
    # the device it did enroll may come back with it (a re-flash is not a new device)
    assert client.post("/api/v1/enroll", json=signed_request(one_use["token"], "hw-1")).is_success

    revoked = _token(client, hub)
    gone = client.delete(f"/api/v1/enroll-tokens/{revoked['id']}", headers=admin_headers(hub))
    assert gone.status_code == 200 and gone.json()["state"] == "revoked"
    refused = client.post("/api/v1/enroll", json=signed_request(revoked["token"], "hw-3"))
    assert refused.status_code == 401 and "was revoked at" in refused.json()["detail"]

    expiring = _token(client, hub, expires_s=3600)
    later = datetime.now(UTC) + timedelta(hours=2)
    hub.enrollment.tokens.clock = lambda: later
    expired = client.post("/api/v1/enroll", json=signed_request(expiring["token"], "hw-4"))
    assert expired.status_code == 401 and "expired at" in expired.json()["detail"]
    assert expiring["token"] not in expired.text

    unknown = client.post("/api/v1/enroll", json=signed_request("ept_" + "x" * 32, "hw-5"))
    assert unknown.status_code == 401 and unknown.json()["detail"] == (
        "enrollment token not recognised"
    )
    assert hub.enrollment.refused == 4
    ids = [d["id"] for d in client.get("/api/v1/devices", headers=admin_headers(hub)).json()]
    assert len(ids) == 1  # nothing refused was stored


def test_forged_or_stale_requests_and_revoked_devices_are_refused(
    client: TestClient, hub: Hub
) -> None:
    token = _token(client, hub)["token"]
    forged = signed_request(token, "hw-a")
    forged["hardware_id"] = "hw-b"  # altered after signing
    bad = client.post("/api/v1/enroll", json=forged)
    assert bad.status_code == 400 and "signature does not verify" in bad.json()["detail"]
    stale = client.post("/api/v1/enroll", json=signed_request(token, "hw-a", ts=time.time() - 7200))
    assert stale.status_code == 400 and "clock is -7200 s off" in stale.json()["detail"]
    garbage = client.post("/api/v1/enroll", json={"token": token, "hardware_id": "bad id"})
    assert garbage.status_code == 422 and token not in garbage.text
    marked_up = {**signed_request(token, "hw-a"), "hostname": "[red]pwned"}  # shown in tables
    refused = client.post("/api/v1/enroll", json=marked_up)
    assert refused.status_code == 422 and "hostname" in refused.text

    enrolled = client.post("/api/v1/enroll", json=signed_request(token, "hw-a")).json()
    device_id = enrolled["device_id"]
    cut = client.post(f"/api/v1/devices/{device_id}/revoke", headers=admin_headers(hub))
    assert cut.status_code == 200 and cut.json()["revoked_at"] is not None
    back = client.post("/api/v1/enroll", json=signed_request(token, "hw-a"))
    assert back.status_code == 403 and "was revoked" in back.json()["detail"]
    twice = client.post(f"/api/v1/devices/{device_id}/revoke", headers=admin_headers(hub))
    assert twice.status_code == 422
    # only an admin revokes, and a stranger cannot list tokens
    assert client.post(f"/api/v1/devices/{device_id}/revoke").status_code == 401
    assert client.get("/api/v1/enroll-tokens").status_code == 401


# -- the broker ---------------------------------------------------------------------------------
class Link:
    """A device's MQTT connection with the credentials it enrolled with."""

    def __init__(self, broker: SecureMosquitto, username: str, password: str) -> None:
        self.connected = threading.Event()
        self.refused: list[str] = []
        self.disconnects = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username)
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(*broker.address, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused.append(str(reason))
        else:
            self.connected.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.disconnects += 1
        self.connected.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_an_enrolled_device_connects_at_once_and_a_revoked_one_is_cut_off(
    tmp_path: Path, secure_mosquitto: Any
) -> None:
    data_dir = tmp_path / "hub"
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    hub.fleet.devices.write_broker_files()  # an empty fleet's files, for the broker to start
    broker: SecureMosquitto = secure_mosquitto(data_dir, tls=False)
    hub.close()
    settings = HubSettings(
        data_dir=data_dir,
        run_scheduler=False,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        broker_pid_file=broker.pid_file,
    )
    hub = Hub.open(settings)
    links: list[Link] = []
    try:
        with TestClient(create_app(hub, scheduler=False, fleet=False)) as client:
            token = _token(client, hub)["token"]
            reloads = broker.reload_count()
            got = client.post("/api/v1/enroll", json=signed_request(token, "serial:cafe0001"))
            assert got.status_code == 201, got.text
            creds = got.json()
            assert hub.fleet.devices.last_reload is not None and hub.fleet.devices.last_reload.done
            wait_until(lambda: broker.reload_count() > reloads, what="the broker's reload")
            link = Link(broker, creds["username"], creds["password"])
            links.append(link)
            assert link.connected.wait(10), f"refused: {link.refused}"

            # revoke: the broker drops the connection within seconds and refuses it since
            revoked = client.post(
                f"/api/v1/devices/{creds['device_id']}/revoke", headers=admin_headers(hub)
            )
            assert revoked.status_code == 200
            wait_until(lambda: link.disconnects > 0, timeout=10, what="the revoked device dropped")
            again = Link(broker, creds["username"], creds["password"])
            links.append(again)
            wait_until(lambda: again.refused, timeout=10, what="the broker refusing it")
            assert not again.connected.is_set()
            assert f"Client {creds['device_id']}" in broker.log_text()
    finally:
        for link in links:
            link.close()
        hub.close()


def test_fleets_and_tokens_from_the_cli(cli_env: dict[str, str]) -> None:
    made = run_cli(["fleets", "create", "yard", "--group", "outdoor", "--tag", "cam"], cli_env)
    assert made.returncode == 0, made.stderr
    token = run_cli(
        ["enroll-tokens", "create", "--fleet", "yard", "--expires", "7d", "--max-uses", "3"],
        cli_env,
    )
    assert token.returncode == 0, token.stderr
    secret = re.search(r"ept_[A-Za-z0-9_-]{32}", token.stdout)  # shown once, at creation
    assert secret is not None, token.stdout
    listed = run_cli(["enroll-tokens", "list"], cli_env)
    assert listed.returncode == 0 and "yard" in listed.stdout and "0/3" in listed.stdout
    assert secret.group(0) not in listed.stdout and secret.group(0)[:11] in listed.stdout
    fleets = run_cli(["fleets", "list", "--json"], cli_env)
    assert fleets.returncode == 0 and '"outdoor"' in fleets.stdout
    missing = run_cli(["enroll-tokens", "create", "--fleet", "nowhere"], cli_env)
    assert missing.returncode == 2 and "fleet 'nowhere' not found" in missing.stderr
    bad = run_cli(["enroll-tokens", "create", "--fleet", "yard", "--expires", "soon"], cli_env)
    assert bad.returncode == 2
    revoked = run_cli(["enroll-tokens", "revoke", "1"], cli_env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout


# -- reloading the broker -------------------------------------------------------------------
def test_the_hub_reloads_a_daemonised_broker_through_the_pid_file_its_config_names(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    broker = SecureMosquitto(data_dir, tmp_path, tls=False)
    broker.configure()  # `hub broker-config`: its mosquitto.conf names mosquitto/mosquitto.pid
    files = hub.fleet.devices.files
    started = subprocess.run(["mosquitto", "-d", "-c", str(broker.conf)], timeout=30)
    assert started.returncode == 0
    try:
        wait_until(files.pid_file.is_file, what="the daemon's pid file")
        wait_until(lambda: broker.reload_count() == 0 and "running" in broker.log_text())
        outcome = hub.fleet.devices.reload_broker()  # no setting: the config's pid file
        assert outcome.done, outcome.how
        wait_until(lambda: broker.reload_count() == 1, what="the broker's reload")
    finally:
        os.kill(int(files.pid_file.read_text()), signal.SIGTERM)
        hub.close()


def test_a_stale_pid_file_naming_another_program_is_not_signalled(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        comm = Path(f"/proc/{other.pid}/comm")
        wait_until(lambda: comm.read_text().strip() == "sleep", what="sleep started")
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{other.pid}\n")
        outcome = BrokerReloader(pid_file=pid_file).reload()
        assert not outcome.done and "'sleep', not Mosquitto" in outcome.how
        assert other.poll() is None  # SIGHUP would have ended it
        other.kill()
        other.wait()
        assert "stale pid file" in BrokerReloader(pid_file=pid_file).reload().how
        missing = BrokerReloader(pid_file=tmp_path / "none.pid").reload()
        assert not missing.done and "broker_reload_command" in missing.how
    finally:
        other.kill()


def test_a_reload_command_is_run_and_its_failure_reported(tmp_path: Path) -> None:
    marker = tmp_path / "reloaded"
    assert BrokerReloader(command=f"touch {marker}").reload().done and marker.exists()
    failed = BrokerReloader(command="sh -c 'echo no such unit >&2; exit 5'").reload()
    assert not failed.done and failed.how == "sh exited 5: no such unit"
    assert "no such program" in BrokerReloader(command="no-such-reloader x").reload().how
