"""Shared parts of the agent and delivery benchmarks: a real hub, Mosquitto, agent processes.

Everything runs on loopback: a Mosquitto broker (cloud_hub.devtools.local_broker.LocalBroker), the
hub's
registry and FleetService in this process (as `edgepilot hub serve --mqtt` runs them), and agents
as real `edgepilot-agent run --config agent.toml` processes, each configured with the file the hub
writes at registration (`cloud_hub.fleet.agent_config`; the HTTP port is set to 0 through the
agent's environment override, so many agents can share the host).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.core.settings import HubSettings  # noqa: E402
from cloud_hub.devtools.local_broker import LocalBroker  # noqa: E402
from cloud_hub.fleet.agent_config import agent_config  # noqa: E402
from cloud_hub.fleet.mqtt_service import FleetService  # noqa: E402
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate  # noqa: E402
from cloud_hub.hub import Hub  # noqa: E402

BIN = Path(sys.executable).parent
AGENT = BIN / "edgepilot-agent"
EDGEPILOT = BIN / "edgepilot"


def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    mosquitto = "-"
    try:
        out = subprocess.run(
            ["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, timeout=5
        ).stdout
        mosquitto = out.splitlines()[0].split("version", 1)[1].strip() if out else "-"
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "ai-edge-litert": version("ai-edge-litert"),
        "paho-mqtt": version("paho-mqtt"),
        "mosquitto": mosquitto,
        "loadavg": loadavg(),
    }


def print_machine(info: dict[str, str]) -> None:
    print(
        f"machine: nproc {info['nproc']}, {info['cpu']}, Python {info['python']}, onnxruntime "
        f"{info['onnxruntime']}, ai-edge-litert {info['ai-edge-litert']}, paho-mqtt "
        f"{info['paho-mqtt']}, mosquitto {info['mosquitto']}; load average {info['loadavg']}"
    )


def train_digits_cnn(hub_dir: Path) -> int:
    """`edgepilot train --project digits --dataset digits --model cnn` into hub_dir; version id."""
    out = subprocess.run(
        [
            str(EDGEPILOT),
            "--data-dir",
            str(hub_dir),
            "train",
            "--project",
            "digits",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=True,
    )
    return int(json.loads(out.stdout)["version"]["id"])


def digits_version(hub_dir: Path) -> int:
    """The newest digits CNN version in hub_dir (trained by train_digits_cnn)."""
    with sqlite3.connect(hub_dir / "registry.db") as conn:
        row = conn.execute(
            "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id "
            "JOIN projects p ON p.id = m.project_id WHERE p.name = 'digits' "
            "ORDER BY v.id DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise SystemExit(f"{hub_dir} holds no digits model: train one or leave out --hub-data")
    return int(row[0])


def digit_pngs(limit: int = 200) -> tuple[list[bytes], list[int]]:
    from cloud_hub.devtools.demo import digit_images

    pngs, labels = digit_images(limit)
    return pngs, [int(v) for v in labels]


class Agent:
    """One `edgepilot-agent run` process with its own data directory."""

    def __init__(self, device_id: str, config: Path, data_dir: Path, log: Path) -> None:
        self.device_id = device_id
        self.config = config
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.spawned_at = 0.0

    def spawn(self, extra_env: dict[str, str] | None = None) -> None:
        (self.data_dir / "http.port").unlink(missing_ok=True)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "EDGEPILOT_AGENT_HTTP_PORT": "0",
            "EDGEPILOT_AGENT_TELEMETRY_INTERVAL_S": "3600",
            **(extra_env or {}),
        }
        with self.log.open("ab") as err:
            self.spawned_at = time.perf_counter()
            self.proc = subprocess.Popen(
                [str(AGENT), "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.config.parent,
                env=env,
            )

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"agent {self.device_id} exited ({code}):\n{tail}")

    def read_port(self) -> int:
        port_file = self.data_dir / "http.port"
        try:
            text = port_file.read_text().strip()
        except FileNotFoundError:
            return 0
        if text:
            self.port = int(text)
        return self.port

    def wait_http(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            self.check()
            return self.read_port() > 0 and self.get("/v1/health")[0] == 200

        wait_until(up, timeout, f"{self.device_id}'s HTTP API", poll=0.05)

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30
    ) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, ConnectionError):
            return 0, {}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return self.request("GET", path)

    def predict(self, inputs: Any) -> tuple[int, dict[str, Any]]:
        return self.request("POST", "/v1/predict", json.dumps({"inputs": inputs}).encode())

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Fleet:
    """A broker, a hub (registry + FleetService in this process) and its agents.

    `with Fleet(workdir, hub_dir) as fleet:` starts the broker and the hub's MQTT service;
    leaving it stops every agent, the service, the hub and the broker.
    """

    def __init__(
        self,
        workdir: Path,
        hub_dir: Path,
        *,
        client_id: str | None = None,
        **settings: Any,
    ) -> None:
        self.workdir = workdir
        self.hub_dir = hub_dir
        self.broker = LocalBroker(workdir / "broker")
        self.client_id = client_id or f"hub-{uuid.uuid4().hex[:8]}"
        self.extra_settings = settings
        self.hub: Hub | None = None
        self.service: FleetService | None = None
        self.agents: list[Agent] = []

    def __enter__(self) -> Fleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.hub = Hub.open(
            HubSettings(
                data_dir=self.hub_dir,
                run_scheduler=False,
                mqtt_host=self.broker.host,
                mqtt_port=self.broker.port,
                mqtt_username="hub",
                mqtt_password="anonymous-broker",
                mqtt_client_id=self.client_id,
                **self.extra_settings,
            )
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for agent in self.agents:
            agent.stop()
        self.stop_service()
        if self.hub is not None:
            self.hub.close()
        self.broker.stop()

    @property
    def the_hub(self) -> Hub:
        assert self.hub is not None
        return self.hub

    def start_service(self) -> FleetService:
        self.service = FleetService.from_hub(self.the_hub)
        self.service.start()
        if not self.service.wait_connected(15):
            raise RuntimeError("the hub's MQTT client did not connect")
        return self.service

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def register(
        self, device_id: str, runtimes: list[str], *, tags: list[str] | None = None
    ) -> Agent:
        """Register a device at the hub and write the agent.toml the hub hands out."""
        reg = self.the_hub.fleet.devices.register(
            DeviceCreate(id=device_id, runtimes=runtimes, tags=tags or [])  # type: ignore[arg-type]
        )
        directory = self.workdir / device_id
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "agent.toml"
        data_dir = directory / "data"
        config.write_text(agent_config(reg, data_dir=str(data_dir)))
        agent = Agent(device_id, config, data_dir, directory / "agent.log")
        self.agents.append(agent)
        return agent

    def deploy(
        self,
        version: int | str,
        *,
        artifact: str,
        device: str | None = None,
        tag: str | None = None,
    ) -> int:
        """An all-at-once deployment to one device or a tag; its id."""
        dep = self.the_hub.fleet.deployments.create(
            DeploymentCreate(version=str(version), artifact=artifact, device=device, tag=tag)
        )
        return dep.id

    def query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """Read the hub's database on a connection of our own (WAL: never blocks the hub)."""
        with sqlite3.connect(self.hub_dir / "registry.db", timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    def device_states(self, deployment_id: int) -> dict[str, str]:
        rows = self.query(
            "SELECT device_id, state FROM deployment_devices WHERE deployment_id = ?",
            [deployment_id],
        )
        return {str(d): str(s) for d, s in rows}

    def online(self, device_id: str) -> bool:
        rows = self.query("SELECT status FROM devices WHERE id = ?", [device_id])
        return bool(rows) and rows[0][0] == "online"

    def wait_active(self, deployment_id: int, timeout: float = 120.0) -> None:
        def done() -> bool:
            for agent in self.agents:
                agent.check()
            states = self.device_states(deployment_id)
            bad = {d: s for d, s in states.items() if s in ("failed", "rolled_back")}
            if bad:
                raise RuntimeError(f"deployment {deployment_id} failed on {bad}")
            return bool(states) and all(s == "active" for s in states.values())

        wait_until(done, timeout, f"deployment {deployment_id} to be active", poll=0.02)


def build_mlp(hidden: int, layers: int = 2, seed: int = 0) -> bytes:
    """An ONNX MLP 64 -> hidden (-> hidden)* -> 10, ReLU, softmax, built with onnx.helper;
    random weights (speed and size are all the benchmarks need)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [64] + [hidden] * layers + [10]
    nodes, inits = [], []
    current = "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"h{i}"]))
        current = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
