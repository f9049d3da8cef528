"""Zero-touch enrollment, the agent's side, against a real hub served over HTTP (uvicorn on a
loopback port): the identity it keeps, the token it deletes, a re-flashed card coming back as
itself, refusals named on the command line, and `run` backing off on a revoked token without
exiting (then enrolling once the operator gives it a live token)."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.tls import TlsFiles, ensure_server_certificate
from cloud_hub.hub import Hub
from cloud_hub.registry.signing import HubSigner
from edge_agent.config import (
    ConfigError,
    EnrollSettings,
    load_config,
    load_settings,
    needs_enrollment,
)
from edge_agent.core.wire import EnrollBroker
from edge_agent.enroll import EnrollmentRefused, enroll, enroll_until_done
from edge_agent.identity import Identity, load_identity, save_identity
from tests.agent_processes import AGENT
from tests.conftest import REPO, admin_headers, free_port
from tests.waiting import wait_until


class HubServer:
    """A hub's REST API served by uvicorn in a thread: what an agent reaches over the network.
    Devices are told the session's Mosquitto as their broker."""

    def __init__(self, data_dir: Path, broker: tuple[str, int], *, tls: bool = False) -> None:
        import uvicorn

        settings = HubSettings(
            data_dir=data_dir,
            run_scheduler=False,
            device_broker_host=broker[0],
            device_broker_port=broker[1],
        )
        self.hub = Hub.open(settings)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.tls = TlsFiles(data_dir / "api-tls")
        if tls:  # a private CA and a certificate for 127.0.0.1 signed by it
            ensure_server_certificate(self.tls, ["127.0.0.1"])
        app = create_app(self.hub, scheduler=False, fleet=False)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ssl_certfile=self.tls.server_cert if tls else None,
            ssl_keyfile=self.tls.server_key if tls else None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "the hub's HTTP server")
        self.http = httpx.Client(
            base_url=self.url,
            headers=admin_headers(self.hub),
            timeout=30,
            verify=str(self.tls.ca_cert) if tls else True,
        )

    def token(self, fleet: str = "field", **body: Any) -> dict[str, Any]:
        """A fleet enrollment token made over REST by the admin (the fleet made if new)."""
        if fleet not in [f["name"] for f in self.http.get("/api/v1/fleets").json()]:
            made = self.http.post("/api/v1/fleets", json={"name": fleet, "group": "lab"})
            assert made.status_code == 201, made.text
        got = self.http.post("/api/v1/enroll-tokens", json={"fleet": fleet, **body})
        assert got.status_code == 201, got.text
        return dict(got.json())

    def revoke_token(self, token_id: int) -> None:
        gone = self.http.delete(f"/api/v1/enroll-tokens/{token_id}")
        assert gone.status_code == 200, gone.text

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.hub.close()


@pytest.fixture
def hub_server(tmp_path: Path, mosquitto: tuple[str, int]) -> Iterator[HubServer]:
    server = HubServer(tmp_path / "hub", mosquitto)
    yield server
    server.close()


def _config(tmp_path: Path, enroll: dict[str, Any], **top: Any) -> Path:
    """An enrolling device's agent.toml, as firmware_configs' template writes it."""
    lines = ['data_dir = "./agent-data"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    lines += ["[http]", 'host = "127.0.0.1"', "port = 0", "[telemetry]", "interval_s = 3600"]
    lines += ["[enroll]"] + [f"{key} = {json.dumps(value)}" for key, value in enroll.items()]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# -- the config, before and after enrollment (no hub needed) -----------------------------------
def test_a_config_needs_a_device_id_or_an_enroll_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('data_dir = "./d"\n[mqtt]\nhost = "127.0.0.1"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "device_id: required key is missing" in message and "[enroll]" in message
    assert "hub_public_key: required key is missing" in message

    enrolling = _config(tmp_path, {"hub": "http://hub.example:8000", "token_file": "token"})
    config = load_config(enrolling, env={})
    assert needs_enrollment(config) and config.device_id is None and config.identity is None
    assert config.enroll is not None and config.enroll.token_file == tmp_path / "token"
    with pytest.raises(ConfigError, match="not enrolled yet"):
        load_settings(enrolling, env={})

    no_token = _config(tmp_path, {"hub": "http://hub.example:8000"})
    with pytest.raises(ConfigError, match="enroll: give token or token_file"):
        load_config(no_token, env={})


def test_balena_sets_the_enroll_section_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('data_dir = "/var/lib/edgepilot"\n')
    secret = "ept_" + "s" * 40
    env = {
        "EDGEPILOT_AGENT_ENROLL_HUB": "https://hub.example:8443/",
        "EDGEPILOT_AGENT_ENROLL_TOKEN": secret,
        "EDGEPILOT_AGENT_DATA_DIR": str(tmp_path / "data"),
        "EDGEPILOT_AGENT_ENROLL_RETRY_MAX_S": "60",
    }
    config = load_config(path, env=env)
    assert config.enroll is not None and config.enroll.hub == "https://hub.example:8443"
    assert config.enroll.token == secret and config.enroll.retry_max_s == 60
    assert config.data_dir == tmp_path / "data" and needs_enrollment(config)
    assert secret not in repr(config)
    # a bad value next to the token: the message names the key, never the token
    with pytest.raises(ConfigError) as info:
        load_config(path, env={**env, "EDGEPILOT_AGENT_ENROLL_HUB": "hub.example"})
    assert "enroll.hub (from EDGEPILOT_AGENT_ENROLL_HUB)" in str(info.value)
    assert secret not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={**env, "EDGEPILOT_AGENT_ENROLL_TOKEN": "short"})
    assert "enroll.token" in str(info.value) and "short" not in str(info.value)


def test_the_identity_overlays_the_file_and_the_environment_overlays_both(
    tmp_path: Path, signer: HubSigner
) -> None:
    key = signer.public_key_b64
    path = _config(tmp_path, {"hub": "http://hub.example:8000", "token": "ept_" + "t" * 40})
    path.write_text(
        path.read_text().replace("[http]", '[mqtt]\nhost = "10.0.0.9"\nport = 1\n[http]')
    )
    identity = Identity(
        device_id="field-1a2b3c4d",
        fleet="field",
        hub="http://hub.example:8000",
        broker=EnrollBroker(host="broker.example", port=8883, topic_root="fx", tls=False),
        username="field-1a2b3c4d",
        password="p" * 32,
        hub_public_key=key,
        hardware_id="serial:10000000abcd0001",
    )
    data_dir = tmp_path / "agent-data"
    written = save_identity(data_dir, identity)
    assert _mode(written) == 0o600 and load_identity(data_dir) == identity
    settings = load_settings(path, env={})
    assert settings.device_id == "field-1a2b3c4d" and settings.hub_public_key == key
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.topic_root) == (
        "broker.example",
        8883,
        "fx",
    )
    assert settings.mqtt.username == "field-1a2b3c4d" and settings.mqtt.password == "p" * 32
    env = {"EDGEPILOT_AGENT_MQTT_HOST": "192.168.1.5"}
    assert load_settings(path, env=env).mqtt.host == "192.168.1.5"
    # a broken identity file is named, its contents are not shown
    written.write_text('{"device_id": "x", "password": "' + "q" * 30 + '"}')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "identity.json" in str(info.value) and "q" * 30 not in str(info.value)


# -- against a real hub -----------------------------------------------------------------------
def test_enroll_writes_the_identity_deletes_the_token_and_a_reflashed_card_is_the_same_device(
    tmp_path: Path, hub_server: HubServer
) -> None:
    token = hub_server.token()
    token_file = tmp_path / "enroll-token"
    token_file.write_text(token["token"] + "\n")
    path = _config(
        tmp_path,
        {"hub": hub_server.url, "token_file": "enroll-token", "hardware_id": "serial:1000abcd"},
    )
    done = _agent("enroll", "--config", str(path))
    assert done.returncode == 0, done.stderr
    data_dir = tmp_path / "agent-data"
    identity = load_identity(data_dir)
    assert identity is not None and identity.fleet == "field"
    assert f"device {identity.device_id} in fleet field" in done.stdout
    assert identity.password not in done.stdout + done.stderr
    assert token["token"] not in done.stdout + done.stderr
    assert _mode(data_dir / "identity.json") == 0o600
    assert _mode(data_dir / "device-key.pem") == 0o600
    assert not token_file.exists() and "token file removed" in done.stdout
    key_pem = (data_dir / "device-key.pem").read_bytes()

    # what the agent will run with: the hub's key, the broker and the account it was given
    settings = load_settings(path, env={})
    assert settings.device_id == identity.device_id
    assert settings.hub_public_key == hub_server.hub.fleet.signer.public_key_b64
    assert settings.mqtt.username == identity.username
    assert settings.mqtt.password == identity.password
    devices = hub_server.http.get("/api/v1/devices").json()
    assert [d["id"] for d in devices] == [identity.device_id]

    # the card is re-flashed: a new data dir, the token again; the same device comes back
    for child in data_dir.iterdir():
        child.unlink()
    data_dir.rmdir()
    token_file.write_text(token["token"])
    config = load_config(path, env={})
    assert needs_enrollment(config) and config.enroll is not None
    again = enroll(config.enroll, config.data_dir)
    assert again.reenrolled and again.identity.device_id == identity.device_id
    assert again.identity.password != identity.password
    assert (data_dir / "device-key.pem").read_bytes() != key_pem  # a new card, a new key
    assert not token_file.exists()
    assert len(hub_server.http.get("/api/v1/devices").json()) == 1

    # re-enrolling on the same card keeps its key
    key_pem = (data_dir / "device-key.pem").read_bytes()
    third = enroll(config.enroll.model_copy(update={"token": token["token"]}), data_dir)
    assert third.reenrolled and (data_dir / "device-key.pem").read_bytes() == key_pem


def test_enroll_by_hand_without_a_config(tmp_path: Path, hub_server: HubServer) -> None:
    token = hub_server.token(fleet="yard")
    data_dir = tmp_path / "by-hand"
    done = _agent(
        "enroll",
        "--hub",
        hub_server.url,
        "--token",
        token["token"],
        "--data-dir",
        str(data_dir),
        "--hardware-id",
        "machine-id:0123abcd",
    )
    assert done.returncode == 0, done.stderr
    identity = load_identity(data_dir)
    assert identity is not None and identity.fleet == "yard"
    assert identity.hardware_id == "machine-id:0123abcd" and identity.hub == hub_server.url
    assert identity.device_id in done.stdout and identity.password not in done.stdout


def test_an_https_hub_with_a_private_ca(tmp_path: Path, mosquitto: tuple[str, int]) -> None:
    server = HubServer(tmp_path / "tls-hub", mosquitto, tls=True)
    try:
        token = server.token()
        args = ["enroll", "--hub", server.url, "--token", token["token"], "--hardware-id", "hw-t"]
        unknown_ca = _agent(*args, "--data-dir", str(tmp_path / "a"))
        assert unknown_ca.returncode == 1, unknown_ca.stderr
        assert "cannot reach the hub" in unknown_ca.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in unknown_ca.stderr
        ca = tmp_path / "hub-ca.pem"
        ca.write_bytes(server.tls.ca_cert.read_bytes())
        done = _agent(*args, "--data-dir", str(tmp_path / "b"), "--hub-ca-file", str(ca))
        assert done.returncode == 0, done.stderr
        identity = load_identity(tmp_path / "b")
        assert identity is not None and identity.hub == server.url
    finally:
        server.close()


def test_an_expired_token_exits_2_naming_the_reason(tmp_path: Path, hub_server: HubServer) -> None:
    token = hub_server.token(expires_s=3600)
    later = datetime.now(UTC) + timedelta(hours=2)
    hub_server.hub.enrollment.tokens.clock = lambda: later
    token_file = tmp_path / "enroll-token"
    token_file.write_text(token["token"])
    data_dir = tmp_path / "d"
    done = _agent(
        "enroll", "--hub", hub_server.url, "--token-file", str(token_file),
        "--data-dir", str(data_dir), "--hardware-id", "serial:feed0001",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused" in done.stderr and "expired" in done.stderr and "(401)" in done.stderr
    assert token["token"] not in done.stdout + done.stderr
    assert token_file.exists() and load_identity(data_dir) is None

    unreachable = _agent(
        "enroll", "--hub", f"http://127.0.0.1:{free_port()}", "--token-file", str(token_file),
        "--data-dir", str(data_dir), "--hardware-id", "serial:feed0001",
    )  # fmt: skip
    assert unreachable.returncode == 1 and "cannot reach the hub" in unreachable.stderr


def test_used_up_tokens_revoked_devices_and_bad_clocks_are_refused_with_the_reason(
    tmp_path: Path, hub_server: HubServer
) -> None:
    one_use = hub_server.token(max_uses=1)
    settings = EnrollSettings(hub=hub_server.url, token=one_use["token"], hardware_id="hw-one")
    first = enroll(settings, tmp_path / "one")
    other = settings.model_copy(update={"hardware_id": "hw-two"})
    with pytest.raises(EnrollmentRefused) as used_up:
        enroll(other, tmp_path / "two")
    assert used_up.value.status == 401 and used_up.value.retryable
    assert "has enrolled its 1 devices" in str(used_up.value)

    cut = hub_server.http.post(f"/api/v1/devices/{first.identity.device_id}/revoke")
    assert cut.status_code == 200, cut.text
    with pytest.raises(EnrollmentRefused) as revoked:
        enroll(settings, tmp_path / "one")
    assert revoked.value.status == 403 and "was revoked" in str(revoked.value)

    # a clock an hour slow: 400, which only the device can fix; the loop waits the longest
    live = settings.model_copy(update={"token": hub_server.token()["token"], "hardware_id": "x"})
    slow = time.time() - 3600
    with pytest.raises(EnrollmentRefused) as skewed:
        enroll(live, tmp_path / "three", clock=lambda: slow)
    assert skewed.value.status == 400 and not skewed.value.retryable
    assert "clock" in str(skewed.value)
    waits: list[float] = []

    def once(seconds: float) -> bool:
        waits.append(seconds)
        return True

    enroll_until_done(live, tmp_path / "three", clock=lambda: slow, wait=once)
    assert waits == [live.retry_max_s]


def test_the_loop_backs_off_on_a_revoked_token_and_never_raises(
    tmp_path: Path, hub_server: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = hub_server.token()
    hub_server.revoke_token(token["id"])
    settings = EnrollSettings(
        hub=hub_server.url, token=token["token"], hardware_id="serial:beef0001"
    )
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) == 5  # stop after five refusals

    with caplog.at_level(logging.INFO, logger="edge_agent.enroll"):
        result = enroll_until_done(settings, tmp_path / "d", wait=wait, rand=lambda: 0.0)
    assert result is None
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0]
    refusals = [r.getMessage() for r in caplog.records if r.name == "edge_agent.enroll"]
    assert len(refusals) == 5 and all("\n" not in line for line in refusals)
    assert all("refused (401)" in line and "was revoked" in line for line in refusals)
    assert all(f"retrying in {w:.1f} s" in line for w, line in zip(waits, refusals, strict=True))
    assert token["token"] not in caplog.text

    # jitter shortens each wait by at most a quarter; the wait never exceeds retry_max_s
    short = settings.model_copy(update={"retry_max_s": 5.0})
    waits.clear()
    enroll_until_done(short, tmp_path / "d", wait=wait, rand=lambda: 1.0)
    assert waits == [1.5, 3.0, 3.75, 3.75, 3.75]

    # a refusal that waits for the operator resolves itself: a live token, and the next try
    live = hub_server.token()
    tries: list[float] = []

    def replace_token(seconds: float) -> bool:
        tries.append(seconds)
        return False

    revoked_first = settings.model_copy(update={"token": token["token"]})
    with pytest.raises(EnrollmentRefused, match="revoked"):
        enroll(revoked_first, tmp_path / "d")
    done = enroll_until_done(
        revoked_first.model_copy(update={"token": live["token"]}),
        tmp_path / "d",
        wait=replace_token,
    )
    assert done is not None and tries == [] and not done.reenrolled


def test_run_with_a_revoked_token_keeps_retrying_then_enrolls_with_a_new_one(
    tmp_path: Path, hub_server: HubServer
) -> None:
    revoked = hub_server.token()
    hub_server.revoke_token(revoked["id"])
    token_file = tmp_path / "enroll-token"
    token_file.write_text(revoked["token"])
    path = _config(
        tmp_path,
        {
            "hub": hub_server.url,
            "token_file": "enroll-token",
            "hardware_id": "serial:cafe0001",
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
        },
    )
    status = _agent("status", "--config", str(path))
    assert status.returncode == 1 and "not enrolled yet" in status.stderr
    log = tmp_path / "agent.log"
    data_dir = tmp_path / "agent-data"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:

        def refusals() -> int:
            assert proc.poll() is None, log.read_text()
            return log.read_text().count("was revoked at")

        wait_until(lambda: refusals() >= 3, 30, "three refusals in the agent's log")
        text = log.read_text()
        assert revoked["token"] not in text and "retrying in" in text
        assert load_identity(data_dir) is None and proc.poll() is None

        # the operator hands the device a live token: the running agent enrolls and serves
        live = hub_server.token()
        token_file.write_text(live["token"])
        wait_until(lambda: (data_dir / "http.port").is_file(), 60, "the agent's HTTP API")
        identity = load_identity(data_dir)
        assert identity is not None and not token_file.exists()
        assert live["token"] not in log.read_text()
        assert identity.password not in log.read_text()

        def enrolled_status() -> dict[str, Any] | None:
            done = _agent("status", "--config", str(path))
            if done.returncode != 0:
                return None
            doc: dict[str, Any] = json.loads(done.stdout)
            return doc if doc.get("mqtt_connected") else None

        doc = wait_until(enrolled_status, 30, "the enrolled agent connected to the broker")
        assert doc["device_id"] == identity.device_id
        assert doc["enrollment"]["fleet"] == "field"
        assert doc["enrollment"]["hub"] == hub_server.url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_run_stops_cleanly_on_sigterm_while_backing_off(
    tmp_path: Path, hub_server: HubServer
) -> None:
    path = _config(
        tmp_path,
        {"hub": f"http://127.0.0.1:{free_port()}", "token": "ept_" + "u" * 40, "retry_min_s": 60},
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(path)], stderr=err, stdout=subprocess.DEVNULL
        )
    try:
        wait_until(lambda: "cannot reach the hub" in log.read_text(), 30, "the first failure")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "ept_" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
