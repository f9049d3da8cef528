"""The fleet simulator's hub side: Mosquitto configured by `edgepilot hub broker-config`, a real
`edgepilot hub serve` process (hub defaults: scheduler, workers, prediction log and monitoring
on) with its fleet service on that broker, and what the simulator measures of them from outside:
CPU from /proc, rows from the hub's SQLite, REST registration and paginated device lists, the
live stream's telemetry events."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
EDGEPILOT = BIN / "edgepilot"
MOSQUITTO = "/usr/sbin/mosquitto"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(
    cond: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- /proc ---------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (a hub may run helper processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_s(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of pid (and its descendants) so far."""
    total = 0.0
    for p in proc_tree(pid) if tree else [pid]:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def listen_overflows() -> int:
    """TcpExt ListenOverflows: connections a full listen queue turned away (this host)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


# -- the hub and its broker ------------------------------------------------------------------------
@dataclass
class HubUnderTest:
    workdir: Path
    data_dir: Path
    api: str
    token: str
    mqtt_port: int
    hub: subprocess.Popen[bytes]
    broker: subprocess.Popen[bytes]
    version_id: int | None
    labels: list[str]
    features: list[list[float]]
    extra: dict[str, Any] = field(default_factory=dict)

    def _ro(self) -> sqlite3.Connection:
        return sqlite3.connect(
            f"file:{self.data_dir / 'registry.db'}?mode=ro", uri=True, timeout=60
        )

    def rows(self) -> dict[str, int]:
        """Rows of stored logs and telemetry (COUNT(*), on a connection of our own: WAL)."""
        with contextlib.closing(self._ro()) as c:
            return {
                t: int(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("inference_logs", "telemetry")
            }

    def marks(self) -> int:
        """The sum of the hub's ack marks over every device epoch: records it holds, counted
        cheaply (for the per-slice rates; `rows` counts them exactly at the window's ends)."""
        with contextlib.closing(self._ro()) as c:
            return int(
                c.execute("SELECT COALESCE(SUM(acked_upto), 0) FROM device_epochs").fetchone()[0]
            )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _run(args: list[str], data_dir: Path) -> str:
    out = subprocess.run(
        [str(EDGEPILOT), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"edgepilot {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout


def _features_from_baseline(baseline: dict[str, Any], n: int, seed: int) -> list[list[float]]:
    """Feature summaries drawn from the version's training deciles: in distribution."""
    rng = random.Random(seed)
    per_feature = [f["edges"] or [0.0] for f in baseline["features"]]
    return [[rng.choice(edges) for edges in per_feature] for _ in range(n)]


@contextmanager
def hub_under_test(
    workdir: Path, *, model: bool = True, profile: Path | None = None
) -> Iterator[HubUnderTest]:
    """Train a small model (digits, logistic regression: a version with a training baseline, so
    the default drift rules have work), write the broker config, start Mosquitto and the hub."""
    data_dir = workdir / "hub"
    data_dir.mkdir(parents=True, exist_ok=True)
    version_id: int | None = None
    if model:
        trained = json.loads(
            _run(
                [
                    "train",
                    "--project",
                    "digits",
                    "--dataset",
                    "digits",
                    "--model",
                    "logreg",
                    "--json",
                ],
                data_dir,
            )  # fmt: skip
        )
        version_id = int(trained["version"]["id"])
    mqtt_port, api_port = free_port(), free_port()
    conf = data_dir / "mosquitto.conf"
    _run(["hub", "broker-config", "--listen", f"127.0.0.1:{mqtt_port}", "-o", str(conf)], data_dir)
    broker_log = (workdir / "mosquitto.log").open("ab")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=broker_log, stderr=broker_log)
    hub: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _listening(mqtt_port), 20, "Mosquitto", broker)
        # the pid file the generated conf names (Mosquitto writes it only with -d): the hub
        # finds the broker by it and reloads it after each registration
        (data_dir / "mosquitto" / "mosquitto.pid").write_text(f"{broker.pid}\n")
        hub_log = (workdir / "hub.log").open("ab")
        cli = [str(EDGEPILOT)]
        if profile is not None:  # the same CLI under the sampling profiler
            cli = [sys.executable, str(Path(__file__).with_name("_fleet_sim_profile.py")),
                   str(profile)]  # fmt: skip
        hub = subprocess.Popen(
            [*cli, "--data-dir", str(data_dir), "hub", "serve", "--port",
             str(api_port), "--mqtt", f"127.0.0.1:{mqtt_port}"],
            stdout=hub_log, stderr=hub_log, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        api = f"http://127.0.0.1:{api_port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/api/v1/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(healthy, 120, "the hub's API", hub)
        token = (data_dir / "admin-token").read_text().strip()
        labels: list[str] = []
        features: list[list[float]] = [[0.0] * 64]
        if version_id is not None:
            h = {"Authorization": f"Bearer {token}"}
            base = httpx.get(f"{api}/api/v1/versions/{version_id}/baseline", headers=h, timeout=30)
            base.raise_for_status()
            doc = base.json()
            labels = list(doc.get("labels") or [])
            features = _features_from_baseline(doc, 256, seed=1)
        yield HubUnderTest(
            workdir, data_dir, api, token, mqtt_port, hub, broker, version_id, labels, features
        )
    finally:
        for proc in (hub, broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


# -- REST ------------------------------------------------------------------------------------------
@dataclass
class Registration:
    devices: list[tuple[str, str]]  # (id, password)
    seconds: float
    per_block: list[tuple[int, float]]  # (devices registered so far, rate over the block /s)
    concurrency: int

    @property
    def rate(self) -> float:
        return len(self.devices) / self.seconds if self.seconds else 0.0


def register_devices(
    hub: HubUnderTest, n: int, *, concurrency: int = 16, block: int = 500, prefix: str = "sim"
) -> Registration:
    """POST /api/v1/devices n times, `concurrency` requests in flight (a provisioning script's
    worth), measuring the rate per block of `block` registrations."""
    local = threading.local()

    def client() -> httpx.Client:
        c: httpx.Client | None = getattr(local, "c", None)
        if c is None:
            c = httpx.Client(base_url=hub.api, headers=hub.headers(), timeout=60)
            local.c = c
        return c

    def one(i: int) -> tuple[str, str]:
        dev = f"{prefix}-{i:05d}"
        body = {"id": dev, "runtimes": ["onnxruntime"], "tags": ["sim", f"rack-{i % 20}"],
                "group": f"site-{i % 4}", "hardware": "simulated"}  # fmt: skip
        r = client().post("/api/v1/devices", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"registering {dev}: {r.status_code} {r.text[:300]}")
        return dev, str(r.json()["password"])

    out: list[tuple[str, str]] = []
    per_block = []
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for k in range(0, n, block):
            t = time.perf_counter()
            out += list(pool.map(one, range(k, min(n, k + block))))
            per_block.append((len(out), (len(out) - k) / (time.perf_counter() - t)))
    return Registration(out, time.perf_counter() - start, per_block, concurrency)


class DevicesPoller(threading.Thread):
    """Every `every` s: GET /api/v1/devices page by page (limit 500, following the Link),
    timing each page and the whole walk."""

    def __init__(self, hub: HubUnderTest, every: float = 10.0, limit: int = 500) -> None:
        super().__init__(daemon=True, name="devices-poller")
        self.hub, self.every, self.limit = hub, every, limit
        self.pages: list[float] = []  # seconds per page
        self.walks: list[float] = []  # seconds per full walk
        self.bytes: list[int] = []
        self.counts: list[int] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.hub.api, headers=self.hub.headers(), timeout=60) as c:
            while not self.stop.wait(self.every):
                t0 = time.perf_counter()
                url: str | None = f"/api/v1/devices?limit={self.limit}"
                total, size = 0, 0
                try:
                    while url:
                        t = time.perf_counter()
                        r = c.get(url)
                        r.raise_for_status()
                        self.pages.append(time.perf_counter() - t)
                        total += len(r.json())
                        size += len(r.content)
                        after = r.headers.get("X-Next-After")
                        url = f"/api/v1/devices?limit={self.limit}&after={after}" if after else None
                except httpx.HTTPError:
                    self.errors += 1
                    continue
                self.walks.append(time.perf_counter() - t0)
                self.counts.append(total)
                self.bytes.append(size)


class StreamWatcher(threading.Thread):
    """One live-stream client: for every `telemetry` event, the lag from the record's `ts` (set
    by the simulated device as it made the record, this machine's clock) to its arrival."""

    def __init__(self, hub: HubUnderTest) -> None:
        super().__init__(daemon=True, name="stream-watcher")
        self.hub = hub
        self.samples: list[tuple[float, float]] = []  # (arrival wall time, lag s)
        self.kinds: dict[str, int] = {}
        self.missed = 0
        self.errors: list[str] = []
        self.available = True
        self.stream: Any = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            from cloud_hub.stream.client import HubRefused, HubStream
        except ImportError:
            self.available = False
            return
        while not self.stop.is_set():
            self.stream = HubStream(self.hub.api, self.hub.token, timeout=60)
            try:
                for ev in self.stream.events():
                    now = time.time()
                    self.kinds[ev.kind] = self.kinds.get(ev.kind, 0) + 1
                    if ev.kind == "telemetry" and ev.data.get("telemetry_ts"):
                        self.samples.append((now, now - float(ev.data["telemetry_ts"])))
                    elif ev.kind == "missed":
                        self.missed += 1
                    if self.stop.is_set():
                        return
            except HubRefused as exc:
                if exc.status == 404:
                    self.available = False
                    return
                self.errors.append(str(exc))
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
            if not self.stop.wait(1.0):
                continue

    def close(self) -> None:
        self.stop.set()
        if self.stream is not None:
            self.stream.close()


def hub_metrics(hub: HubUnderTest) -> dict[str, float]:
    """The hub's own /metrics lines about ingest, MQTT and the stream (what it says of its load)."""
    try:
        r = httpx.get(f"{hub.api}/metrics", headers=hub.headers(), timeout=30)
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if 'device="' in name:  # per-device gauges: thousands of lines, not the hub's load
            continue
        if any(k in name for k in ("ingest", "mqtt", "stream", "queue", "fleet", "device")):
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
