"""Zero-touch, end to end, with real processes: a Raspberry Pi OS card image is flashed for a
fleet, its first-boot scripts run against a device's root file system, and the agent they
installed enrolls with a served hub over REST, connects to Mosquitto (TLS, passwords, ACL)
with the identity it got, receives a deployment and answers a prediction. A second card from
the same image gets its own identity; a revoked device is cut off by the broker; a card
flashed with an expired token fails cleanly, backing off without exiting.

What stands in for the device: a folder as its root (the scripts take `EDGEPILOT_ROOT`), a
hardware id per card through the agent's own override (this machine has one machine id), and
the agent started from the unit's ExecStart with its paths relocated under that root by the
agent's environment overrides. The installed venv gets the test venv's packages through a .pth
file: on a device pip downloads them, and no test may reach the package index.
"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.auth.tokens import read_token_file
from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.enroll_store import EnrollTokenCreate, EnrollTokenStore, FleetStore
from cloud_hub.fleet.schemas import DeploymentCreate
from cloud_hub.hub import Hub
from tests.agent_processes import AgentProc
from tests.cloud_hub.provisioning.flashing.images import make_image
from tests.cloud_hub.provisioning.flashing.test_firstboot import fake_device, run_script
from tests.conftest import BIN, REPO, SecureMosquitto, free_port, run_cli, wait_for_port
from tests.e2e.test_fleet_loop import IRIS_SAMPLE, iris_onnx, register
from tests.waiting import wait_until

__all__ = ["iris_onnx"]  # the fixture, shared with the fleet loop


class ServedHub:
    """`edgepilot hub serve` on a TLS Mosquitto configured by `hub broker-config`, told the
    broker's pid file so that it reloads the broker itself after enrollments and revocations."""

    def __init__(self, tmp_path: Path, start_broker: Callable[..., SecureMosquitto]) -> None:
        self.data_dir = tmp_path / "hub"
        self.broker = start_broker(self.data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "hub.log"
        self.env = {**os.environ, "EDGEPILOT_DATA_DIR": str(self.data_dir), "COLUMNS": "200"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "edgepilot"), "hub", "serve", "--port", str(self.port),
                 "--no-scheduler", "--mqtt", f"127.0.0.1:{self.broker.port}", "--mqtt-tls",
                 "--broker-pid-file", str(self.broker.pid_file)],
                env=self.env,
                stdout=out,
                stderr=out,
                cwd=REPO,
            )  # fmt: skip
        wait_for_port(self.port, proc=self.proc, timeout=60)
        token = read_token_file(HubSettings(data_dir=self.data_dir).admin_token_path)
        assert token is not None
        self.api = httpx.Client(
            base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}
        )
        wait_until(lambda: self.api.get("/health").status_code == 200, 30, "the hub's API")
        # the test's own view of the registry (models, deployments), as the CLI would open it
        self.hub = Hub.open(HubSettings(data_dir=self.data_dir, run_scheduler=False))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = run_cli(list(args), self.env)
        assert done.returncode == 0, done.stderr
        return done

    def device(self, device_id: str) -> dict[str, Any]:
        got = self.api.get(f"/devices/{device_id}")
        assert got.status_code == 200, got.text
        return dict(got.json())

    def close(self) -> None:
        self.api.close()
        self.hub.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def served_hub(
    tmp_path: Path, secure_mosquitto: Callable[..., SecureMosquitto]
) -> Iterator[ServedHub]:
    hub = ServedHub(tmp_path, secure_mosquitto)
    yield hub
    hub.close()


class FlashedDevice(AgentProc):
    """A card's first boot and the agent it leaves, run as its systemd unit would run it."""

    def __init__(self, root: Path, hardware_id: str) -> None:
        self.root = root
        self.hardware_id = hardware_id
        super().__init__(
            root / "etc/edgepilot/agent.toml", root / "var/lib/edgepilot", root / "agent.log"
        )

    def first_boot(self, image: Path, wheel: Path) -> None:
        boot = fake_device(self.root, image)
        first = run_script(boot / "firstrun.sh", self.root, wheel)  # systemd.run, no network
        assert first.returncode == 0, first.stderr
        second = run_script(self.root / "var/lib/edgepilot-setup/setup.sh", self.root, wheel)
        assert second.returncode == 0, second.stderr
        # stands in for the packages pip would download on a device
        venv_site = next((self.root / "opt/edgepilot/venv/lib").glob("python*/site-packages"))
        (venv_site / "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def exec_start(self) -> list[str]:
        """The installed unit's ExecStart, its paths under this device's root."""
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(self.root / "etc/systemd/system/edgepilot-agent.service")
        argv = shlex.split(unit["Service"]["ExecStart"])
        return [str(self.root) + a if a.startswith("/") else a for a in argv]

    def start(self, timeout: float = 60.0) -> FlashedDevice:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "EDGEPILOT_AGENT_DATA_DIR": str(self.data_dir),
            "EDGEPILOT_AGENT_ENROLL_TOKEN_FILE": str(self.root / "etc/edgepilot/enroll-token"),
            "EDGEPILOT_AGENT_ENROLL_HARDWARE_ID": self.hardware_id,
            "EDGEPILOT_AGENT_ENROLL_RETRY_MIN_S": "1",
            "EDGEPILOT_AGENT_HTTP_PORT": "0",
        }
        env.pop("VIRTUAL_ENV", None)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.exec_start(), stdout=subprocess.DEVNULL, stderr=err, cwd=self.root, env=env
            )
        return self

    def identity(self) -> dict[str, Any]:
        import json

        return dict(json.loads((self.data_dir / "identity.json").read_text()))


def test_a_flashed_card_enrolls_serves_a_deployment_and_can_be_revoked(
    served_hub: ServedHub, tmp_path: Path, agent_wheel: Path, iris_onnx: list[bytes]
) -> None:
    hub = served_hub
    hub.cli("fleets", "create", "field", "--group", "yard", "--tag", "cam")
    image = make_image(tmp_path / "raspios-bookworm.img")
    flashed = tmp_path / "field.img"
    res = run_cli(
        ["flash", str(image), "--fleet", "field", "--hub", hub.url, "--max-uses", "2",
         "--out", str(flashed)],
        hub.env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    cards = [
        FlashedDevice(tmp_path / "pi-a", "serial:10000000aaaa0001"),
        FlashedDevice(tmp_path / "pi-b", "serial:10000000bbbb0002"),
    ]
    try:
        for card in cards:
            card.root.mkdir()
            card.first_boot(flashed, agent_wheel)
            card.start().wait_ready(60)
        first, second = (card.identity() for card in cards)
        assert first["device_id"] != second["device_id"]  # one image, two identities
        for card in cards:
            assert not (card.root / "etc/edgepilot/enroll-token").exists()  # deleted once used
            assert oct((card.data_dir / "identity.json").stat().st_mode & 0o777) == "0o600"
            wait_until(lambda c=card: c.status()["mqtt_connected"], 30, "the agent on the broker")
        device = hub.device(first["device_id"])
        assert device["fleet"] == "field" and device["group"] == "yard"
        wait_until(lambda: hub.device(first["device_id"])["status"] == "online", 30, "online")

        # a deployment reaches the enrolled device over the broker, and it answers
        version = register(hub.hub, iris_onnx[0])
        hub.hub.fleet.deployments.create(
            DeploymentCreate(version=str(version.id), device=first["device_id"])
        )
        pi_a, pi_b = cards
        wait_until(lambda: pi_a.status()["active_version"] == version.id, 90, "the model active")
        code, answer = pi_a.predict(IRIS_SAMPLE)
        assert code == 200 and answer["model_version"] == version.id, answer

        # revoked: the broker drops the device and refuses it from then on
        before = len(hub.broker.log_text())
        cut = hub.api.post(f"/devices/{second['device_id']}/revoke")
        assert cut.status_code == 200, cut.text
        wait_until(lambda: not pi_b.status()["mqtt_connected"], 10, "the revoked device cut off")
        since = lambda: hub.broker.log_text()[before:]  # noqa: E731
        assert f"Client {second['device_id']} disconnected" in since()
        wait_until(
            lambda: "disconnected, not authorised" in since(),
            20,
            "the broker refusing the revoked device's reconnection",
        )
        assert not pi_b.status()["mqtt_connected"]
        assert pi_a.status()["mqtt_connected"]  # the other device is untouched
        # flash --max-uses 2: the token has enrolled its two devices
        tokens = hub.api.get("/enroll-tokens").json()
        assert [t["uses"] for t in tokens] == [2] and tokens[0]["state"] == "exhausted"
    finally:
        for card in cards:
            card.kill()


def test_a_card_flashed_with_an_expired_token_backs_off_without_exiting(
    served_hub: ServedHub, tmp_path: Path, agent_wheel: Path
) -> None:
    hub = served_hub
    hub.cli("fleets", "create", "late")
    db = Database(hub.data_dir / "registry.db")
    week_ago = datetime.now(UTC) - timedelta(days=8)
    old = EnrollTokenStore(db, FleetStore(db), clock=lambda: week_ago).create(
        EnrollTokenCreate(fleet="late", expires_s=86400)
    )
    db.close()
    token_file = tmp_path / "token"
    token_file.write_text(old.token + "\n")
    image = make_image(tmp_path / "raspios.img")
    res = run_cli(["flash", str(image), "--hub", hub.url, "--token-file", str(token_file)], hub.env)
    assert res.returncode == 0, res.stderr
    card = FlashedDevice(tmp_path / "pi-late", "serial:10000000cccc0003")
    card.root.mkdir()
    try:
        card.first_boot(image, agent_wheel)
        card.start()
        wait_until(lambda: card.stderr().count("expired") >= 2, 30, "two refused attempts")
        assert card.proc is not None and card.proc.poll() is None  # backing off, not exiting
        assert old.token not in card.stderr()
        assert not (card.data_dir / "identity.json").exists()
        assert hub.api.get("/devices").json() == []
        assert (card.root / "etc/edgepilot/enroll-token").exists()  # kept for a later try
    finally:
        card.kill()
