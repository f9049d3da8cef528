"""Benchmark: how accurately `edgepilot loadtest` keeps its rate (cloud_hub.devtools.loadtest).

Two servers, each in its own process on loopback: (t) a trivial asyncio HTTP/1.1 server that
answers every request at once with a fixed JSON body, so what is measured is the generator
itself; (h) the hub's app (`create_app`, uvicorn, access log off) with the digits MLP endpoint
of examples/endpoints/sync.json posted over REST. The generator runs in this process and drives
each server at fixed rates, open loop, for `--seconds` each: one request = one digit row as JSON,
256 different digits cycled. For every cell: requested and achieved rate and their ratio,
latency p50/p99, schedule lag p99 (how late requests were written against their scheduled
time), late and dropped requests, the generator's CPU (its event loop thread, in cores) and the
server's.

    python bench/loadtest.py [--seconds 10] [--rates-trivial 500,1000,2000]
                             [--rates-hub 250,500] [--hub-data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _servers as servers  # noqa: E402  (bench/, the script's own folder)
from _servers import Server  # noqa: E402

from cloud_hub.devtools.loadtest import LoadTestResult, Payload, Target, run_load  # noqa: E402

TARGET_RATE = 500
TOLERANCE = 0.02


# -- the servers (each runs in its own process: `loadtest.py --serve ...`) --------------------
ANSWER = b'{"labels":["0"],"predictions":[{"label":"0","score":1.0}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
    + ANSWER
)


async def _trivial(port: int) -> None:
    """Answers POSTs at once; `GET /arrivals` gives the POSTs' arrival times since the last
    GET (CLOCK_MONOTONIC, the same clock in every process), to check the rate on the server."""
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /arrivals"):
                    body = json.dumps(arrivals).encode()
                    arrivals.clear()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    continue
                arrivals.append(time.monotonic())
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def serve(kind: str, port: int, hub_data: Path | None) -> None:
    if kind == "trivial":
        asyncio.run(_trivial(port))
        return
    import uvicorn

    from cloud_hub.api.app import create_app
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    assert hub_data is not None
    hub = Hub.open(HubSettings(data_dir=hub_data, run_scheduler=False, serving_workers=0))
    app = create_app(hub, scheduler=False, fleet=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(key: str, args: list[str], path: str) -> contextlib.AbstractContextManager[Server]:
    return servers.start_server(ROOT / "bench" / "loadtest.py", key, args, path)


# -- setup ------------------------------------------------------------------------------------
TOKEN: list[str] = []  # the hub data dir's admin token, once prepare_hub has opened it


def prepare_hub(hub_data: Path) -> None:
    """The digits MLP in the registry (trained now if missing), ONNX fp32; its admin token."""
    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.training.request import TrainRequest

    hub = Hub.open(HubSettings(data_dir=hub_data, run_scheduler=False))
    try:
        try:
            hub.registry.resolve_version("digits/digits-mlp:1")
        except NotFound:
            run = hub.pipeline().start(
                TrainRequest(
                    project="digits",
                    dataset="digits",
                    model_type="mlp",
                    formats=["onnx"],
                    quantize=False,
                )
            )
            if run.status != "succeeded":
                raise RuntimeError(f"training failed: {run.error}") from None
        TOKEN[:] = [hub.admin_token]
    finally:
        hub.close()


def post_endpoint(port: int) -> None:
    import httpx

    spec = json.loads((ROOT / "examples" / "endpoints" / "sync.json").read_text())
    base = f"http://127.0.0.1:{port}/api/v1/endpoints"
    auth = {"Authorization": f"Bearer {TOKEN[0]}"}
    httpx.delete(f"{base}/{spec['name']}", timeout=30, headers=auth)
    resp = httpx.post(base, json=spec, timeout=60, headers=auth)
    resp.raise_for_status()


def digit_payloads() -> list[Payload]:
    from sklearn.datasets import load_digits

    x = load_digits().data[:256] / 16.0
    return [
        Payload(json.dumps({"inputs": [[round(float(v), 4) for v in row]]}).encode()) for row in x
    ]


def warm(server: Server, payloads: list[Payload]) -> None:
    target = Target("127.0.0.1", server.port, server.path, TOKEN[0] if TOKEN else None)
    run_load(target, payloads, rate=200, duration_s=1.0)


def server_arrivals(server: Server) -> list[float] | None:
    """The trivial server's arrival times since the last call (None for the hub)."""
    import httpx

    if server.key != "trivial":
        return None
    times: list[float] = httpx.get(f"http://127.0.0.1:{server.port}/arrivals").json()
    return times


def measure(
    server: Server, payloads: list[Payload], rate: float, seconds: float
) -> tuple[LoadTestResult, float, float | None]:
    """The result, the server's CPU (cores), and the rate the server saw: arrivals over their
    span, (n - 1) / (last - first) (trivial server only)."""
    target = Target("127.0.0.1", server.port, server.path, TOKEN[0] if TOKEN else None)
    server_arrivals(server)
    srv0, wall0 = server.cpu_s(), time.perf_counter()
    result = run_load(target, payloads, rate=rate, duration_s=seconds)
    wall = time.perf_counter() - wall0
    times = server_arrivals(server)
    seen = None
    if times and len(times) > 1:
        seen = (len(times) - 1) / (times[-1] - times[0])
    return result, (server.cpu_s() - srv0) / wall, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["trivial", "hub"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates-trivial", default="500,1000,2000")
    parser.add_argument("--rates-hub", default="250,500")
    parser.add_argument("--hub-data", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.hub_data)
        return

    with tempfile.TemporaryDirectory() as tmp:
        hub_data = args.hub_data or Path(tmp) / "hub"
        prepare_hub(hub_data)
        payloads = digit_payloads()
        plan = [
            ("trivial", [float(r) for r in args.rates_trivial.split(",") if r]),
            ("hub", [float(r) for r in args.rates_hub.split(",") if r]),
        ]
        rows: list[dict[str, Any]] = []
        load: list[str] = []
        for kind, rates in plan:
            if not rates:
                continue
            if kind == "trivial":
                ctx = start_server("trivial", ["trivial"], "/predict")
            else:
                ctx = start_server(
                    "hub",
                    ["hub", "--hub-data", str(hub_data)],
                    "/api/v1/endpoints/digits-sync/predict",
                )
            with ctx as server:
                if kind == "hub":
                    post_endpoint(server.port)
                warm(server, payloads)
                for rate in rates:
                    load.append(f"{os.getloadavg()[0]:.1f}")
                    result, server_cpu, seen = measure(server, payloads, rate, args.seconds)
                    rows.append(row(kind, result, server_cpu, seen))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        report(rows, args.seconds, load)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


def row(kind: str, r: LoadTestResult, server_cpu: float, seen: float | None) -> dict[str, Any]:
    return {
        "server": "(t) trivial asyncio server" if kind == "trivial" else "(h) hub endpoint (MLP)",
        "requested": r.requested_rate,
        "scheduled": r.scheduled,
        "sent": r.sent,
        "achieved": r.achieved_rate,
        "ratio": round(r.achieved_rate / r.requested_rate, 4),
        "server_saw": None if seen is None else round(seen, 2),
        "ok": r.ok,
        "p50_ms": r.latency_ms.p50,
        "p99_ms": r.latency_ms.p99,
        "lag_p50_ms": r.lag_ms.p50,
        "lag_p99_ms": r.lag_ms.p99,
        "lag_max_ms": r.lag_ms.max,
        "late": r.late,
        "dropped": r.dropped,
        "peak_in_flight": r.connections.peak_busy,
        "generator_cpu": r.generator_cpu,
        "server_cpu": round(server_cpu, 3),
    }


def machine() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }


def report(rows: list[dict[str, Any]], seconds: float, load: list[str]) -> None:
    print(f"\n{seconds:g} s per cell; load average at each cell's start: {', '.join(load)}\n")
    head = (
        "| server | requested | achieved | ratio | server saw | ok | p50 | p99 | lag p50 | lag p99 "
        "| lag max | late (>10 ms) | dropped | peak in flight | generator CPU | server CPU |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        saw = "-" if r["server_saw"] is None else f"{r['server_saw']:.1f}/s"
        print(
            f"| {r['server']} | {r['requested']:g}/s | {r['achieved']:.1f}/s | {r['ratio']:.4f} "
            f"| {saw} | {r['ok']}/{r['scheduled']} | {r['p50_ms']:.2f} ms "
            f"| {r['p99_ms']:.2f} ms | {r['lag_p50_ms']:.2f} ms | {r['lag_p99_ms']:.2f} ms "
            f"| {r['lag_max_ms']:.2f} ms | {r['late']} | {r['dropped']} | {r['peak_in_flight']} "
            f"| {r['generator_cpu']:.3f} | {r['server_cpu']:.2f} |"
        )
    print()
    for r in rows:
        if r["requested"] == TARGET_RATE:
            ok = abs(r["ratio"] - 1) <= TOLERANCE
            verdict = "met" if ok else "MISSED"
            print(
                f"{r['server']}: achieved {r['achieved']:.1f}/s at {TARGET_RATE}/s, "
                f"ratio {r['ratio']:.4f}: within {TOLERANCE:.0%} {verdict}"
            )


if __name__ == "__main__":
    main()
