"""The fleet simulator's devices: light MQTT clients that speak the wire contract as an agent.

One `SimDevice` per device: a paho `Client` (MQTT 3.1.1, the agent's settings: a retained
`DeviceStatus` online on every connect and offline as its last will, QoS 1, TCP_NODELAY) and an
in-memory outbox drained by the agent forwarder's rules (edge_agent/forwarder.py): one sequence
for logs and telemetry inside a random epoch, batches of at most 250 records in sequence order,
each carrying the floor (the lowest sequence still held), up to 8 batches in flight past the last
ack; an ack is believed only for this epoch and at most what was issued, and deletes everything
up to it; after a reconnect, or when no ack moved for 10 s, everything unacknowledged is sent
again from the ack. Every second a device makes 1-5 inference log records, every 5 s a telemetry
record.

`run_worker` drives a few thousand of them in one process with one selector loop: paho's sockets
are registered with the selector (paho's `on_socket_*` callbacks) and served with
`loop_read` / `loop_write` / `loop_misc`, never a paho thread. Devices connect in paced waves.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import secrets
import selectors
import socket
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.core.wire import (
    Ack,
    DeviceStatus,
    LogBatch,
    LogRecord,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    WireError,
)

BATCH_SIZE = 250  # ForwarderSettings defaults
MAX_IN_FLIGHT = 8
RESEND_AFTER_S = 10.0
TELEMETRY_EVERY = 5  # ticks (seconds)
KEEPALIVE_S = 30  # MqttSettings.keepalive
RECONNECT_S = (1.0, 10.0)  # reconnect_min_s, reconnect_max_s
INBOUND = ("desired", "chunk", "ack", "infer")  # what an agent subscribes


@dataclass
class WorkerConfig:
    index: int
    devices: list[tuple[str, str]]  # (device id, password)
    host: str
    port: int
    topic_root: str
    version_id: int | None
    features: list[list[float]]  # per-record feature summaries to draw from (in distribution)
    labels: list[str]
    connect_rate: float  # connections a second, this worker's share
    slice_s: float
    seed: int
    nice: int = 0  # added to this process's niceness


class Pending(NamedTuple):
    """A record in a device's outbox, small (a fleet behind on acks holds millions): the
    record itself is made from its template when it is sent."""

    seq: int
    telemetry: bool
    template: int  # index into the worker's templates
    made_at: float  # monotonic, for the ack lag
    ts: float  # wall clock: the record's ts
    pending: int  # telemetry: the outbox size it reports


@dataclass
class Counters:
    issued: int = 0  # records made (logs and telemetry)
    telemetry: int = 0  # of which telemetry
    acked: int = 0
    batches: int = 0  # forwarder batches (a tick's logs and telemetry: one, in two messages)
    publishes: int = 0  # LogBatch and TelemetryBatch messages
    bytes_out: int = 0  # their payload bytes
    acks: int = 0  # Ack messages received
    resends: int = 0
    bad_acks: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_errors: int = 0
    refused: int = 0


class SimDevice:
    def __init__(self, device_id: str, password: str, worker: Worker) -> None:
        self.id = device_id
        self.w = worker
        self.epoch = secrets.token_hex(8)
        self.topics = Topics(worker.cfg.topic_root)
        self.t_logs = self.topics.device(device_id, "logs")
        self.t_telemetry = self.topics.device(device_id, "telemetry")
        self.t_status = self.topics.device(device_id, "status")
        self.t_ack = self.topics.device(device_id, "ack")
        self.issued = 0
        self.acked = 0
        self.sent_upto = 0
        self.outbox: deque[Pending] = deque()
        self.in_flight: list[int] = []  # last seq of each batch in flight
        self.progress_at = time.monotonic()
        self.connected = False
        self.ever_connected = False
        self.reset = False
        self.ticks = 0
        self.next_reconnect = 0.0
        self.backoff = RECONNECT_S[0]
        self.sock: socket.socket | None = None
        self.polling_write = False
        self.misc_phase = worker.rng.randrange(5)
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgepilot-agent-{device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.username_pw_set(device_id, password)
        c.max_inflight_messages_set(64)
        c.max_queued_messages_set(0)
        c.will_set(self.t_status, self._status("offline"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self.client = c

    # -- wire ------------------------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return DeviceStatus(
            device_id=self.id,
            state=state,
            agent_version="fleet-sim",
            runtimes=["onnxruntime"],
            hardware="simulated",
            active_version=self.w.cfg.version_id,
        ).dumps()

    def tick(self, now: float) -> None:
        """One second of the device's life: logs (and every 5 s telemetry) into the outbox."""
        self.ticks += 1
        rng = self.w.rng
        wall = time.time()
        before = self.issued
        for _ in range(rng.randint(1, 5)):
            self.issued += 1
            self.outbox.append(
                Pending(self.issued, False, rng.randrange(len(self.w.log_templates)), now, wall, 0)
            )
        if self.ticks % TELEMETRY_EVERY == 0:
            self.issued += 1
            t = rng.randrange(len(self.w.telemetry_templates))
            self.outbox.append(Pending(self.issued, True, t, now, wall, len(self.outbox)))
            self.w.counters.telemetry += 1
        self.w.counters.issued += self.issued - before
        if self.connected and self.ticks % 5 == self.misc_phase:
            self.client.loop_misc()  # keepalive pings (30 s) and timeouts
        self.step(now)

    def step(self, now: float) -> None:
        """The forwarder's step: drop what is acked, resend after a reset or a stall, send up
        to MAX_IN_FLIGHT batches past the ack."""
        acked = self.acked
        self.in_flight = [last for last in self.in_flight if last > acked]
        stalled = bool(self.in_flight) and now - self.progress_at >= RESEND_AFTER_S
        if self.reset or stalled:
            if self.in_flight or self.sent_upto > acked:
                self.w.counters.resends += 1
            self.reset = False
            self.in_flight = []
            self.sent_upto = acked
            self.progress_at = now
        if not self.connected:
            return
        while len(self.in_flight) < MAX_IN_FLIGHT:
            floor = self.outbox[0].seq if self.outbox else self.issued + 1
            start = self.sent_upto - acked  # records before it in the outbox were sent
            if start >= len(self.outbox):
                return
            batch = [
                self.outbox[i] for i in range(start, min(len(self.outbox), start + BATCH_SIZE))
            ]
            if not self._publish(floor, batch):
                return
            if not self.in_flight:
                self.progress_at = now
            self.sent_upto = batch[-1].seq
            self.in_flight.append(self.sent_upto)
            self.w.counters.batches += 1

    def _publish(self, floor: int, batch: list[Pending]) -> bool:
        logs = [self.w.log_record(self.id, p) for p in batch if not p.telemetry]
        telemetry = [self.w.telemetry_record(p) for p in batch if p.telemetry]
        try:
            if logs:
                payload = LogBatch(
                    device_id=self.id,
                    epoch=self.epoch,
                    floor=floor,
                    records=logs,
                ).dumps()
                if self.client.publish(self.t_logs, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                    return False
                self.w.counters.publishes += 1
                self.w.counters.bytes_out += len(payload)
            if telemetry:
                payload = TelemetryBatch(
                    device_id=self.id,
                    epoch=self.epoch,
                    floor=floor,
                    records=telemetry,
                ).dumps()
                if (
                    self.client.publish(self.t_telemetry, payload, qos=1).rc
                    != mqtt.MQTT_ERR_SUCCESS
                ):
                    return False
                self.w.counters.publishes += 1
                self.w.counters.bytes_out += len(payload)
        except (ValueError, RuntimeError):
            return False
        return True

    def on_ack(self, payload: bytes, now: float) -> None:
        try:
            ack: Ack = Ack.loads(payload)
        except WireError:
            self.w.counters.bad_acks += 1
            return
        if (ack.epoch and ack.epoch != self.epoch) or ack.upto > self.issued:
            self.w.counters.bad_acks += 1
            return
        if ack.upto <= self.acked:
            return
        newest: Pending | None = None
        while self.outbox and self.outbox[0].seq <= ack.upto:
            newest = self.outbox.popleft()
        self.w.counters.acked += ack.upto - self.acked
        self.acked = ack.upto
        if self.sent_upto < self.acked:
            self.sent_upto = self.acked
        self.progress_at = now
        if newest is not None:
            self.w.ack_lag(now - newest.made_at, now)
        self.step(now)

    # -- connection ------------------------------------------------------------------------------
    def connect(self, now: float) -> None:
        try:
            if self.ever_connected:
                self.client.reconnect()
            else:
                self.client.connect(self.w.cfg.host, self.w.cfg.port, keepalive=KEEPALIVE_S)
            self.ever_connected = True
        except OSError:
            self.w.counters.connect_errors += 1
            self.next_reconnect = now + self.backoff
            self.backoff = min(RECONNECT_S[1], self.backoff * 2)
            self.w.schedule_reconnect(self)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.w.counters.refused += 1
            return
        self.w.counters.connects += 1
        self.backoff = RECONNECT_S[0]
        client.subscribe([(self.topics.device(self.id, k), 1) for k in INBOUND])
        self.connected = True
        client.publish(self.t_status, self._status("online"), qos=1, retain=True)
        self.reset = True
        self.step(time.monotonic())

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        if self.w.stopping:
            return
        self.w.counters.disconnects += 1
        self.connected = False
        self.next_reconnect = time.monotonic() + self.backoff
        self.w.schedule_reconnect(self)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.t_ack:
            self.w.counters.acks += 1
            self.on_ack(bytes(msg.payload), time.monotonic())

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.w.sel.register(sock, selectors.EVENT_READ, self)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.w.sel.unregister(sock)
        self.sock = None
        self.polling_write = False

    # Writes: paho asks for the socket's writability when it queues a packet; the loop writes
    # such clients at the end of its round (loopback takes it at once: no epoll change), and
    # only a client whose socket took less than all waits for EVENT_WRITE.
    def _on_register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self.w.to_write.append(self)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if self.polling_write:
            self.polling_write = False
            with contextlib.suppress(KeyError, ValueError):
                self.w.sel.modify(sock, selectors.EVENT_READ, self)

    def flush(self) -> None:
        if self.sock is None:
            return
        self.client.loop_write()
        if self.sock is not None and self.client.want_write() and not self.polling_write:
            self.polling_write = True
            with contextlib.suppress(KeyError, ValueError):
                self.w.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)


@dataclass
class WorkerResult:
    index: int
    devices: int
    connected: int
    counters: dict[str, int]
    counters_window: dict[str, int]  # what happened inside the window
    lags: dict[int, bytes]  # slice -> array('f') of ack lags in ms
    cpu_window_s: float  # this process's CPU over the window
    sys_window_s: float  # of which in the kernel (socket sends and receives)
    cpu_total_s: float
    wall_window_s: float
    tick_late_ms: dict[int, bytes]  # slice -> array('f'): how late device ticks ran
    backlog_max: int  # the largest outbox seen at a device
    rss_mb: float  # this process's resident memory at the end
    unacked_end: int  # records not yet acked, all devices, at the end
    issued_end: int  # records made, all devices


@dataclass
class Worker:
    cfg: WorkerConfig
    shared: Any  # multiprocessing shared: window_start (Value d), stop (Event), connected (Array)
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    counters: Counters = field(default_factory=Counters)
    devices: list[SimDevice] = field(default_factory=list)
    stopping: bool = False
    rng: random.Random = field(default_factory=random.Random)
    lags: dict[int, array[float]] = field(default_factory=dict)
    late: dict[int, array[float]] = field(default_factory=dict)
    reconnects: list[tuple[float, int, SimDevice]] = field(default_factory=list)
    to_write: list[SimDevice] = field(default_factory=list)
    log_templates: list[LogRecord] = field(default_factory=list)
    telemetry_templates: list[TelemetryRecord] = field(default_factory=list)
    window_start_mono: float | None = None
    counters_at_window: dict[str, int] = field(default_factory=dict)
    backlog_max: int = 0
    _n: int = 0

    def slice_of(self, now: float) -> int | None:
        if self.window_start_mono is None:
            return None
        return int((now - self.window_start_mono) // self.cfg.slice_s)

    def ack_lag(self, lag_s: float, now: float) -> None:
        s = self.slice_of(now)
        if s is not None and s >= 0:
            self.lags.setdefault(s, array("f")).append(lag_s * 1000.0)

    def schedule_reconnect(self, dev: SimDevice) -> None:
        self._n += 1
        heapq.heappush(self.reconnects, (dev.next_reconnect, self._n, dev))

    def make_templates(self, n: int = 64) -> None:
        """Records to copy: made (validated) once by the wire module's models; each record a
        device sends is a copy with its own sequence, request id and time."""
        rng = self.rng
        labels = self.cfg.labels
        v = str(self.cfg.version_id) if self.cfg.version_id is not None else "0"
        for _ in range(n):
            features = self.cfg.features[rng.randrange(len(self.cfg.features))]
            scores = [rng.random() for _ in range(max(2, len(labels)))]
            total = sum(scores)
            scores = [round(x / total, 4) for x in scores]
            top = max(range(len(scores)), key=scores.__getitem__)
            self.log_templates.append(
                LogRecord(
                    seq=1,
                    request_id="template",
                    model_version=self.cfg.version_id,
                    input_digest=secrets.token_hex(8),
                    output={
                        "task": "classification",
                        "class": top,
                        "label": labels[top] if top < len(labels) else None,
                        "score": scores[top],
                        "scores": scores,
                    },
                    latency_ms=round(rng.uniform(0.5, 3.0), 3),
                    ts=0.0,
                    source="api",
                    features=features,
                )
            )
            self.telemetry_templates.append(
                TelemetryRecord(
                    seq=1,
                    ts=0.0,
                    cpu_percent=round(rng.uniform(5, 60), 1),
                    memory_rss_mb=round(rng.uniform(80, 120), 1),
                    memory_percent=round(rng.uniform(10, 30), 1),
                    temperature_c=round(rng.uniform(40, 70), 1),
                    inferences={v: rng.randint(5, 25)},
                    latency_ms={v: {"p50": 1.2, "p95": 2.5, "p99": 3.1}},
                    outbox_pending=0,
                    outbox_dropped=0,
                )
            )

    def log_record(self, device_id: str, p: Pending) -> LogRecord:
        return self.log_templates[p.template].model_copy(
            update={"seq": p.seq, "request_id": f"{device_id}-{p.seq}", "ts": p.ts}
        )

    def telemetry_record(self, p: Pending) -> TelemetryRecord:
        return self.telemetry_templates[p.template].model_copy(
            update={"seq": p.seq, "ts": p.ts, "outbox_pending": p.pending}
        )


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sys_s() -> float:
    return os.times().system


def run_worker(cfg: WorkerConfig, shared: Any, results: Any) -> None:
    """A worker process: connect its devices in paced waves, run them until `stop`, then put
    a WorkerResult on `results`. With FLEET_SIM_PROFILE=DIR set, worker N writes a cProfile
    of itself to DIR/worker-N.prof (the simulator's own cost, to keep it small)."""
    out = os.environ.get("FLEET_SIM_PROFILE")
    if not out:
        _run_worker(cfg, shared, results)
        return
    import cProfile

    prof = cProfile.Profile(time.process_time)  # CPU time: preemption is not cost
    prof.enable()
    try:
        _run_worker(cfg, shared, results)
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(out, f"worker-{cfg.index}.prof"))


def _run_worker(cfg: WorkerConfig, shared: Any, results: Any) -> None:
    if cfg.nice:
        os.nice(cfg.nice)
    w = Worker(cfg, shared)
    w.rng.seed(cfg.seed)
    w.make_templates()
    w.devices = [SimDevice(d, p, w) for d, p in cfg.devices]
    n = len(w.devices)
    ticks: list[tuple[float, int]] = []  # (due, device index)
    start = time.monotonic()
    gap = 1.0 / cfg.connect_rate if cfg.connect_rate > 0 else 0.0
    to_connect = 0
    next_connect = start
    cpu_at_window: float | None = None
    sys_at_window = 0.0
    wall_at_window = 0.0
    last_misc = start
    stop = shared["stop"]
    while not stop.is_set():
        now = time.monotonic()
        # paced connections: at most one every `gap` seconds
        while to_connect < n and now >= next_connect:
            dev = w.devices[to_connect]
            dev.connect(now)
            # the device's first tick: a phase spread over the second
            heapq.heappush(ticks, (now + 1.0 + w.rng.random(), to_connect))
            to_connect += 1
            next_connect += gap
            if gap == 0.0:
                continue
            now = time.monotonic()
        while w.reconnects and w.reconnects[0][0] <= now:
            _, _, dev = heapq.heappop(w.reconnects)
            if not dev.connected and dev.sock is None:
                dev.connect(now)
        # the window: set by the orchestrator (wall clock), seen here in monotonic time
        ws = shared["window_start"].value
        if ws > 0 and w.window_start_mono is None:
            w.window_start_mono = now - (time.time() - ws)
            cpu_at_window = _cpu_s()
            sys_at_window = _sys_s()
            wall_at_window = now
            w.counters_at_window = dict(vars(w.counters))
            w.backlog_max = 0
        # device ticks due
        while ticks and ticks[0][0] <= now:
            due, i = heapq.heappop(ticks)
            s = w.slice_of(now)
            if s is not None and s >= 0:
                w.late.setdefault(s, array("f")).append((now - due) * 1000.0)
            dev = w.devices[i]
            dev.tick(now)
            if len(dev.outbox) > w.backlog_max:
                w.backlog_max = len(dev.outbox)
            heapq.heappush(ticks, (due + 1.0, i))
        if now - last_misc >= 1.0:  # how many are connected, for the orchestrator
            last_misc = now
            shared["connected"][cfg.index] = sum(d.connected for d in w.devices)
        timeout = 0.05
        if ticks:
            timeout = max(0.0, min(timeout, ticks[0][0] - time.monotonic()))
        if to_connect < n:
            timeout = max(0.0, min(timeout, next_connect - time.monotonic()))
        for key, mask in w.sel.select(timeout):
            dev = key.data
            c = dev.client
            if mask & selectors.EVENT_READ:
                c.loop_read(max_packets=10)
            if mask & selectors.EVENT_WRITE and dev.sock is not None:
                c.loop_write()
        while w.to_write:
            pending, w.to_write = w.to_write, []
            for dev in pending:
                dev.flush()
    end = time.monotonic()
    cpu_end = _cpu_s()
    w.stopping = True
    unacked = sum(len(d.outbox) for d in w.devices)
    issued = sum(d.issued for d in w.devices)
    for d in w.devices:
        try:
            d.client.disconnect()
            if d.sock is not None:
                d.client.loop_write()
        except (OSError, ValueError):
            pass
    results.put(
        WorkerResult(
            index=cfg.index,
            devices=n,
            connected=sum(d.connected for d in w.devices),
            counters=dict(vars(w.counters)),
            counters_window={
                k: v - w.counters_at_window.get(k, 0) for k, v in vars(w.counters).items()
            },
            lags={s: a.tobytes() for s, a in w.lags.items()},
            cpu_window_s=cpu_end - (cpu_at_window if cpu_at_window is not None else cpu_end),
            sys_window_s=_sys_s() - sys_at_window if cpu_at_window is not None else 0.0,
            cpu_total_s=cpu_end,
            wall_window_s=end - wall_at_window if cpu_at_window is not None else 0.0,
            tick_late_ms={s: a.tobytes() for s, a in w.late.items()},
            backlog_max=w.backlog_max,
            rss_mb=_rss_mb(),
            unacked_end=unacked,
            issued_end=issued,
        )
    )
