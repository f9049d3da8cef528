"""The balena release: a docker-compose.yml within the compose 2.4 subset balena supports, the
balena.yml manifest, a Dockerfile.template that renders for every supported device type, and
the start script, run for real: it enrolls with the balena device UUID as hardware id, and waits
(no restart loop) while the fleet variables are not set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import firmware_configs
from edge_agent.core.wire import ENROLL_PATH
from tests.firmware_configs.dockerfile import parse
from tests.firmware_configs.test_dockerfiles import assert_runs_the_agent_safely
from tests.waiting import wait_until

BALENA = firmware_configs.root() / "balena"
# https://docs.balena.io/reference/supervisor/docker-compose/ ("Supported fields")
SUPPORTED_SERVICE_KEYS = {
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "cpu_shares", "cpu_quota",
    "cpuset", "devices", "depends_on", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "environment", "expose", "extra_hosts", "group_add", "healthcheck",
    "hostname", "image", "ipc", "labels", "mac_address", "mem_limit", "mem_reservation",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "ports", "privileged", "read_only", "restart", "security_opt", "shm_size",
    "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "userns_mode",
    "volumes", "working_dir",
}  # fmt: skip
DEVICE_TYPES = [
    "raspberrypi4-64",
    "raspberrypi5",
    "jetson-orin-nano-devkit-nvme",
    "jetson-orin-nx-xavier-nx-devkit",
]


def load(name: str) -> Any:
    return yaml.safe_load((BALENA / name).read_text())


def test_compose_file_is_in_balenas_subset() -> None:
    compose = load("docker-compose.yml")
    assert compose["version"] == "2.4"
    assert set(compose) <= {"version", "services", "volumes", "networks"}  # no secrets/configs
    assert list(compose["services"]) == ["agent"]
    agent = compose["services"]["agent"]
    assert set(agent) <= SUPPORTED_SERVICE_KEYS  # so no deploy, secrets, configs
    assert agent["build"] == "." and (BALENA / "Dockerfile.template").is_file()
    assert agent["restart"] == "always"
    for volume in agent["volumes"]:
        assert isinstance(volume, str)  # balena takes the short syntax only
        source, target = volume.split(":")[:2]
        assert not source.startswith(("/", ".", "~"))  # named volumes only, no bind mounts
        assert source in compose["volumes"]
    assert "edgepilot-data:/var/lib/edgepilot" in agent["volumes"]
    assert agent["environment"]["EDGEPILOT_AGENT_DATA_DIR"] == "/var/lib/edgepilot"
    assert all(key.startswith("io.balena.") for key in agent.get("labels", {}))


def test_manifest_names_the_device_types() -> None:
    manifest = load("balena.yml")
    assert manifest["type"] == "sw.application" and manifest["name"]
    assert str(manifest["version"]).count(".") == 2
    assert manifest["data"]["defaultDeviceType"] == "raspberrypi5"
    assert manifest["data"]["supportedDeviceTypes"] == DEVICE_TYPES


@pytest.mark.parametrize("machine", DEVICE_TYPES)
def test_dockerfile_template_renders_for_each_device_type(machine: str) -> None:
    text = (BALENA / "Dockerfile.template").read_text()
    rendered = text.replace("%%BALENA_MACHINE_NAME%%", machine).replace(
        "%%BALENA_ARCH%%", "aarch64"
    )
    assert "%%" not in rendered
    df = parse(rendered)
    assert df.final.base == f"balenalib/{machine}-debian-python:3.11-bookworm-run"
    assert_runs_the_agent_safely(df.final, python="python3")
    assert any("pip install --no-cache-dir" in i.args for i in df.final.all("RUN"))
    (arg,) = [i for i in df.final.all("ARG") if "EDGEPILOT_SPEC" in i.args]
    assert arg.pairs()["EDGEPILOT_SPEC"] == "edgepilot[agent]"
    for ins in df.final.all("COPY"):
        for source in ins.args.split()[:-1]:
            assert (BALENA / source).is_file()  # balena's build context is this folder
    assert df.final.all("CMD")[0].exec_form() == ["/bin/sh", "/usr/local/bin/edgepilot-start"]
    assert not df.final.all("ENTRYPOINT")  # balenalib's entry point stays


class FakeHub:
    """An HTTP server that records enrollment requests and refuses them as an expired token."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == ENROLL_PATH:
                    hub.requests.append(json.loads(body))
                reply = json.dumps({"detail": "enrollment token expired"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def start(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """The start script as the container runs it, with this test venv as the image's Python."""
    return subprocess.Popen(
        ["sh", str(BALENA / "start.sh")],
        env={
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "EDGEPILOT_AGENT_DATA_DIR": str(tmp_path / "data"),
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr").open("w"),
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_start_script_enrolls_with_the_device_uuid(tmp_path: Path, fake_hub: FakeHub) -> None:
    (tmp_path / "data").mkdir()
    uuid = "7f3c9a1e2b4d4f6a8c0e1a2b3c4d5e6f"
    proc = start(
        tmp_path,
        BALENA_DEVICE_UUID=uuid,
        EDGEPILOT_AGENT_ENROLL_HUB=fake_hub.url,
        EDGEPILOT_AGENT_ENROLL_TOKEN="ept_balena_start_test_token",
    )
    try:
        wait_until(lambda: fake_hub.requests, timeout=60, what="an enrollment request")
        assert fake_hub.requests[0]["hardware_id"] == uuid
        assert proc.poll() is None  # refused: it backs off and keeps running
    finally:
        stop(proc)


def test_start_script_keeps_a_configured_hardware_id(tmp_path: Path, fake_hub: FakeHub) -> None:
    (tmp_path / "data").mkdir()
    proc = start(
        tmp_path,
        BALENA_DEVICE_UUID="7f3c9a1e2b4d4f6a8c0e1a2b3c4d5e6f",
        EDGEPILOT_AGENT_ENROLL_HARDWARE_ID="line-3-camera",
        EDGEPILOT_AGENT_ENROLL_HUB=fake_hub.url,
        EDGEPILOT_AGENT_ENROLL_TOKEN="ept_balena_start_test_token",
    )
    try:
        wait_until(lambda: fake_hub.requests, timeout=60, what="an enrollment request")
        assert fake_hub.requests[0]["hardware_id"] == "line-3-camera"
    finally:
        stop(proc)


def test_start_script_waits_for_the_fleet_variables(tmp_path: Path) -> None:
    proc = start(tmp_path, BALENA_DEVICE_UUID="7f3c9a1e2b4d4f6a8c0e1a2b3c4d5e6f")
    try:
        stderr = tmp_path / "stderr"
        wait_until(lambda: "waiting" in stderr.read_text(), timeout=30, what="its message")
        assert "EDGEPILOT_AGENT_ENROLL_HUB" in stderr.read_text()
        assert "edgepilot balena setup" in stderr.read_text()
        assert proc.poll() is None  # no exit, so no restart loop
    finally:
        stop(proc)
