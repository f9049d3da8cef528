"""`edgepilot demo`: the whole loop on one machine, with real processes.

A broker (Mosquitto, else the embedded one), the hub (`edgepilot hub serve` with its MQTT side),
two agents (`edgepilot-agent run`, each with its own data directory), the digits CNN trained,
converted and quantized, TFLite int8 deployed to one agent (LiteRT) and ONNX to the other, and
digit images fed to both over their HTTP APIs. `DemoView` snapshots what a user watches: devices,
model versions, inferences, on-device accuracy, latency, and logs made on the device vs stored at
the hub.

At the end the feeders stop first, then the demo waits until every log made on a device is stored
at the hub, so the final figures show the store-and-forward loop closing (or say that it did not).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cloud_hub.auth.tokens import read_token_file
from cloud_hub.core.settings import HubSettings
from cloud_hub.devtools.local_broker import BrokerChoice, LocalBroker, free_port

__all__ = ["DEMO_DEVICES", "DemoDevice", "DemoError", "DemoFigures", "DemoRunner", "DemoSettings"]

MARKER = ".edgepilot-demo"
BIN = Path(sys.executable).parent


class DemoError(RuntimeError):
    """The demo could not bring a part up; the message says which and why."""


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    hardware: str
    runtime: str  # what the agent runs: litert or onnxruntime
    artifact: str  # FORMAT/PRECISION deployed to it


DEMO_DEVICES = (
    DemoDevice("demo-pi", "raspberrypi4-64", "litert", "tflite/int8"),
    DemoDevice("demo-jetson", "jetson-nano", "onnxruntime", "onnx/fp32"),
)


@dataclass
class DemoSettings:
    workdir: Path
    duration_s: float | None = None  # None: until interrupted
    rate_per_device: float = 20.0  # images per second fed to each agent
    epochs: int | None = None  # CNN epochs (None: the trainer's default)
    devices: tuple[DemoDevice, ...] = DEMO_DEVICES
    broker: BrokerChoice = "auto"


@dataclass
class DeviceFigures:
    device_id: str
    runtime: str
    artifact: str
    status: str = "starting"
    active_version: str | None = None
    active_version_id: int | None = None
    inferences: int = 0
    correct: int = 0
    errors: int = 0
    p50_ms: float | None = None
    logs_made: int = 0
    logs_at_hub: int = 0

    @property
    def accuracy(self) -> float | None:
        answered = self.inferences
        return None if answered == 0 else self.correct / answered


@dataclass
class DemoFigures:
    broker: str = ""
    hub_url: str = ""
    deployed_version: str | None = None
    deployed_version_id: int | None = None
    phase: str = "starting"
    elapsed_s: float = 0.0
    devices: list[DeviceFigures] = field(default_factory=list)
    all_logs_at_hub: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for d, fig in zip(out["devices"], self.devices, strict=True):
            d["accuracy"] = None if fig.accuracy is None else round(fig.accuracy, 4)
        return out


def prepare_workdir(workdir: Path) -> None:
    """Empty a previous demo's directory (only one the demo made: it carries a marker file)."""
    import shutil

    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoError(
                f"{workdir} exists and is not a demo directory: choose another --workdir"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `edgepilot demo`; removed by its next run\n")


def digit_images(limit: int = 200) -> tuple[list[bytes], np.ndarray]:
    """PNG files of held-out digits (scikit-learn's bundled set, 0..255 like a camera) + labels."""
    import cv2
    from sklearn.model_selection import train_test_split

    from cloud_hub.registry.datasets import load_digits

    data = load_digits()
    _, X_test, _, y_test = train_test_split(
        data.X, data.y, test_size=0.2, random_state=0, stratify=data.y
    )
    pngs = []
    for image in X_test[:limit]:
        ok, buf = cv2.imencode(".png", np.clip(image, 0, 255).astype(np.uint8).squeeze())
        if not ok:
            raise DemoError("OpenCV could not encode a PNG")
        pngs.append(buf.tobytes())
    return pngs, np.asarray(y_test[:limit])


class _Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise DemoError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _wait(what: str, cond: Callable[[], bool], timeout: float, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if cond():
            return
        time.sleep(0.1)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


class _Feeder(threading.Thread):
    """Posts digit PNGs to one agent's HTTP API at a steady rate and scores its answers."""

    def __init__(
        self, url: str, images: list[bytes], labels: np.ndarray, rate: float, fig: DeviceFigures
    ) -> None:
        super().__init__(name=f"feed-{fig.device_id}", daemon=True)
        self.url, self.images, self.labels, self.rate, self.fig = url, images, labels, rate, fig
        self.stop_event = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        i = 0
        with httpx.Client(timeout=10) as client:
            while not self.stop_event.is_set():
                k = i % len(self.images)
                try:
                    r = client.post(
                        self.url, content=self.images[k], headers={"Content-Type": "image/png"}
                    )
                    if r.status_code == 200:
                        body = r.json()
                        pred = body["predictions"][0]
                        self.fig.inferences += 1
                        self.fig.correct += int(int(pred["class"]) == int(self.labels[k]))
                        self.latencies.append(float(body.get("latency_ms", 0.0)))
                        self.fig.p50_ms = round(float(np.median(self.latencies[-500:])), 3)
                    else:
                        self.fig.errors += 1
                except httpx.HTTPError:
                    self.fig.errors += 1
                i += 1
                next_at += period
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))


class DemoRunner:
    """Brings the parts up in order, runs the loop, and tears everything down."""

    def __init__(
        self,
        settings: DemoSettings,
        *,
        train: Callable[[Path, DemoSettings], Any],
        on_update: Callable[[DemoFigures], None] | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.train = train
        self.on_update = on_update or (lambda _: None)
        self.say = say
        self.figures = DemoFigures(
            devices=[DeviceFigures(d.device_id, d.runtime, d.artifact) for d in settings.devices]
        )
        self._procs: list[_Process] = []
        self._agent_urls: dict[str, str] = {}

    # -- the parts --------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _check(self) -> None:
        for proc in self._procs:
            proc.check()

    def _start(self, name: str, cmd: list[str]) -> _Process:
        proc = _Process(name, cmd, self.settings.workdir / f"{name}.log", self._env())
        self._procs.append(proc)
        return proc

    def _start_hub(self, broker: LocalBroker, hub_dir: Path) -> httpx.Client:
        port = free_port()
        self._start(
            "hub",
            [
                str(BIN / "edgepilot"),
                "--data-dir",
                str(hub_dir),
                "hub",
                "serve",
                "--port",
                str(port),
                "--no-scheduler",
                "--mqtt",
                f"{broker.host}:{broker.port}",
            ],
        )
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url + "/api/v1", timeout=30)

        def up() -> bool:
            try:
                return client.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the hub's REST API", up, 60, self._check)
        # the hub wrote its admin token into its data dir on start: the demo is its operator
        token = read_token_file(HubSettings(data_dir=hub_dir).admin_token_path)
        if token is None:
            raise RuntimeError(f"the hub started without an admin token in {hub_dir}")
        client.headers["Authorization"] = f"Bearer {token}"
        self.figures.hub_url = url
        return client

    def _say_live_views(self, api: httpx.Client, workdir: Path) -> None:
        """A viewer token for the live views (12 h), and how to open them while the demo runs."""
        r = api.post(
            "/tokens", json={"name": "demo-viewer", "role": "viewer", "expires_in_s": 12 * 3600}
        )
        if r.status_code != 201:
            raise DemoError(f"making a viewer token: {r.status_code} {r.text}")
        token_file = workdir / "viewer.token"
        token_file.write_text(r.json()["token"] + "\n")
        token_file.chmod(0o600)
        url = self.figures.hub_url
        self.say(f"dashboard: {url}/ui/#token={r.json()['token']}")
        self.say(f"terminal view: EDGEPILOT_TOKEN=$(cat {token_file}) edgepilot watch --hub {url}")

    def _register_and_start_agent(
        self, api: httpx.Client, broker: LocalBroker, device: DemoDevice
    ) -> None:
        r = api.post(
            "/devices",
            json={
                "id": device.device_id,
                "hardware": device.hardware,
                "runtimes": [device.runtime],
            },
        )
        if r.status_code != 201 and r.status_code != 200:
            raise DemoError(f"registering {device.device_id} failed: {r.status_code} {r.text}")
        reg = r.json()
        agent_dir = self.settings.workdir / device.device_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        config = agent_dir / "agent.toml"
        config.write_text(
            "\n".join(
                [
                    f'device_id = "{device.device_id}"',
                    f'data_dir = "{agent_dir / "data"}"',
                    f'hub_public_key = "{reg["hub_public_key"]}"',
                    "[mqtt]",
                    f'host = "{broker.host}"',
                    f"port = {broker.port}",
                    f'username = "{reg["username"]}"',
                    f'password = "{reg["password"]}"',
                    f'topic_root = "{reg["broker"]["topic_root"]}"',
                    "[http]",
                    'host = "127.0.0.1"',
                    "port = 0",
                    "[telemetry]",
                    "interval_s = 2",
                    f'hardware = "{device.hardware}"',
                    "",
                ]
            )
        )
        self._start(
            f"agent-{device.device_id}",
            [str(BIN / "edgepilot-agent"), "run", "--config", str(config)],
        )
        port_file = agent_dir / "data" / "http.port"
        _wait(f"{device.device_id}'s HTTP API", port_file.exists, 60, self._check)
        self._agent_urls[device.device_id] = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def _refresh(self, api: httpx.Client) -> None:
        devices = {d["id"]: d for d in api.get("/devices").json()}
        for fig in self.figures.devices:
            row = devices.get(fig.device_id)
            if row is not None:
                fig.status = row["status"]
                fig.active_version_id = row["active_version_id"]
                fig.logs_at_hub = int(row.get("logs_stored", 0))
                if fig.active_version_id == self.figures.deployed_version_id:
                    fig.active_version = self.figures.deployed_version
            url = self._agent_urls.get(fig.device_id)
            if url is not None:
                try:
                    status = httpx.get(url + "/v1/status", timeout=5).json()
                    fig.logs_made = int(status["inference_count"])
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
        self.figures.all_logs_at_hub = all(
            f.logs_made > 0 and f.logs_at_hub == f.logs_made for f in self.figures.devices
        )
        self.on_update(self.figures)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> DemoFigures:
        settings = self.settings
        prepare_workdir(settings.workdir)
        started = time.monotonic()
        with ExitStack() as stack:
            stack.callback(self._stop_all)
            broker = stack.enter_context(
                LocalBroker(settings.workdir / "broker", prefer=settings.broker)
            )
            self.figures.broker = broker.kind
            self.say(f"broker: {broker.kind} on {broker.host}:{broker.port}")

            self.figures.phase = "training"
            hub_dir = settings.workdir / "hub"
            version = self.train(hub_dir, settings)
            self.figures.deployed_version = version.ref
            self.figures.deployed_version_id = version.id

            self.figures.phase = "starting hub and agents"
            api = self._start_hub(broker, hub_dir)
            stack.callback(api.close)
            self.say(f"hub: {self.figures.hub_url}/docs")
            self._say_live_views(api, settings.workdir)
            for device in settings.devices:
                self._register_and_start_agent(api, broker, device)
                self.say(f"agent {device.device_id}: {self._agent_urls[device.device_id]}")

            self.figures.phase = "deploying"
            for device in settings.devices:
                r = api.post(
                    "/deployments",
                    json={
                        "version": str(version.id),
                        "artifact": device.artifact,
                        "device": device.device_id,
                    },
                )
                if r.status_code not in (200, 201):
                    raise DemoError(f"deploying to {device.device_id}: {r.status_code} {r.text}")

            def all_active() -> bool:
                self._refresh(api)
                return all(f.active_version_id == version.id for f in self.figures.devices)

            _wait("both agents to activate the model", all_active, 120, self._check)

            self.figures.phase = "serving"
            images, labels = digit_images()
            feeders = [
                _Feeder(
                    self._agent_urls[fig.device_id] + "/v1/predict",
                    images,
                    labels,
                    settings.rate_per_device,
                    fig,
                )
                for fig in self.figures.devices
            ]
            for feeder in feeders:
                feeder.start()
            serve_start = time.monotonic()
            try:
                while settings.duration_s is None or (
                    time.monotonic() - serve_start < settings.duration_s
                ):
                    self._check()
                    self.figures.elapsed_s = round(time.monotonic() - started, 1)
                    self._refresh(api)
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            finally:
                for feeder in feeders:
                    feeder.stop_event.set()
                for feeder in feeders:
                    feeder.join(15)

            self.figures.phase = "draining logs"

            def drained() -> bool:
                self._refresh(api)
                return self.figures.all_logs_at_hub

            try:
                _wait(
                    "every log made on the devices to reach the hub",
                    drained,
                    60,
                    self._check,
                )
            except DemoError as exc:
                self.say(str(exc))
            self.figures.elapsed_s = round(time.monotonic() - started, 1)
            self.figures.phase = "done"
            self.on_update(self.figures)
        return self.figures

    def _stop_all(self) -> None:
        for proc in reversed(self._procs):  # agents first, then the hub
            proc.stop()


def figures_json(figures: DemoFigures) -> str:
    return json.dumps(figures.to_json(), indent=2)
