"""Open-loop HTTP load generation: requests at fixed times, whatever the server does.

`run_load(target, payloads, rate=R, duration_s=S)` sends request `i` at `start + i / R`, for
`i < round(R * S)`, on keep-alive HTTP/1.1 connections (raw asyncio streams, requests encoded
before the clock starts). The schedule never waits for answers: a slow server gets more
requests in flight, not fewer requests, so its latency is measured under the load that was asked
for (a closed loop — N callers each waiting for its answer — would slow down with the server and
hide it). What the open loop cannot do is counted, not hidden:

- `dropped`: requests not sent because every connection was busy and `max_connections` were
  open. The pool starts empty and grows whenever a request is due and no connection is idle
  (concurrency = rate × latency, not fixed); it never grows past the cap.
- `late`: requests written more than `late_ms` after their scheduled time (the generator, or
  opening a connection, could not keep up); `lag_ms` gives the distribution of that delay.
- `in_flight_at_end`: requests still unanswered when the schedule ended; they are then awaited
  (each at most `timeout_s` from its start) and end as a status code or a transport error.

Latency is from the request's write to the end of its response body. `achieved_rate` is requests
written per second over the schedule's window (or up to the last write, when that came later);
`throughput` is responses per second up to the last one. `success_ratio` is 2xx answers over
the requests scheduled: drops, transport errors and error statuses all count against it. The
generator's own CPU time (its event loop's thread) is `generator_cpu_s`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

__all__ = [
    "LoadTestError",
    "LoadTestResult",
    "Payload",
    "ProgressSnapshot",
    "Target",
    "payloads_for_endpoint",
    "payloads_from_body_file",
    "payloads_from_rows",
    "read_rows",
    "run_load",
]

USER_AGENT = "edgepilot-loadtest"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_DISTINCT_BODIES = 1024  # requests cycle through at most this many encoded bodies


class LoadTestError(Exception):
    """The load test cannot run as asked: bad settings, a body that cannot be built, a target
    that cannot be reached."""


# -- what to send, where ----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """An `http://host:port/path` to POST to."""

    host: str
    port: int
    path: str
    token: str | None = None  # sent as `Authorization: Bearer`

    @classmethod
    def parse(cls, url: str, default_path: str = "/") -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            raise LoadTestError(f"{url}: only http:// URLs are supported")
        if not parts.hostname:
            raise LoadTestError(f"{url}: no host")
        try:
            port = parts.port or 80
        except ValueError:
            raise LoadTestError(f"{url}: bad port") from None
        path = parts.path if parts.path not in ("", "/") else default_path
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, port, path)

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.path

    def encode(self, payload: Payload) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = "" if self.token is None else f"Authorization: Bearer {self.token}\r\n"
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            f"User-Agent: {USER_AGENT}\r\nContent-Type: {payload.content_type}\r\n{auth}"
            f"Content-Length: {len(payload.body)}\r\n\r\n"
        )
        return head.encode("latin-1") + payload.body


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str = "application/json"


def _json_payload(doc: Any) -> Payload:
    return Payload(json.dumps(doc, separators=(",", ":")).encode())


def payloads_from_body_file(file: Path) -> list[Payload]:
    """`--body FILE`: a JSON request sent as it is (a top-level list is taken as `inputs`
    rows), or an image (.png, .jpg) sent as the raw body with its content type."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise LoadTestError(f"--body {file}: {exc.strerror or exc}") from None
    content_type = IMAGE_TYPES.get(file.suffix.lower())
    if content_type is not None:
        return [Payload(data, content_type)]
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadTestError(f"--body {file} is not JSON (nor a .png/.jpg image): {exc}") from None
    if isinstance(doc, list):
        doc = {"inputs": doc}
    if not isinstance(doc, dict):
        raise LoadTestError(f"--body {file}: expected a JSON object (or a list of rows)")
    return [_json_payload(doc)]


def read_rows(file: Path) -> list[Any]:
    """`--inputs FILE`: rows from a .npy array (first axis: rows), a .json list of rows (or
    `{"inputs": [...]}`), or a numeric .csv (a header line is skipped)."""
    suffix = file.suffix.lower()
    if not file.is_file():
        raise LoadTestError(f"--inputs {file}: no such file")
    try:
        if suffix == ".npy":
            import numpy as np

            array = np.load(file, allow_pickle=False)
            if array.ndim < 1 or array.dtype.kind not in "biuf":
                raise LoadTestError(f"--inputs {file}: expected a numeric array of rows")
            rows: Any = array.tolist()
        elif suffix == ".json":
            rows = json.loads(file.read_text())
            if isinstance(rows, dict):
                rows = rows.get("inputs")
        elif suffix == ".csv":
            rows = _csv_rows(file)
        else:
            raise LoadTestError(f"--inputs {file}: give a .npy, .csv or .json file of rows")
    except (OSError, ValueError) as exc:
        raise LoadTestError(f"--inputs {file}: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise LoadTestError(f"--inputs {file}: no rows")
    return rows


def _csv_rows(file: Path) -> list[list[float]]:
    import csv

    rows: list[list[float]] = []
    with file.open(newline="") as handle:
        for n, record in enumerate(csv.reader(handle)):
            if not record:
                continue
            try:
                rows.append([float(v) for v in record])
            except ValueError:
                if n == 0:
                    continue  # a header
                raise ValueError(f"line {n + 1} is not numeric: {record[:4]}") from None
    return rows


def payloads_from_rows(rows: Sequence[Any], per_request: int = 1) -> list[Payload]:
    """`{"inputs": [...]}` bodies of `per_request` consecutive rows each (wrapping around), as
    many as it takes to use every row once, at most MAX_DISTINCT_BODIES."""
    if per_request < 1:
        raise LoadTestError("--rows must be at least 1")
    count = min(MAX_DISTINCT_BODIES, max(1, math.ceil(len(rows) / per_request)))
    out = []
    for i in range(count):
        start = i * per_request
        out.append(
            _json_payload({"inputs": [rows[(start + k) % len(rows)] for k in range(per_request)]})
        )
    return out


def payloads_for_endpoint(
    info: dict[str, Any], per_request: int = 1, count: int = 64, seed: int = 0
) -> list[Payload]:
    """Default bodies for a hub endpoint, from `GET /api/v1/endpoints/{name}`: random rows of
    the input shape of the model that reads the request (through a preprocess step or not),
    values in [0, 1) (integers 0..9 for an integer input): `count` distinct bodies."""
    spec = info.get("spec") or {}
    steps = spec.get("steps") or []
    models = {m.get("alias"): m for m in info.get("models") or []}
    if any(step.get("kind") == "data_cache" for step in steps):
        raise LoadTestError(
            f"endpoint {info.get('name')!r} reads ids from its data source: give a body "
            '(--body FILE with {"id": "..."})'
        )
    aliases = [
        (step.get("params") or {}).get("model")
        for step in steps
        if not step.get("inputs") and step.get("kind") in ("model", "preprocess")
    ]
    chosen = next((models[a] for a in aliases if a in models), None)
    if chosen is None and models:
        chosen = next(iter(models.values()))
    model_input: dict[str, Any] = (chosen or {}).get("input") or {}
    shape = model_input.get("shape")
    if not shape:
        raise LoadTestError(
            f"cannot tell what endpoint {info.get('name')!r} takes: give --body FILE or "
            "--inputs FILE"
        )
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
    integer = str(model_input.get("dtype", "float")).startswith(("int", "uint"))
    rng = random.Random(seed)

    def value() -> float | int:
        return rng.randrange(10) if integer else round(rng.random(), 4)

    def row(level: int = 0) -> Any:
        if level == len(dims):
            return value()
        return [row(level + 1) for _ in range(dims[level])]

    return [_json_payload({"inputs": [row() for _ in range(per_request)]}) for _ in range(count)]


# -- the result -------------------------------------------------------------------------------
class Percentiles(BaseModel):
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        if not seconds:
            return cls()
        ms = sorted(s * 1000.0 for s in seconds)
        return cls(
            min=round(ms[0], 3),
            p50=round(_quantile(ms, 0.50), 3),
            p90=round(_quantile(ms, 0.90), 3),
            p99=round(_quantile(ms, 0.99), 3),
            max=round(ms[-1], 3),
            mean=round(sum(ms) / len(ms), 3),
        )


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Connections(BaseModel):
    opened: int  # connections opened over the run
    peak_busy: int  # most requests in flight at once
    max: int  # the cap


class LoadTestResult(BaseModel):
    url: str
    requested_rate: float
    duration_s: float
    scheduled: int  # round(rate × duration)
    sent: int  # written to a connection
    completed: int  # answered, any status
    ok: int  # answered 2xx
    success_ratio: float  # ok / scheduled
    dropped: int  # not sent: all connections busy at the cap
    late: int  # written more than late_ms after their scheduled time
    late_ms: float
    in_flight_at_end: int  # unanswered when the schedule ended
    status_codes: dict[str, int]  # "200" → count
    errors: dict[str, int]  # transport errors: connect, timeout, closed, protocol
    achieved_rate: float  # written per second
    throughput: float  # answered per second
    latency_ms: Percentiles  # write → end of the response, answered requests
    lag_ms: Percentiles  # write time − scheduled time, sent requests
    connections: Connections
    wall_s: float  # start → the last answer or failure (at least the duration)
    generator_cpu_s: float  # the event loop thread's CPU time
    generator_cpu: float  # generator_cpu_s / wall_s (1.0 = one core busy)


@dataclass(frozen=True)
class ProgressSnapshot:
    elapsed_s: float
    scheduled: int  # due so far
    total: int
    sent: int
    completed: int
    ok: int
    errors: int
    dropped: int
    in_flight: int
    connections: int


# -- the driver -------------------------------------------------------------------------------
class _Conn:
    __slots__ = ("reader", "writer", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False

    def dead(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class _ProtocolError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response whole; (status, whether the connection may be used again)."""
    head = await reader.readuntil(b"\r\n\r\n")
    end = head.find(b"\r\n")
    version, _, rest = head[:end].partition(b" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise _ProtocolError(f"bad status line {head[:end][:80]!r}") from None
    keep = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in head[end + 2 : -4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            keep = token != b"close" and (keep or token == b"keep-alive")
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    elif status >= 200 and status not in (204, 304):
        await reader.read()  # the body ends with the connection
        keep = False
    return status, keep


class _Driver:
    def __init__(
        self,
        address: tuple[str, int],
        requests: list[bytes],
        *,
        rate: float,
        duration_s: float,
        max_connections: int,
        timeout_s: float,
        late_ms: float,
        on_progress: Callable[[ProgressSnapshot], None] | None,
        progress_s: float,
    ) -> None:
        self.address = address
        self.requests = requests
        self.rate = rate
        self.interval = 1.0 / rate
        self.duration_s = duration_s
        self.total = max(1, round(rate * duration_s))
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.late_s = late_ms / 1000.0
        self.on_progress = on_progress
        self.progress_s = progress_s
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []  # LIFO: the warmest connection first, cold ones time out
        self.open = 0  # connections open or opening
        self.opened = 0
        self.busy = 0
        self.peak_busy = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.due = 0
        self.sent = 0
        self.dropped = 0
        self.late = 0
        self.ok = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.start = 0.0
        self.last_sent = 0.0
        self.last_done = 0.0  # the last answer
        self.last_end = 0.0  # the last answer or failure

    async def run(self) -> tuple[int, float, float]:
        """(in flight at the end of the schedule, wall seconds, CPU seconds)."""
        cpu0 = time.thread_time()
        self.start = self.loop.time() + 0.01
        ticker = self.loop.create_task(self._tick()) if self.on_progress else None
        await self._schedule()
        end = self.start + self.duration_s
        if end > self.loop.time():
            await asyncio.sleep(end - self.loop.time())
        in_flight = len(self.tasks)
        while self.tasks:
            await asyncio.gather(*list(self.tasks))
        wall = max(self.last_end, self.last_sent, end) - self.start
        cpu = time.thread_time() - cpu0
        if ticker is not None:
            ticker.cancel()
            self._report()
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        return in_flight, wall, cpu

    async def _schedule(self) -> None:
        loop, start, interval = self.loop, self.start, self.interval
        for i in range(self.total):
            due = start + i * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: still let answers in
            self.due = i + 1
            self._dispatch(i, due)

    def _dispatch(self, i: int, due: float) -> None:
        conn: _Conn | None = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.dead():
                conn = candidate
                break
            candidate.close()  # closed by the server while idle
            self.open -= 1
        if conn is None:
            if self.open >= self.max_connections:
                self.dropped += 1
                return
            self.open += 1
        task = self.loop.create_task(self._one(conn, self.requests[i % len(self.requests)], due))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(*self.address, limit=1 << 20)
        self.opened += 1
        return _Conn(reader, writer)

    async def _one(self, conn: _Conn | None, request: bytes, due: float) -> None:
        loop = self.loop
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        sent_at: float | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                if conn is None:
                    conn = await self._connect()
                for attempt in (0, 1):
                    reused = conn.used
                    conn.used = True
                    if sent_at is None:
                        sent_at = loop.time()
                        self._sent(sent_at, due)
                    conn.writer.write(request)
                    try:
                        status, keep = await _read_response(conn.reader)
                        break
                    except asyncio.IncompleteReadError as exc:
                        if attempt or not reused or exc.partial:
                            raise
                        # a kept-alive connection the server closed as we wrote: once more,
                        # on a new one (what any HTTP client does)
                        conn.close()
                        conn = await self._connect()
            done = loop.time()
            assert sent_at is not None
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self.open -= 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.last_end = loop.time()
            self._failed(exc, sent_at is not None)
            return
        finally:
            self.busy -= 1
        self.last_done = self.last_end = done
        self.latencies.append(done - sent_at)
        self.status[status] += 1
        if 200 <= status < 300:
            self.ok += 1
        if keep:
            self.idle.append(conn)
        else:
            conn.close()
            self.open -= 1

    def _sent(self, at: float, due: float) -> None:
        self.sent += 1
        self.last_sent = at
        lag = at - due
        self.lags.append(lag)
        if lag > self.late_s:
            self.late += 1

    def _failed(self, exc: BaseException, sent: bool) -> None:
        if isinstance(exc, TimeoutError):
            kind = "timeout" if sent else "connect timeout"
        elif not sent:
            kind = "connect"
        elif isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
            kind = "closed"
        elif isinstance(exc, _ProtocolError | ValueError | asyncio.LimitOverrunError):
            kind = "protocol"
        else:
            kind = type(exc).__name__
        self.errors[kind] += 1

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.progress_s)
            self._report()

    def _report(self) -> None:
        assert self.on_progress is not None
        self.on_progress(
            ProgressSnapshot(
                elapsed_s=max(0.0, self.loop.time() - self.start),
                scheduled=self.due,
                total=self.total,
                sent=self.sent,
                completed=len(self.latencies),
                ok=self.ok,
                errors=sum(self.errors.values()),
                dropped=self.dropped,
                in_flight=len(self.tasks),
                connections=self.open,
            )
        )


def _resolve(target: Target, timeout_s: float = 2.0) -> tuple[str, int]:
    """The address every connection of the run goes to. A name with several addresses gets
    the first that accepts a connection, as any HTTP client would: `localhost` is often ::1
    first, while a device's local API listens on 127.0.0.1 only (one address for the whole
    run, taken blindly, would make every request a connect error)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LoadTestError(f"{target.url}: cannot resolve {target.host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    if len(addresses) > 1:
        for family, address in addresses:
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.settimeout(timeout_s)
                    probe.connect(address)
            except OSError:
                continue
            return str(address[0]), int(address[1])
    address = addresses[0][1]  # none answers: the run counts the connect errors
    return str(address[0]), int(address[1])


async def arun_load(
    target: Target,
    payloads: Sequence[Payload],
    *,
    rate: float,
    duration_s: float,
    max_connections: int = 1024,
    timeout_s: float = 10.0,
    late_ms: float = 10.0,
    on_progress: Callable[[ProgressSnapshot], None] | None = None,
    progress_s: float = 0.25,
) -> LoadTestResult:
    """Run the load test in the running event loop; see `run_load`."""
    if not rate > 0 or not math.isfinite(rate):
        raise LoadTestError(f"the rate must be a positive number of requests per second: {rate}")
    if not duration_s > 0 or not math.isfinite(duration_s):
        raise LoadTestError(f"the duration must be a positive number of seconds: {duration_s}")
    if round(rate * duration_s) < 1:
        raise LoadTestError(
            f"{rate}/s for {duration_s} s is less than one request: raise the rate or duration"
        )
    if max_connections < 1:
        raise LoadTestError("--max-connections must be at least 1")
    if not timeout_s > 0:
        raise LoadTestError("the timeout must be positive")
    if not (late_ms >= 0 and math.isfinite(late_ms)):
        raise LoadTestError(f"--late-ms must be a number of milliseconds ≥ 0: {late_ms}")
    if not payloads:
        raise LoadTestError("nothing to send")
    driver = _Driver(
        _resolve(target, min(timeout_s, 2.0)),
        [target.encode(p) for p in payloads],
        rate=rate,
        duration_s=duration_s,
        max_connections=max_connections,
        timeout_s=timeout_s,
        late_ms=late_ms,
        on_progress=on_progress,
        progress_s=progress_s,
    )
    in_flight, wall, cpu = await driver.run()
    completed = len(driver.latencies)
    window = max(duration_s, driver.last_sent - driver.start)
    answered_s = max(driver.last_done - driver.start, 1e-9)
    return LoadTestResult(
        url=target.url,
        requested_rate=rate,
        duration_s=duration_s,
        scheduled=driver.total,
        sent=driver.sent,
        completed=completed,
        ok=driver.ok,
        success_ratio=round(driver.ok / driver.total, 6),
        dropped=driver.dropped,
        late=driver.late,
        late_ms=late_ms,
        in_flight_at_end=in_flight,
        status_codes={str(k): v for k, v in sorted(driver.status.items())},
        errors=dict(sorted(driver.errors.items())),
        achieved_rate=round(driver.sent / window, 3),
        throughput=round(completed / answered_s, 3) if completed else 0.0,
        latency_ms=Percentiles.of(driver.latencies),
        lag_ms=Percentiles.of(driver.lags),
        connections=Connections(
            opened=driver.opened, peak_busy=driver.peak_busy, max=max_connections
        ),
        wall_s=round(wall, 3),
        generator_cpu_s=round(cpu, 3),
        generator_cpu=round(cpu / wall, 4) if wall > 0 else 0.0,
    )


def run_load(
    target: Target,
    payloads: Sequence[Payload],
    *,
    rate: float,
    duration_s: float,
    max_connections: int = 1024,
    timeout_s: float = 10.0,
    late_ms: float = 10.0,
    on_progress: Callable[[ProgressSnapshot], None] | None = None,
    progress_s: float = 0.25,
) -> LoadTestResult:
    """POST `payloads` (in turn) to `target` at `rate` requests per second for `duration_s`
    seconds, open loop, in a new event loop; the counts, latencies and schedule lag."""
    return asyncio.run(
        arun_load(
            target,
            payloads,
            rate=rate,
            duration_s=duration_s,
            max_connections=max_connections,
            timeout_s=timeout_s,
            late_ms=late_ms,
            on_progress=on_progress,
            progress_s=progress_s,
        )
    )
