"""Benchmark: no prediction log lost or stored twice through agent kills, broker and hub restarts.

Everything real, on loopback: Mosquitto run with the config `edgepilot hub broker-config` writes
(password file, ACL, persistence on: what the broker queued survives its restarts), the hub as
its own `edgepilot hub serve --mqtt` process, and two `edgepilot-agent run` processes, each with
its own data directory, its config written by the hub at registration and a fixed local HTTP
port. An ONNX MLP (64 -> 64 -> 64 -> 10, built with onnx.helper) is registered and deployed to
both agents over MQTT before the clock starts.

An open-loop load (--rate requests/s over both agents' `POST /v1/predict`, one sample each: the
log's request id is the answer's; at most --max-seconds of schedule, one connection a request)
runs through these phases, each ended by conditions, not by fixed sleeps (the outage excepted):

  baseline       no fault: each agent answers and its logs reach the hub
  agent SIGKILL  --kills times, the agents in turn: SIGKILL, start again, wait until it serves,
                 its MQTT link is up and the hub stores its new logs
  broker restart --broker-restarts times: Mosquitto stopped (SIGTERM: it writes its persistence
                 file) and started on the same port; wait until both agents are connected again
                 and the hub stores logs of each
  hub outage     the hub process stopped (SIGTERM), --outage-s seconds away (the agents keep
                 answering; their logs wait in their outboxes and in the hub's broker session),
                 started again; wait until it stores logs of each device again
  data-dir wipe  the load moves to the other agent; once the victim's outbox is empty (all it
                 logged is at the hub) it is stopped, its data dir deleted (outbox, models,
                 transfer state: a re-flashed card) and started with the same config: it fetches
                 its model again; then it takes its share of the load again
  after          no fault, a few seconds of load

Then the load stops and the bench waits (at most --drain-s) until the hub holds a log of every
answered request, or until the agents' outboxes are empty and nothing has arrived for 10 s, or
until nothing (rows stored, records pending in an outbox) has changed for 30 s. It reads the
hub's SQLite file read-only (`inference_logs`) and compares, per phase (of the request's send
time) and in total: answered (200 with a request id), stored (log rows of those request ids),
lost (answered, no row), duplicated (rows beyond the first of a request id), and rows of
requests whose answer never came back (the agent was killed between its commit and its answer:
neither lost nor duplicated). Each device's row count is shown beside what the hub's REST
`GET /api/v1/logs` pages through (its headers: `hub_headers`). Exit status 1 if anything was
lost or duplicated.

    python bench/fault_loop.py [--rate 150] [--kills 10] [--broker-restarts 5] [--outage-s 20]
                               [--no-wipe] [--quick] [--out results.json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _fleet import EDGEPILOT, Agent, build_mlp, loadavg, machine, print_machine, wait_until

from cloud_hub.core.settings import HubSettings
from cloud_hub.devtools.local_broker import find_mosquitto, free_port
from cloud_hub.fleet.agent_config import agent_config
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.registry.uploads import register_upload

ADMIN_TOKEN_FILE = "admin-token"  # where the hub keeps its machine-local admin token
DEVICES = ("fault-a", "fault-b")
REQUEST_TIMEOUT_S = 10.0
QUIET_S = 10.0  # the drain ends once the outboxes are empty and nothing arrived for this long
STUCK_S = 30.0  # ... or once nothing at all changed for this long (3 of the agents' resends)


def hub_headers(hub_dir: Path) -> dict[str, str]:
    """Every header the bench sends to the hub's REST API (the one place to change them).

    The hub's admin token file, when the hub has written one, is sent as a bearer token."""
    try:
        token = (hub_dir / ADMIN_TOKEN_FILE).read_text().strip()
    except OSError:
        token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`: this process's own child only."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def log_tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- the broker and the hub, each a process of its own ------------------------------------------
class Broker:
    """Mosquitto on the config `edgepilot hub broker-config` wrote; restartable on its port."""

    def __init__(self, conf: Path, port: int, log: Path) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.conf = conf
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited ({self.proc.returncode}):\n{log_tail(self.log)}"
                )
            return port_open(self.port)

        wait_until(listening, 30, "mosquitto to listen", poll=0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class HubProcess:
    """`edgepilot --data-dir DIR hub serve --mqtt HOST:PORT`, stopped and started at will."""

    def __init__(self, hub_dir: Path, port: int, broker_port: int, log: Path) -> None:
        self.hub_dir = hub_dir
        self.port = port
        self.broker_port = broker_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        cmd = [
            str(EDGEPILOT),
            "--data-dir",
            str(self.hub_dir),
            "hub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-scheduler",
            "--workers",
            "0",
            "--mqtt",
            f"127.0.0.1:{self.broker_port}",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the hub exited ({self.proc.returncode}):\n{log_tail(self.log)}"
                )
            return self.get("/api/v1/health")[0] == 200

        wait_until(up, timeout, "the hub's REST API", poll=0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        for key, value in hub_headers(self.hub_dir).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, {}


class HubDb:
    """The hub's SQLite file, read-only, on connections of our own (WAL: never blocks the hub)."""

    def __init__(self, path: Path) -> None:
        self.uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"

    def query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.uri, uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def log_count(self, device_id: str) -> int:
        rows = self.query("SELECT COUNT(*) FROM inference_logs WHERE device_id = ?", [device_id])
        return int(rows[0][0])

    def logs(self, device_id: str) -> list[tuple[str, float]]:
        """(request id, agent's time) of every log row the hub stored for the device."""
        rows = self.query(
            "SELECT request_id, ts FROM inference_logs WHERE device_id = ?", [device_id]
        )
        return [(str(r), float(t)) for r, t in rows]

    def deployment_states(self, deployment_id: int) -> dict[str, str]:
        rows = self.query(
            "SELECT device_id, state FROM deployment_devices WHERE deployment_id = ?",
            [deployment_id],
        )
        return {str(d): str(s) for d, s in rows}


# -- the load ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    phase: int
    agent: int
    sent_at: float  # time.time() when the request was due
    result: str  # ok, http NNN, refused, reset, timeout, dropped, error ...
    request_id: str | None = None


class Load:
    """Open loop: request i is due at start + i / rate, to agent i mod n (or the next one not
    paused), whatever the agents do; at most `max_requests`, `max_in_flight` at a time (a
    request due beyond that is counted `dropped`, not sent)."""

    def __init__(
        self,
        ports: list[int],
        bodies: list[bytes],
        *,
        rate: float,
        max_requests: int,
        max_in_flight: int = 256,
    ) -> None:
        self.ports = ports
        self.bodies = bodies
        self.rate = rate
        self.max_requests = max_requests
        self.max_in_flight = max_in_flight
        self.phase = 0
        self.paused: set[int] = set()
        self.outcomes: list[Outcome] = []
        self.answered = [0] * len(ports)
        self.in_flight = [0] * len(ports)
        self.exhausted = False
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S + 30)

    def check(self) -> None:
        """Raise if the load stopped on its own: an error, or its bound ran out."""
        if self.error is not None:
            raise RuntimeError(f"the load generator failed: {self.error!r}")
        if self.exhausted:
            raise RuntimeError(
                f"the load's bound ({self.max_requests:,} requests) ran out before the phases "
                "ended: raise --max-seconds"
            )

    def _run(self) -> None:
        try:
            asyncio.run(self._schedule())
        except BaseException as exc:  # reported to the main thread by check()
            self.error = exc

    def _route(self, i: int) -> int:
        n = len(self.ports)
        for k in range(n):
            agent = (i + k) % n
            if agent not in self.paused:
                return agent
        return i % n

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        start = loop.time()
        i = 0
        while not self._stop.is_set() and i < self.max_requests:
            delay = start + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            agent = self._route(i)
            outcome = Outcome(self.phase, agent, time.time(), "dropped")
            self.outcomes.append(outcome)
            if len(tasks) < self.max_in_flight:
                task = asyncio.create_task(self._one(outcome, self.bodies[i % len(self.bodies)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        self.exhausted = i >= self.max_requests and not self._stop.is_set()
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)

    async def _one(self, outcome: Outcome, body: bytes) -> None:
        agent = outcome.agent
        self.in_flight[agent] += 1
        try:
            status, doc = await asyncio.wait_for(
                self._post(self.ports[agent], body), REQUEST_TIMEOUT_S
            )
            request_id = doc.get("request_id") if isinstance(doc, dict) else None
            if status == 200 and isinstance(request_id, str):
                outcome.result, outcome.request_id = "ok", request_id
                self.answered[agent] += 1
            elif status == 200:
                outcome.result = "200 without a request id"  # an agent bug: reported
            else:
                outcome.result = f"http {status}"
        except ConnectionRefusedError:
            outcome.result = "refused"
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError, EOFError):
            outcome.result = "reset"
        except TimeoutError:
            outcome.result = "timeout"
        except OSError as exc:
            outcome.result = f"error {exc.errno}"
        finally:
            self.in_flight[agent] -= 1

    @staticmethod
    async def _post(port: int, body: bytes) -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, sep, payload = data.partition(b"\r\n\r\n")
        if not sep:
            raise EOFError("the connection closed before a whole answer")
        status = int(head.split(b" ", 2)[1])
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and len(payload) < int(value):
                raise EOFError("the connection closed before the whole body")  # a kill
        try:
            return status, json.loads(payload) if payload else {}
        except json.JSONDecodeError:
            raise EOFError("a truncated answer") from None


# -- the bench -----------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    faults: str
    started: float = 0.0  # time.time()
    ended: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Counts:
    """Requests and log rows of one phase or one device."""

    sent: int = 0
    answered: int = 0  # 200 with a request id
    stored: int = 0  # log rows of answered requests (a request stored twice counts twice)
    lost: int = 0  # answered, no log row
    duplicated: int = 0  # rows beyond the first of one request id
    duplicated_ids: int = 0  # request ids with more than one row
    stored_unanswered: int = 0  # rows of requests whose answer never came back
    results: Counter[str] = field(default_factory=Counter)

    def add_answered(self, copies: int) -> None:
        self.stored += copies
        self.lost += copies == 0
        self.add_copies(copies)

    def add_unanswered(self, copies: int) -> None:
        self.stored_unanswered += copies
        self.add_copies(copies)

    def add_copies(self, copies: int) -> None:
        self.duplicated += max(0, copies - 1)
        self.duplicated_ids += copies > 1

    def merge(self, other: Counts) -> None:
        for name in (
            "sent",
            "answered",
            "stored",
            "lost",
            "duplicated",
            "duplicated_ids",
            "stored_unanswered",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.results.update(other.results)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["not_answered"] = self.sent - self.answered
        doc["results"] = dict(self.results)
        return doc


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.hub_dir = workdir / "hub"
        self.db = HubDb(self.hub_dir / "registry.db")
        self.broker_port = free_port()
        self.broker: Broker | None = None
        self.hub: HubProcess | None = None
        self.agents: list[Agent] = []
        self.http_ports: list[int] = []
        self.load: Load | None = None
        self.deployment = 0
        self.phases: list[Phase] = []
        self.per_agent = args.rate / len(DEVICES)  # requests/s each agent takes

    # -- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        """Model, devices and deployment written by the hub's own code, then the processes."""
        hub = Hub.open(
            HubSettings(
                data_dir=self.hub_dir,
                run_scheduler=False,
                mqtt_host="127.0.0.1",
                mqtt_port=self.broker_port,
            )
        )
        try:
            version = register_upload(
                hub.registry,
                project="faults",
                model="mlp",
                data=build_mlp(64, layers=2),
                filename="mlp.onnx",
                labels=[str(i) for i in range(10)],
            )
            for device_id in DEVICES:
                reg = hub.fleet.devices.register(
                    DeviceCreate(id=device_id, runtimes=["onnxruntime"], tags=["faults"])
                )
                directory = self.workdir / device_id
                directory.mkdir(parents=True)
                config = directory / "agent.toml"
                config.write_text(agent_config(reg, data_dir=str(directory / "data")))
                self.agents.append(
                    Agent(device_id, config, directory / "data", directory / "agent.log")
                )
                self.http_ports.append(free_port())
            self.deployment = hub.fleet.deployments.create(
                DeploymentCreate(version=str(version.id), artifact="onnx/fp32", tag="faults")
            ).id
        finally:
            hub.close()

        conf = self.workdir / "mosquitto.conf"
        made = subprocess.run(
            [str(EDGEPILOT), "--data-dir", str(self.hub_dir), "hub", "broker-config"]
            + ["--listen", f"127.0.0.1:{self.broker_port}", "--output", str(conf)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise RuntimeError(f"`edgepilot hub broker-config` failed:\n{made.stderr[-1500:]}")
        self.broker = Broker(conf, self.broker_port, self.workdir / "mosquitto.log")
        self.broker.start()
        self.hub = HubProcess(self.hub_dir, free_port(), self.broker_port, self.workdir / "hub.log")
        self.hub.start()
        for i in range(len(self.agents)):
            self.spawn(i)
        for i in range(len(self.agents)):
            self.wait_serving(i, 120)

        def active() -> bool:
            self.check_processes()
            states = self.db.deployment_states(self.deployment)
            bad = {d: s for d, s in states.items() if s in ("failed", "rolled_back")}
            if bad:
                raise RuntimeError(f"the deployment failed: {bad}")
            return len(states) == len(DEVICES) and set(states.values()) == {"active"}

        wait_until(active, 120, "the model to be active on every device", poll=0.1)

    def spawn(self, i: int) -> None:
        self.agents[i].spawn({"EDGEPILOT_AGENT_HTTP_PORT": str(self.http_ports[i])})

    def health(self, i: int) -> dict[str, Any]:
        code, doc = self.agents[i].get("/v1/health")
        return doc if code == 200 else {}

    def wait_serving(self, i: int, timeout: float) -> float:
        """Until agent i answers with a model loaded; seconds it took."""
        started = time.monotonic()
        agent = self.agents[i]
        agent.wait_http(timeout)

        def loaded() -> bool:
            agent.check()
            return self.health(i).get("active_version") is not None

        wait_until(loaded, timeout, f"{agent.device_id} to serve its model", poll=0.05)
        return time.monotonic() - started

    def check_processes(self) -> None:
        for agent in self.agents:
            if agent.proc is not None:
                agent.check()
        for proc, what, log in (
            (self.hub.proc if self.hub else None, "the hub", self.workdir / "hub.log"),
            (
                self.broker.proc if self.broker else None,
                "mosquitto",
                self.workdir / "mosquitto.log",
            ),
        ):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log_tail(log)}")
        if self.load is not None:
            self.load.check()

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> float:
        """wait_until with every process and the load checked; seconds it took."""
        started = time.monotonic()

        def checked() -> Any:
            self.check_processes()
            return cond()

        wait_until(checked, timeout, what, poll=0.05)
        return time.monotonic() - started

    # -- conditions ---------------------------------------------------------------------------
    def answered_more(self, i: int, n: int) -> Callable[[], bool]:
        assert self.load is not None
        load = self.load
        base = load.answered[i]
        return lambda: load.answered[i] >= base + n

    def stored_more(self, i: int) -> Callable[[], bool]:
        device = self.agents[i].device_id
        base = self.db.log_count(device)
        return lambda: self.db.log_count(device) > base

    def connected(self, i: int) -> bool:
        return bool(self.health(i).get("mqtt_connected"))

    def flowing(self, indices: list[int], seconds: float) -> Callable[[], bool]:
        """Each agent answered `seconds` of its share more, is connected, and the hub stored
        new logs of each: the whole path works again."""
        conds = [self.answered_more(i, max(1, round(seconds * self.per_agent))) for i in indices]
        conds += [self.stored_more(i) for i in indices]
        return lambda: all(c() for c in conds) and all(self.connected(i) for i in indices)

    # -- phases -------------------------------------------------------------------------------
    def phase(self, name: str, faults: str) -> Phase:
        if self.phases:
            self.phases[-1].ended = time.time()
        p = Phase(name, faults, started=time.time())
        self.phases.append(p)
        assert self.load is not None
        self.load.phase = len(self.phases) - 1
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {faults} (load average {loadavg()})")
        return p

    def run(self) -> None:
        args = self.args
        self.load = Load(
            self.http_ports,
            [
                json.dumps({"inputs": [[((i * 7 + k) % 17) / 16 for k in range(64)]]}).encode()
                for i in range(64)
            ],
            rate=args.rate,
            max_requests=round(args.rate * args.max_seconds),
        )
        everyone = list(range(len(self.agents)))
        p = self.phase("baseline", "none")
        self.load.start()
        self.wait(self.flowing(everyone, args.settle_s * 2), 60, "the baseline load")

        if args.kills:
            p = self.phase("agent SIGKILL", f"{args.kills} × SIGKILL of an agent, restarted")
            for k in range(args.kills):
                i = k % len(self.agents)
                agent = self.agents[i]
                assert agent.proc is not None
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait(10)
                killed = time.monotonic()
                self.spawn(i)
                serving = self.wait_serving(i, 60)
                self.wait(self.flowing([i], args.settle_s), 60, f"{agent.device_id} after kill")
                p.events.append(
                    {
                        "fault": f"SIGKILL {agent.device_id}",
                        "serving_again_s": round(serving, 3),
                        "logs_flowing_s": round(time.monotonic() - killed, 3),
                    }
                )

        if args.broker_restarts:
            p = self.phase("broker restart", f"{args.broker_restarts} × Mosquitto restart")
            assert self.broker is not None
            for _ in range(args.broker_restarts):
                self.broker.stop()
                down = time.monotonic()
                self.broker.start()
                took = self.wait(self.flowing(everyone, args.settle_s), 90, "traffic after restart")
                p.events.append(
                    {
                        "fault": "broker restart",
                        "listening_s": round(time.monotonic() - down - took, 3),
                        "logs_flowing_s": round(time.monotonic() - down, 3),
                    }
                )

        if args.outage_s > 0:
            p = self.phase("hub outage", f"hub process stopped {args.outage_s:g} s, restarted")
            assert self.hub is not None
            self.hub.stop()
            down = time.monotonic()
            time.sleep(args.outage_s)  # the deliberate outage
            self.check_processes()
            self.hub.start()
            up = time.monotonic() - down
            self.wait(self.flowing(everyone, args.settle_s), 120, "logs after the hub's return")
            p.events.append(
                {
                    "fault": "hub outage",
                    "away_s": round(up, 3),
                    "logs_flowing_s": round(time.monotonic() - down, 3),
                }
            )

        if args.wipe:
            victim = len(self.agents) - 1
            agent = self.agents[victim]
            p = self.phase("data-dir wipe", f"{agent.device_id}'s data dir deleted, restarted")
            self.load.paused.add(victim)
            self.wait(
                lambda: self.load is not None and self.load.in_flight[victim] == 0,
                30,
                f"{agent.device_id}'s requests to end",
            )

            def outbox_empty() -> bool:
                code, doc = agent.get("/v1/status")
                return code == 200 and doc["outbox"]["pending"] == 0

            flushed = self.wait(outbox_empty, 60, f"{agent.device_id}'s outbox to empty")
            agent.stop()
            shutil.rmtree(agent.data_dir)
            wiped = time.monotonic()
            self.spawn(victim)
            serving = self.wait_serving(victim, 180)
            self.load.paused.discard(victim)
            self.wait(
                self.answered_more(victim, round(args.settle_s * 3 * self.per_agent)),
                60,
                f"{agent.device_id} to answer after the wipe",
            )
            p.events.append(
                {
                    "fault": f"wipe {agent.device_id}",
                    "outbox_flushed_s": round(flushed, 3),
                    "model_again_s": round(serving, 3),
                    "since_wipe_s": round(time.monotonic() - wiped, 3),
                }
            )

        self.phase("after", "none")
        last = [self.answered_more(i, round(args.settle_s * 2 * self.per_agent)) for i in everyone]
        self.wait(lambda: all(c() for c in last), 60, "the last load")
        self.phases[-1].ended = time.time()
        self.load.stop()
        if self.load.error is not None:
            raise RuntimeError(f"the load generator failed: {self.load.error!r}")

    # -- the count ----------------------------------------------------------------------------
    def answered_ids(self) -> dict[str, set[str]]:
        assert self.load is not None
        ids: dict[str, set[str]] = defaultdict(set)
        for o in self.load.outcomes:
            if o.request_id is not None:
                ids[self.agents[o.agent].device_id].add(o.request_id)
        return ids

    def pending(self) -> dict[str, int | None]:
        """Each agent's outbox: records not yet acknowledged by the hub."""
        return {
            a.device_id: a.get("/v1/status")[1].get("outbox", {}).get("pending")
            for a in self.agents
        }

    def drain(self) -> dict[str, Any]:
        """Wait until every answered request has a log at the hub; or until the outboxes are
        empty and nothing has arrived for QUIET_S; or until nothing at all (rows stored, records
        pending) has changed for STUCK_S; at most --drain-s."""
        answered = self.answered_ids()
        started = time.monotonic()
        deadline = started + self.args.drain_s
        last: tuple[dict[str, int], dict[str, int | None]] | None = None
        last_counts: dict[str, int] = {}
        quiet_since = stuck_since = time.monotonic()
        why = f"timed out after {self.args.drain_s:g} s"
        while time.monotonic() < deadline:
            self.check_processes()
            stored = {a.device_id: {r for r, _ in self.db.logs(a.device_id)} for a in self.agents}
            if all(answered[d] <= stored[d] for d in answered):
                why = "every answered request's log is stored"
                break
            counts = {d: len(s) for d, s in stored.items()}
            pending = self.pending()
            now = time.monotonic()
            if counts != last_counts:
                last_counts, quiet_since = counts, now
            if (counts, pending) != last:
                last, stuck_since = (counts, pending), now
            if all(p == 0 for p in pending.values()) and now - quiet_since >= QUIET_S:
                why = f"outboxes empty and nothing new for {QUIET_S:g} s"
                break
            if now - stuck_since >= STUCK_S:
                why = f"nothing stored and no outbox changed for {STUCK_S:g} s"
                break
            time.sleep(0.5)
        return {
            "drain_s": round(time.monotonic() - started, 2),
            "ended": why,
            "outbox_pending": self.pending(),
        }

    def rest_counts(self) -> dict[str, Any]:
        """Per device, the log records `GET /api/v1/logs` pages through (a cross-check)."""
        assert self.hub is not None
        counts: dict[str, Any] = {}
        for agent in self.agents:
            n, cursor = 0, None
            while True:
                query = {"origin": "device", "device_id": agent.device_id, "limit": 10_000}
                if cursor:
                    query["cursor"] = cursor
                code, page = self.hub.get(f"/api/v1/logs?{urllib.parse.urlencode(query)}")
                if code != 200:
                    return {"error": f"GET /api/v1/logs answered {code or 'nothing'}"}
                n += len(page["records"])
                cursor = page.get("next")
                if not cursor:
                    break
            counts[agent.device_id] = n
        return counts

    def tally(self) -> dict[str, Any]:
        assert self.load is not None
        rows = {a.device_id: self.db.logs(a.device_id) for a in self.agents}
        per_phase = [Counts() for _ in self.phases]
        per_device = {a.device_id: Counts() for a in self.agents}
        answered_in: dict[tuple[str, str], int] = {}  # (device, request id) -> phase
        for o in self.load.outcomes:
            device = self.agents[o.agent].device_id
            for counts in (per_phase[o.phase], per_device[device]):
                counts.sent += 1
                counts.answered += o.request_id is not None
                counts.results[o.result] += 1
            if o.request_id is not None:
                answered_in[(device, o.request_id)] = o.phase
        starts = [p.started for p in self.phases]

        def phase_at(ts: float) -> int:  # the phase running when the agent logged it
            return max([j for j, start in enumerate(starts) if ts >= start], default=0)

        for device, logs in rows.items():
            copies = Counter(r for r, _ in logs)
            ts_of = dict(logs)
            for (dev, request_id), k in answered_in.items():
                if dev == device:
                    for counts in (per_phase[k], per_device[device]):
                        counts.add_answered(copies.get(request_id, 0))
            for request_id, c in copies.items():
                if (device, request_id) not in answered_in:
                    for counts in (per_phase[phase_at(ts_of[request_id])], per_device[device]):
                        counts.add_unanswered(c)
        total = Counts()
        for counts in per_phase:
            total.merge(counts)
        return {
            "phases": [
                {**asdict(p), **c.as_dict()} for p, c in zip(self.phases, per_phase, strict=True)
            ],
            "devices": {d: c.as_dict() for d, c in per_device.items()},
            "total": total.as_dict(),
            "rows_at_hub": {d: len(r) for d, r in rows.items()},
        }

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        for agent in self.agents:
            agent.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.broker is not None:
            self.broker.stop()


def print_report(result: dict[str, Any]) -> None:
    print()
    print_machine(result["machine"])
    a = result["args"]
    print(
        f"load: {a['rate']:g} requests/s over {len(DEVICES)} agents, one sample a request; "
        f"{result['wall_s']:.0f} s from the first request to the last count; drain: "
        f"{result['drain']['ended']} ({result['drain']['drain_s']:.1f} s); outbox records "
        "not acknowledged at the end: "
        + ", ".join(f"{d} {n}" for d, n in result["drain"]["outbox_pending"].items())
    )
    print()
    print(
        "| phase | faults | duration | sent | answered | not answered | stored | lost "
        "| duplicated | stored, answer lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in result["phases"]:
        print(
            f"| {p['name']} | {p['faults']} | {p['ended'] - p['started']:.1f} s | {p['sent']:,} "
            f"| {p['answered']:,} | {p['not_answered']:,} | {p['stored']:,} | {p['lost']:,} "
            f"| {p['duplicated']:,} | {p['stored_unanswered']:,} |"
        )
    t = result["total"]
    duration = result["phases"][-1]["ended"] - result["phases"][0]["started"]
    print(
        f"| **total** | | {duration:.1f} s | {t['sent']:,} | {t['answered']:,} "
        f"| {t['not_answered']:,} | {t['stored']:,} | **{t['lost']:,}** "
        f"| **{t['duplicated']:,}** | {t['stored_unanswered']:,} |"
    )
    print()
    rest = result["rest"]
    print(
        "| device | answered | stored | lost | duplicated | log rows at the hub (SQLite / REST) |"
    )
    print("|---|---|---|---|---|---|")
    for device, d in result["devices"].items():
        via_rest = rest.get(device, "-") if "error" not in rest else "-"
        print(
            f"| {device} | {d['answered']:,} | {d['stored']:,} | {d['lost']:,} "
            f"| {d['duplicated']:,} | {result['rows_at_hub'][device]:,} / {via_rest} |"
        )
    if "error" in rest:
        print(f"\nREST cross-check skipped: {rest['error']} (see hub_headers)")
    print()
    for p in result["phases"]:
        others = {k: v for k, v in p["results"].items() if k != "ok"}
        if others:
            print(f"{p['name']}: not answered: {', '.join(f'{k} {v}' for k, v in others.items())}")
        for e in p["events"]:
            print(f"  {', '.join(f'{k} {v}' for k, v in e.items())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0, help="requests/s, both agents")
    parser.add_argument("--kills", type=int, default=10, help="agent SIGKILLs")
    parser.add_argument("--broker-restarts", type=int, default=5)
    parser.add_argument("--outage-s", type=float, default=20.0, help="hub outage (0: none)")
    parser.add_argument("--no-wipe", dest="wipe", action="store_false", help="skip the wipe")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="seconds of load each agent answers after a fault before the next",
    )
    parser.add_argument("--max-seconds", type=float, default=300.0, help="the load's bound")
    parser.add_argument("--drain-s", type=float, default=120.0, help="final wait's bound")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 80 req/s, 2 kills, 1 broker restart, 3 s outage, wipe",
    )
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.kills, args.broker_restarts, args.outage_s = 80.0, 2, 1, 3.0
        args.settle_s, args.max_seconds, args.drain_s = 0.5, 120.0, 60.0

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    bench = Bench(args, workdir)
    try:
        bench.setup()
        started = time.monotonic()
        bench.run()
        drain = bench.drain()
        result = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "drain": drain,
            "rest": bench.rest_counts(),
            **bench.tally(),
        }
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["machine"]["loadavg_end"] = loadavg()
    except BaseException:
        print(f"\nfailed; work dir kept: {workdir}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.keep:
        print(f"\nwork dir: {workdir}")
    t = result["total"]
    return 1 if t["lost"] or t["duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
