"""Benchmark: the hub's HTTP front: one uvicorn process (today) against granian and against
several processes sharing the port, on the same app and endpoint.

One command (after scripts/test or scripts/demo made .venv):

    .venv/bin/python bench/front.py [--rounds 3] [--seconds 3] [--processes 2] [--quick]

The fronts, each its own process tree on loopback, each with its own copy of one prepared
hub data dir (bench/peers.py's `prepare`: the digits CNN trained with the project's pipeline,
the MobileNetV2-shaped model with random weights) holding the workload's endpoint
(bench/peers.py's `hub_spec`, batching off unless --batching), stored before start so every
process builds it in its lifespan:

- uvicorn: `edgepilot hub serve --no-scheduler`, uvicorn with uvloop + httptools, one process;
- granian: the same app (bench/peers/front_app.py's factory, `hub serve`'s settings) under
  granian, one worker; granian is installed into its own venv (build/peers/granian-venv, from
  the pinned bench/peers/requirements-granian.txt, on first run), never the project's;
- workers: uvicorn --workers N, one listening socket shared by N spawned worker processes;
- reuseport: N independent uvicorn processes, each its own SO_REUSEPORT socket.

The multi-process fronts share the data dir (one registry SQLite file); each process opens
its own Hub and loads its own copy of the models. Two workloads: the CNN with JSON rows,
MobileNetV2 with JPEG bodies (preprocess step). bench/serving.py's load generator at
concurrency 16 and 64, interleaved rounds (the front order rotates each round). Per cell:
throughput (median of rounds, and the range), p50 and p99 (all rounds' latencies), CPU per
request and RSS summed over the front's process tree, and, for the multi-process fronts, the
busiest process's share of the tree's CPU (how evenly the connections were spread).
JSON into bench/results/front.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
sys.path.insert(0, str(ROOT / "bench"))

import _servers  # noqa: E402  (bench/: the server processes)
import peers  # noqa: E402  (bench/peers.py: the workloads, the endpoint, measuring)
import procs  # noqa: E402  (bench/peers/: process trees)
import serving  # noqa: E402  (bench/serving.py: the token, the load generator)

FRONTS = {
    "uvicorn": "uvicorn + uvloop + httptools, 1 process (hub serve today)",
    "granian": "granian {granian}, 1 worker",
    "workers": "uvicorn --workers {n} (one shared socket)",
    "reuseport": "{n} uvicorn processes, SO_REUSEPORT",
}
MULTI = ("workers", "reuseport")
WORKLOADS = {k: peers.WORKLOADS[k] for k in ("cnn", "jpeg")}
STARTED = "Application startup complete."  # uvicorn's line, once per process
LOGS = peers.VENVS / "logs"


def granian_version() -> str:
    for line in (PEERS_DIR / "requirements-granian.txt").read_text().splitlines():
        if line.startswith("granian=="):
            return line.split("==", 1)[1].strip()
    return "?"


def label(front: str, processes: int) -> str:
    return FRONTS[front].format(n=processes, granian=granian_version())


def endpoint_name(workload: str) -> str:
    return f"peers-{workload}"


def log_path(front: str, hub_data: Path) -> Path:
    return LOGS / f"front-{front}-{hub_data.parent.name}-{hub_data.name}.log"


# -- the fronts (each `front.py --serve FRONT ...` execs the real server, same pid) ------------
def serve(args: argparse.Namespace) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = os.open(log_path(args.serve, args.hub_data), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    python = sys.executable
    os.environ["FRONT_HUB_DATA"] = str(args.hub_data)
    if args.serve == "uvicorn":
        edgepilot = str(Path(python).with_name("edgepilot"))
        cmd = [edgepilot, "--data-dir", str(args.hub_data), "hub", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(args.port), "--no-scheduler"]
        os.execv(edgepilot, cmd)
    port = ["--port", str(args.port)]
    if args.serve == "granian":
        os.execv(python, [python, str(PEERS_DIR / "front_granian.py"), *port])
    if args.serve in MULTI:
        flag = f"--{args.serve}"
        cmd = [python, str(PEERS_DIR / "front_uvicorn.py"), *port, flag, str(args.processes)]
        os.execv(python, cmd)
    raise SystemExit(f"unknown front {args.serve}")


def expected_starts(front: str, processes: int) -> int:
    """How many times the front's log says STARTED once every process serves (granian: its
    own log lines; the health check is enough for its one worker)."""
    if front in MULTI:
        return processes
    return 1 if front == "uvicorn" else 0


@contextlib.contextmanager
def start(front: str, hub_data: Path, processes: int, path: str) -> Iterator[_servers.Server]:
    """The front as a process tree, once every process of it has started its app; stopped as
    one tree."""
    family: list[int] = []
    cli = [front, "--hub-data", str(hub_data), "--processes", str(processes)]
    try:
        with _servers.start_server(
            Path(__file__), front, cli, path, health="/api/v1/health", cwd=ROOT
        ) as s:
            try:
                wait_started(front, hub_data, expected_starts(front, processes), s.proc)
                yield peers.TreeServer(s.key, s.port, s.path, s.proc)
            finally:
                family = procs.tree(s.proc.pid)[1:]
    finally:
        procs.stop(family)


def wait_started(
    front: str, hub_data: Path, count: int, proc: subprocess.Popen[bytes], timeout_s: float = 120
) -> None:
    log = log_path(front, hub_data)
    deadline = time.monotonic() + timeout_s
    while count and log.read_text(errors="replace").count(STARTED) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{front}: not every process started (see {log})")
        time.sleep(0.2)


def front_data(base: Path, load: peers.Workload, front: str, batching: bool) -> Path:
    """A fresh copy of the prepared data dir with the workload's endpoint stored in it."""
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.store import EndpointStore

    data = base.parent / f"{base.name}-front-{load.key}-{front}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(base, data)
    spec = peers.hub_spec(load, batching)
    hub = Hub.open(HubSettings(data_dir=data, run_scheduler=False))
    try:
        EndpointStore(hub.db).create(EndpointSpec.model_validate(spec))
    finally:
        hub.close()
    return data


# -- measuring --------------------------------------------------------------------------------
@dataclass
class Cell(peers.Cell):
    busiest_share: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["busiest_process_cpu_share"] = (
            float(np.median(self.busiest_share)) if self.busiest_share else None
        )
        return out


def own_cpu_s(pid: int) -> float:
    """One process's CPU seconds (not its children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / procs.TICK


def measure(
    server: _servers.Server,
    requests: list[bytes],
    conc: int,
    args: argparse.Namespace,
    cell: Cell,
) -> None:
    pids = procs.tree(server.proc.pid)
    before = {pid: own_cpu_s(pid) for pid in pids}
    peers.measure(server, requests, conc, args, cell)
    used = [own_cpu_s(pid) - before[pid] for pid in pids]
    if len(pids) > 1 and sum(used) > 0:
        cell.busiest_share.append(max(used) / sum(used))


def run_workload(load: peers.Workload, args: argparse.Namespace) -> dict[str, Any]:
    path = f"/api/v1/endpoints/{endpoint_name(load.key)}/predict"
    cells: dict[tuple[str, int], Cell] = {}
    with ExitStack() as stack:
        running: dict[str, _servers.Server] = {}
        for front in args.fronts:
            data = front_data(args.hub_data, load, front, args.batching)
            running[front] = stack.enter_context(start(front, data, args.processes, path))
        # peers.py's helpers take a body as the hub does for keys starting "hub"
        requests = {f: peers.prepared("hub", s, load) for f, s in running.items()}
        peers.check_answers({f"hub-{f}": s for f, s in running.items()}, load)
        idle = {f: procs.rss_bytes(s.proc.pid) for f, s in running.items()}
        for conc in args.concurrency:
            for r in range(args.rounds):
                keys = list(running)
                for front in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    cell = cells.setdefault((front, conc), Cell(idle_rss=idle[front]))
                    measure(running[front], requests[front], conc, args, cell)
                print(
                    f"{load.key}, concurrency {conc}, round {r + 1}: load {serving.loadavg()}",
                    file=sys.stderr,
                )
    return {f"{f}@{c}": cell.summary() for (f, c), cell in cells.items()}


# -- reporting --------------------------------------------------------------------------------
def table(results: dict[str, dict[str, Any]], levels: list[int], processes: int) -> str:
    lines = [
        "| model, body | c | front | req/s (rounds' range) | vs today | p50 | p99 "
        "| CPU / req (all processes) | RSS idle → peak (sum) | busiest process's CPU share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wk, cells in results.items():
        for conc in levels:
            today = cells.get(f"uvicorn@{conc}")
            for front in FRONTS:
                c = cells.get(f"{front}@{conc}")
                if c is None:
                    continue
                spread = f"{min(c['round_rps']):.0f}–{max(c['round_rps']):.0f}"
                vs = f"{c['rps'] / today['rps']:.2f}×" if today and today["rps"] else "-"
                share = c.get("busiest_process_cpu_share")
                lines.append(
                    f"| {WORKLOADS[wk]} | {conc} | {label(front, processes)} "
                    f"| {c['rps']:.0f} ({spread}) | {vs} "
                    f"| {c['p50_ms']:.1f} ms | {c['p99_ms']:.1f} ms "
                    f"| {peers.fmt(c['cpu_ms_per_req'], '.2f')} ms "
                    f"| {c['idle_rss_mb']:.0f} → {peers.fmt(c['peak_rss_mb'])} MB "
                    f"| {'-' if share is None or front not in MULTI else f'{share:.0%}'} |"
                )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--warm", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--fronts", nargs="+", choices=list(FRONTS), default=list(FRONTS))
    parser.add_argument("--processes", type=int, default=2, help="N of the multi-process fronts")
    parser.add_argument("--batching", action="store_true", help="the endpoint batches (off)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 s cells")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir to reuse (or train into)")
    parser.add_argument("--json", type=Path, help="[bench/results/front.json; --quick: none]")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes: at least 1")
    if args.quick:
        args.rounds, args.seconds, args.warm = 1, 1.0, 0.3
    if args.json is None and not args.quick and not args.serve:
        args.json = ROOT / "bench" / "results" / "front.json"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return
    # terminated (timeout, kill): unwind, so that every front's process tree is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    if "granian" in args.fronts:
        peers.ensure_venv("granian")
    tmp = None
    if args.hub_data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-front-")
        args.hub_data = Path(tmp.name) / "hub"
    info = serving.machine()
    loads, train_s = peers.prepare(args.hub_data)
    results = {wk: run_workload(loads[wk], args) for wk in args.workloads}
    info["loadavg_end"] = serving.loadavg()
    print(f"machine: {json.dumps(info)}")
    print(
        f"rounds: {args.rounds}, {args.seconds:g} s measured per cell after {args.warm:g} s "
        f"warm-up; endpoint batching {'on' if args.batching else 'off'}; training "
        f"{train_s:.0f} s; whole run {time.time() - started:.0f} s\n"
    )
    print(table(results, args.concurrency, args.processes))
    if args.json:
        payload = {
            "machine": info,
            "granian": granian_version(),
            "args": {
                k: v
                for k, v in vars(args).items()
                if k in ("rounds", "seconds", "warm", "processes", "batching")
            },
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
