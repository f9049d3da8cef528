"""A live fleet for tests of what watches it (the web dashboard, `edgepilot watch`): a real
`edgepilot hub serve` process with its fleet service on Mosquitto, devices registered over REST
and real `edgepilot-agent run` processes serving a model deployed through the hub.

    from tests.live_fleet import live_fleet  # noqa: F401  (the fixture: 3 devices)

or, for another size, `LiveFleet(tmp_path, mosquitto, devices=5).start()` and `close()`.

Everything goes through the hub's REST API with real tokens: the admin token the hub writes
into its data dir, and a viewer token (`viewer_token`) for what only looks. Device ids are
unique per fleet (`<prefix>-<n>`), so fleets of several tests share the session's broker.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.auth.tokens import read_token_file
from cloud_hub.core.settings import HubSettings
from tests.agent_processes import AgentProc, agent_toml
from tests.conftest import BIN, REPO, free_port, wait_for_port
from tests.waiting import wait_until

__all__ = ["IRIS_LABELS", "IRIS_SAMPLE", "LiveFleet", "iris_model", "live_fleet"]

IRIS_SAMPLE = [[5.1, 3.5, 1.4, 0.2]]
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
FINAL = ("completed", "halted", "superseded")


@functools.cache
def iris_model(hidden: int = 32, seed: int = 0) -> bytes:
    """A real ONNX classifier of the iris data (scikit-learn, converted): one per (hidden,
    seed), made once per session."""
    from tests.e2e.test_fleet_loop import _iris_onnx

    return _iris_onnx(hidden, seed)


class LiveFleet:
    """The hub process, its devices and their agents. `start()` brings it all up: the hub,
    `devices` registered devices (tag `live`) with their agents online, and version 1 of
    `live/iris` deployed to all of them and active."""

    def __init__(
        self,
        root: Path,
        broker: tuple[str, int],
        *,
        devices: int = 3,
        telemetry_interval_s: float = 1.0,
        deploy: bool = True,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.size = devices
        self.telemetry_interval_s = telemetry_interval_s
        self.deploy_first = deploy
        self.prefix = f"lf{uuid.uuid4().hex[:6]}"
        self.data_dir = root / "hub"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "hub.log"
        self.env = {
            **os.environ,
            "EDGEPILOT_DATA_DIR": str(self.data_dir),
            "COLUMNS": "200",
            "OMP_NUM_THREADS": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.api: httpx.Client | None = None
        self.admin_token = ""
        self.viewer_token = ""
        self.agents: dict[str, AgentProc] = {}
        self.device_ids: list[str] = []
        self.versions: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []

    # -- bringing it up ------------------------------------------------------------------------
    def start(self) -> LiveFleet:
        self.start_hub()
        ids = [f"{self.prefix}-{n}" for n in range(self.size)]
        for device_id in ids:
            self.register_device(device_id, tags=["live"], hardware="test-rig")
        with ThreadPoolExecutor(max_workers=max(1, len(ids))) as pool:
            list(pool.map(self.start_agent, ids))
        for device_id in ids:
            self.wait_status(device_id, "online")
        if self.deploy_first and ids:
            version = self.register_model(iris_model())
            first = self.deploy(str(version["id"]), tag="live")
            self.wait_deployment(first["id"], "completed")
        return self

    def start_hub(self) -> None:
        host, port = self.broker
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "edgepilot"), "hub", "serve", "--port", str(self.port),
                 "--no-scheduler", "--mqtt", f"{host}:{port}"],
                env=self.env,
                stdout=out,
                stderr=out,
                cwd=REPO,
            )  # fmt: skip
        wait_for_port(self.port, proc=self.proc, timeout=60)
        token = read_token_file(HubSettings(data_dir=self.data_dir).admin_token_path)
        assert token is not None, "the hub wrote no admin token"
        self.admin_token = token
        self.api = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        wait_until(lambda: self.api_get("/health") is not None, 30, "the hub's API")
        if not self.viewer_token:  # the same token after a restart: the hub kept it
            self.viewer_token = self.make_token(f"{self.prefix}-viewer", "viewer")

    def make_token(self, name: str, role: str, expires_in_s: float | None = None) -> str:
        body: dict[str, Any] = {"name": name, "role": role}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        made = self.http.post("/tokens", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    def register_device(self, device_id: str, **fields: Any) -> dict[str, Any]:
        """POST /devices (as the admin), and the agent's config from what it returned."""
        reg = self.http.post("/devices", json={"id": device_id, **fields})
        assert reg.status_code == 201, reg.text
        doc = dict(reg.json())
        home = self.root / device_id
        home.mkdir(exist_ok=True)
        config = home / "agent.toml"
        config.write_text(
            agent_toml(
                device_id,
                home / "data",
                self.broker,
                doc["hub_public_key"],
                mqtt={
                    "username": doc["username"],
                    "password": doc["password"],
                    "topic_root": doc["broker"]["topic_root"],
                },
                telemetry={"interval_s": self.telemetry_interval_s},
                transfer={"chunk_size": 4096, "window": 4, "timeout_s": 2.0},
                forwarder={"resend_after_s": 2.0},
            )
        )
        self.agents[device_id] = AgentProc(config, home / "data", home / "agent.log")
        self.device_ids.append(device_id)
        return doc

    def start_agent(self, device_id: str) -> AgentProc:
        return self.agents[device_id].start(timeout=60)

    # -- what tests do ---------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        assert self.api is not None, "start() first"
        return self.api

    def api_get(self, path: str, **params: Any) -> Any:
        """GET an API path as the admin: the JSON, or None when it is not a 200."""
        try:
            got = self.http.get(path, params=params or None)
        except httpx.HTTPError:
            return None
        return got.json() if got.status_code == 200 else None

    def device(self, device_id: str) -> dict[str, Any]:
        doc = self.api_get(f"/devices/{device_id}")
        assert doc is not None, f"no device {device_id}"
        return dict(doc)

    def overview(self) -> dict[str, Any]:
        got = self.http.get("/overview", headers={"Authorization": f"Bearer {self.viewer_token}"})
        assert got.status_code == 200, got.text
        return dict(got.json())

    def wait_status(self, device_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (
                    (d := self.api_get(f"/devices/{device_id}")) and d["status"] == status and d
                ),
                timeout,
                f"{device_id} {status} at the hub",
            )
        )

    def stop_agent(self, device_id: str) -> None:
        """SIGKILL the agent: its connection drops without a goodbye, so the broker publishes
        its last will (offline)."""
        self.agents[device_id].kill()

    def register_model(
        self, data: bytes, project: str = "live", model: str = "iris"
    ) -> dict[str, Any]:
        """Upload an ONNX classifier of the iris task as a new version (REST)."""
        made = self.http.post(
            f"/projects/{project}/models/{model}/versions",
            files={"file": (f"{model}.onnx", data, "application/octet-stream")},
            data={
                "labels": json.dumps(IRIS_LABELS),
                "preprocessing": json.dumps({"input_kind": "tabular", "layout": "NF"}),
            },
        )
        assert made.status_code == 201, made.text
        version = dict(made.json())
        self.versions.append(version)
        return version

    def deploy(self, version: str, **fields: Any) -> dict[str, Any]:
        """POST /deployments: `version` (an id or PROJECT/MODEL:N) with the other fields of
        DeploymentCreate (tag, device, devices, strategy, canary_count, promote_after_s, ...)."""
        made = self.http.post("/deployments", json={"version": version, **fields})
        assert made.status_code == 201, made.text
        doc = dict(made.json())
        self.deployments.append(doc)
        return doc

    def deployment(self, deployment_id: int) -> dict[str, Any]:
        doc = self.api_get(f"/deployments/{deployment_id}")
        assert doc is not None, f"no deployment {deployment_id}"
        return dict(doc)

    def wait_deployment(
        self, deployment_id: int, status: str = "completed", timeout: float = 60
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            doc = self.deployment(deployment_id)
            if doc["status"] != status and doc["status"] in FINAL:
                raise AssertionError(f"deployment {deployment_id} is {doc['status']}: {doc}")
            return doc if doc["status"] == status else None

        return dict(wait_until(reached, timeout, f"deployment {deployment_id} {status}"))

    def predict(self, device_id: str, n: int = 1) -> None:
        """`n` predictions on the device's local API (inference numbers for its telemetry)."""
        for _ in range(n):
            code, body = self.agents[device_id].predict(IRIS_SAMPLE)
            assert code == 200, body

    def hub_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- tearing it down -------------------------------------------------------------------------
    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def live_fleet(tmp_path: Path, mosquitto: tuple[str, int]) -> Iterator[LiveFleet]:
    """A started LiveFleet of 3 devices (tag `live`), `live/iris:1` active on all of them."""
    fleet = LiveFleet(tmp_path / "live-fleet", mosquitto)
    try:
        yield fleet.start()
    finally:
        fleet.close()
