"""Benchmark: the hub's serving engine against a minimal FastAPI + onnxruntime endpoint.

Trains the digits CNN into a hub data directory once (or reuses `--hub-data`), then starts five
HTTP servers on loopback, each in its own process, all run by uvicorn with the same settings
(access log off): (a) a minimal FastAPI + onnxruntime endpoint written here, the baseline;
(b) the hub's app (`create_app`) with an endpoint posted over REST, batching off, and the same
with the prediction log and its monitor off (what logging every prediction costs); (c) the
same with adaptive batching; (z) (a) without the model (same body parsed, a fixed answer of the
same shape): the ceiling of any Python HTTP endpoint here, whatever its model step costs. One
lean load generator (asyncio, raw HTTP/1.1 keep-alive, one connection per concurrent caller,
requests prepared before the clock starts) drives each server at concurrency 1, 16 and 64, in
interleaved rounds (the order rotates every round) so that load from elsewhere on the machine
hits all alike. Also: the prediction cache's hit latency against a miss, on the hub.

Then, with the servers gone, the engine in process (no HTTP): `ServingEngine.predict` called by
1 and 64 threads, batching off against on, for the digits CNN and for a heavy MLP registered by
the script (about a millisecond a row alone), so what adaptive batching does for the model step
itself shows apart from the HTTP stack; and each model's own cost (onnxruntime, one thread).

    python bench/serving.py [--rounds 3] [--seconds 3] [--hub-data DIR] [--json out.json]
    python bench/serving.py --no-http ...      # only the in-process section
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
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _servers as servers  # noqa: E402  (bench/, the script's own folder)
from _servers import Server  # noqa: E402

from cloud_hub.devtools.synthetic_models import random_mlp  # noqa: E402

SERVERS = {
    "a": "(a) FastAPI + onnxruntime",
    "b": "(b) hub endpoint, no batching",
    "bn": "(b) without the prediction log",
    "c": "(c) hub endpoint, adaptive batching",
    "z": "(z) FastAPI, same body, no model",
    "b0": "(b) before the fixes",
    "c0": "(c) before the fixes",
}
MODEL_REF = "digits/digits-cnn:latest"


# -- the servers (each runs in its own process: `serving.py --serve ...`) ---------------------
class Body(BaseModel):
    inputs: list[Any]


def baseline_app(model: Path, labels: list[str]) -> Any:
    """(a): what one writes for a model behind FastAPI, no more."""
    import onnxruntime as ort
    from fastapi import FastAPI

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the hub's endpoints (ModelRef.threads = 1)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        x = np.asarray(body.inputs, dtype=np.float32)
        scores = session.run(None, {input_name: x})[0]
        return {
            "labels": labels,
            "predictions": [
                {"label": labels[int(s.argmax())], "score": float(s.max()), "scores": s.tolist()}
                for s in scores
            ],
        }

    return app


def no_model_app(labels: list[str]) -> Any:
    """(z): (a) without the model: the same pydantic body parsed, the same numpy conversion, a
    fixed answer of the same shape. What any Python HTTP endpoint costs here before its model
    runs: its throughput over (a)'s is the ceiling that batching the model could approach."""
    from fastapi import FastAPI

    scores = np.full(len(labels), 1.0 / len(labels), dtype=np.float32)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        x = np.asarray(body.inputs, dtype=np.float32)
        return {
            "labels": labels,
            "predictions": [
                {"label": labels[0], "score": float(scores.max()), "scores": scores.tolist()}
                for _ in range(len(x))
            ],
        }

    return app


def serve(kind: str, port: int, hub_data: Path, model: Path | None, labels: str) -> None:
    import uvicorn

    if kind == "baseline":
        assert model is not None
        app = baseline_app(model, json.loads(labels))
    elif kind == "nomodel":
        app = no_model_app(json.loads(labels))
    else:
        from cloud_hub.api.app import create_app
        from cloud_hub.core.settings import HubSettings
        from cloud_hub.hub import Hub

        # "hub-nolog": the prediction log (and the monitor reading it) off, to show their cost
        logged = kind == "hub"
        settings = HubSettings(
            data_dir=hub_data, run_scheduler=False, prediction_log=logged, monitor=logged
        )
        app = create_app(Hub.open(settings), scheduler=False, fleet=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(
    key: str, args: list[str], path: str, health: str, src: Path = ROOT
) -> contextlib.AbstractContextManager[Server]:
    """A server process; `src`: the source tree it runs (this one, or an older copy)."""
    script = src / "bench" / "serving.py"
    return servers.start_server(script, key, args, path, health=health, cwd=src)


# -- the hub's token ----------------------------------------------------------------------------
AUTH: dict[str, str] = {}  # the hub data dir's admin token (prepare_hub), sent to every server


def use_token(hub_data: Path) -> None:
    from cloud_hub.core.settings import HubSettings

    token = HubSettings(data_dir=hub_data).admin_token_path.read_text().strip()
    AUTH["Authorization"] = f"Bearer {token}"


# -- the load generator -----------------------------------------------------------------------
def request_bytes(port: int, path: str, body: bytes) -> bytes:
    auth = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Refused(Exception):
    """A 503 with Retry-After: the server shedding load (the hub's caps on bytes in flight and
    rows queued); a well-behaved client waits that long and sends again."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"503, retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length, retry_after = 0, None
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
        elif line[:12].lower() == b"retry-after:":
            retry_after = float(line[12:])
    body = await reader.readexactly(length)
    if head.startswith(b"HTTP/1.1 503") and retry_after is not None:
        raise Refused(retry_after)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bad response: {head[:200]!r} {body[:200]!r}")
    return body


@dataclass
class Load:
    latencies_s: list[float] = field(default_factory=list)
    requests: int = 0
    refused: int = 0  # 503s with Retry-After in the measured window (each caller then waited)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    bodies: list[bytes] = field(default_factory=list, repr=False)


async def _drive(
    port: int,
    requests: Callable[[int], bytes],
    concurrency: int,
    warm_s: float,
    seconds: float,
    keep_bodies: bool,
) -> tuple[list[float], list[bytes], int]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    latencies: list[float] = []
    bodies: list[bytes] = []
    refused = 0
    start = time.perf_counter()
    t_measure = start + warm_s
    t_end = t_measure + seconds
    counter = iter(range(1 << 62))

    async def caller(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused
        while True:
            request = requests(next(counter))
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                body = await _exchange(reader, writer, request)
            except Refused as busy:
                refused += t0 >= t_measure
                await asyncio.sleep(min(busy.retry_after_s, max(0.0, t_end - t0)))
                continue
            t1 = time.perf_counter()
            if t0 >= t_measure:
                latencies.append(t1 - t0)
                if keep_bodies:
                    bodies.append(body)

    await asyncio.gather(*(caller(r, w) for r, w in conns))
    for _, writer in conns:
        writer.close()
    return latencies, bodies, refused


def drive(
    server: Server,
    requests: Callable[[int], bytes],
    concurrency: int,
    *,
    warm_s: float,
    seconds: float,
    keep_bodies: bool = False,
) -> Load:
    cpu0, srv0, wall0 = time.process_time(), server.cpu_s(), time.perf_counter()
    latencies, bodies, refused = asyncio.run(
        _drive(server.port, requests, concurrency, warm_s, seconds, keep_bodies)
    )
    wall = time.perf_counter() - wall0
    return Load(
        latencies_s=latencies,
        requests=len(latencies),
        refused=refused,
        wall_s=wall,
        client_cpu_s=time.process_time() - cpu0,
        server_cpu_s=server.cpu_s() - srv0,
        bodies=bodies,
    )


def cycle(requests: list[bytes]) -> Callable[[int], bytes]:
    return lambda i: requests[i % len(requests)]


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Cell:
    """One server at one concurrency, over all rounds."""

    latencies_s: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)  # cores
    server_cpu: list[float] = field(default_factory=list)  # cores

    @property
    def rps(self) -> float:
        return float(np.median(self.round_rps))

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1000


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> dict[str, str]:
    import fastapi
    import onnxruntime
    import uvicorn

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "loadavg_start": loadavg(),
    }


def prepare_hub(hub_data: Path) -> tuple[Path, list[str], float]:
    """The digits CNN in the registry (trained now if missing): its ONNX file and labels."""
    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.training.request import TrainRequest

    hub = Hub.open(HubSettings(data_dir=hub_data, run_scheduler=False))
    train_s = 0.0
    try:
        try:
            version = hub.registry.resolve_version(MODEL_REF)
        except NotFound:
            started = time.time()
            run = hub.pipeline().start(
                TrainRequest(
                    project="digits",
                    dataset="digits",
                    model_type="cnn",
                    formats=["onnx"],
                    quantize=False,
                )
            )
            if run.status != "succeeded":
                raise RuntimeError(f"training failed: {run.error}") from None
            train_s = time.time() - started
            version = hub.registry.resolve_version(MODEL_REF)
        artifact = next(a for a in version.artifacts if (a.format, a.precision) == ("onnx", "fp32"))
        model = hub_data / "bench-cnn.onnx"
        model.write_bytes(hub.registry.artifact_blob(artifact.sha256))
        use_token(hub_data)  # Hub.open made it
        return model, list(version.labels), train_s
    finally:
        hub.close()


def endpoint_spec(name: str, batching: bool, cache: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"name": "predict", "kind": "model", "params": {"model": "cnn"}}]
    if cache:
        steps.append(
            {
                "name": "cache",
                "kind": "prediction_cache",
                "params": {"target": "predict", "key": "content", "ttl_s": 3600},
            }
        )
    return {
        "name": name,
        "models": {"cnn": {"ref": MODEL_REF, "format": "onnx", "precision": "fp32"}},
        "steps": steps,
        "output": "cache" if cache else "predict",
        "batching": {"enabled": batching, "max_batch_size": 64, "max_wait_ms": 2},
    }


def post_endpoint(port: int, spec: dict[str, Any]) -> None:
    import httpx

    base = f"http://127.0.0.1:{port}/api/v1/endpoints"
    httpx.delete(f"{base}/{spec['name']}", timeout=30, headers=AUTH)
    response = httpx.post(base, json=spec, timeout=60, headers=AUTH)
    if response.status_code != 201:
        raise RuntimeError(f"creating {spec['name']}: {response.status_code} {response.text}")


def digit_bodies() -> list[bytes]:
    """Model-ready CNN inputs, one 8×8×1 digit each (values in [0, 1])."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).reshape(-1, 8, 8, 1)
    return [json.dumps({"inputs": [row.round(4).tolist()]}).encode() for row in x[:256]]


def check_same_answers(servers: dict[str, Server], bodies: list[bytes]) -> None:
    """All three give the same labels (and scores to 1e-4) for the same inputs."""
    import httpx

    for body in bodies[:20]:
        answers = {}
        for key, s in servers.items():
            r = httpx.post(
                f"http://127.0.0.1:{s.port}{s.path}",
                content=body,
                headers={"Content-Type": "application/json", **AUTH},
                timeout=30,
            )
            r.raise_for_status()
            answers[key] = [p["scores"] for p in r.json()["predictions"]]
        for key in answers:
            np.testing.assert_allclose(answers[key], answers["a"], atol=1e-4)


def cache_latency(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Concurrency 1 against the cached endpoint: one input over and over (hits) against a new
    input every time (misses); HTTP round trip and the engine's own latency_ms."""
    rng = np.random.default_rng(0)
    path = "/api/v1/endpoints/bench-cache/predict"
    repeat = request_bytes(server.port, path, digit_bodies()[0])
    fresh = [
        request_bytes(
            server.port,
            path,
            json.dumps({"inputs": [rng.random((8, 8, 1)).round(6).tolist()]}).encode(),
        )
        for _ in range(args.cache_requests)
    ]
    out: dict[str, Any] = {}
    results: dict[str, list[Load]] = {"hit": [], "miss": []}
    unused = iter(range(1 << 62))  # across rounds: a miss never repeats an input
    for _ in range(args.rounds):
        for kind in ("hit", "miss"):
            reqs: Callable[[int], bytes] = (
                (lambda i: repeat)
                if kind == "hit"
                else (lambda i: fresh[next(unused) % len(fresh)])
            )
            results[kind].append(
                drive(server, reqs, 1, warm_s=0.2, seconds=args.cache_seconds, keep_bodies=True)
            )
    for kind, loads in results.items():
        lat = [v for load in loads for v in load.latencies_s]
        answers = [json.loads(b) for load in loads for b in load.bodies]
        out[kind] = {
            "requests": len(lat),
            "http_p50_ms": float(np.percentile(lat, 50)) * 1000,
            "http_p99_ms": float(np.percentile(lat, 99)) * 1000,
            "engine_p50_ms": float(np.median([a["latency_ms"] for a in answers])),
            "hits": sum(a["cache"]["hits"] for a in answers),
            "misses": sum(a["cache"]["misses"] for a in answers),
        }
    if out["miss"]["hits"]:
        out["note"] = "--cache-requests too small: some 'misses' repeated an input"
    return out


# -- in process: the engine alone, no HTTP ----------------------------------------------------
HEAVY_REF = "digits/bench-mlp:latest"
HEAVY_DIMS = (1024, 2560, 2)  # inputs, width, hidden layers: ~1 ms a row alone, 1 thread


heavy_model_bytes = random_mlp  # ~26 MB of weights with HEAVY_DIMS


def register_heavy(hub: Any) -> None:
    from cloud_hub.core.errors import NotFound
    from cloud_hub.registry.registry import NewArtifact

    try:
        hub.registry.resolve_version(HEAVY_REF)
    except NotFound:
        hub.registry.register_version(
            "digits",
            "bench-mlp",
            artifacts=[NewArtifact("onnx", "fp32", heavy_model_bytes(*HEAVY_DIMS))],
            source="uploaded",
            labels=[str(i) for i in range(10)],
            preprocessing={"input_kind": "tabular", "layout": "NF"},
        )


def model_spec(name: str, ref: str, batching: bool) -> dict[str, Any]:
    return {
        "name": name,
        "models": {"m": {"ref": ref, "format": "onnx", "precision": "fp32"}},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
        "output": "predict",
        "batching": {"enabled": batching, "max_batch_size": 64, "max_wait_ms": 2},
    }


def drive_engine(
    engine: Any, name: str, requests: list[Any], callers: int, warm_s: float, seconds: float
) -> Load:
    """`callers` threads calling `engine.predict` back to back (one row each) for `seconds`
    after `warm_s`; the latencies of the calls started in the measured window."""
    import threading

    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)
    t_measure = t_end = 0.0

    def caller(k: int) -> None:
        mine: list[float] = []
        i = k
        start.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            engine.predict(name, requests[i % len(requests)])
            if t0 >= t_measure:
                mine.append(time.perf_counter() - t0)
            i += callers
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    t_measure = time.perf_counter() + warm_s
    t_end = t_measure + seconds
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0
    return Load(
        latencies_s=latencies,
        requests=len(latencies),
        wall_s=wall,
        client_cpu_s=0.0,
        server_cpu_s=time.process_time() - cpu0,
    )


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    """The engine with no HTTP in front: the digits CNN and a heavy MLP, batching off and on,
    driven by threads calling `ServingEngine.predict` (what the REST layer calls), in
    interleaved rounds. Rows/s, latency, batch sizes, and the process's CPU (cores)."""
    from sklearn.datasets import load_digits

    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.values import PredictRequest

    hub = Hub.open(HubSettings(data_dir=args.hub_data, run_scheduler=False))
    register_heavy(hub)
    engine = ServingEngine(hub.registry, hub.db, threads=max(args.inproc_callers) + 8)
    digits = (load_digits().data / 16.0).reshape(-1, 8, 8, 1)[:256]
    heavy_x = np.random.default_rng(1).random((256, HEAVY_DIMS[0])).round(4)
    models = {
        "cnn": (MODEL_REF, [PredictRequest(inputs=[r.tolist()]) for r in digits]),
        "mlp": (HEAVY_REF, [PredictRequest(inputs=[r.tolist()]) for r in heavy_x]),
    }
    cells: dict[str, dict[str, Any]] = {}
    names = []
    try:
        for model, (ref, _) in models.items():
            for batching in (False, True):
                name = f"bench-inproc-{model}-{'on' if batching else 'off'}"
                with contextlib.suppress(NotFound):
                    engine.delete(name)
                engine.create(EndpointSpec.model_validate(model_spec(name, ref, batching)))
                names.append(name)
        for model, (_, reqs) in models.items():
            for callers in args.inproc_callers:
                for r in range(args.rounds):
                    order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                    for mode in order:
                        name = f"bench-inproc-{model}-{mode}"
                        before = engine.stats(name).get("batching", {}).get("m", {})
                        load = drive_engine(
                            engine, name, reqs, callers, args.warm, args.inproc_seconds
                        )
                        after = engine.stats(name).get("batching", {}).get("m", {})
                        key = f"{model}|{mode}|{callers}"
                        cell = cells.setdefault(
                            key, {"lat": [], "rps": [], "cpu": [], "batches": 0, "rows": 0}
                        )
                        cell["lat"] += load.latencies_s
                        cell["rps"].append(load.requests / args.inproc_seconds)
                        cell["cpu"].append(load.server_cpu_s / load.wall_s)
                        cell["batches"] += after.get("batches", 0) - before.get("batches", 0)
                        cell["rows"] += after.get("rows", 0) - before.get("rows", 0)
                print(f"in process, {model}, {callers} callers: load {loadavg()}", file=sys.stderr)
    finally:
        for name in names:
            with contextlib.suppress(NotFound):
                engine.delete(name)
        engine.close()
        hub.close()
    out: dict[str, Any] = {}
    for key, cell in cells.items():
        lat = cell["lat"]
        out[key] = {
            "rows_per_s": float(np.median(cell["rps"])),
            "round_rps": cell["rps"],
            "p50_ms": float(np.percentile(lat, 50)) * 1000,
            "p99_ms": float(np.percentile(lat, 99)) * 1000,
            "cpu": float(np.median(cell["cpu"])),
            "mean_batch": round(cell["rows"] / cell["batches"], 2) if cell["batches"] else None,
        }
    return out


def inprocess_table(cells: dict[str, Any], callers: list[int]) -> str:
    lines = [
        "| model (in process, no HTTP) | callers | batching | rows/s | on vs off | p50 | p99 "
        "| p99/p50 | mean batch | process CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    titles = {"cnn": "digits CNN", "mlp": "MLP 1024-2560-2560-10"}
    for model in ("cnn", "mlp"):
        for conc in callers:
            off = cells[f"{model}|off|{conc}"]["rows_per_s"]
            for mode in ("off", "on"):
                c = cells[f"{model}|{mode}|{conc}"]
                lines.append(
                    f"| {titles[model]} | {conc} | {mode} | {c['rows_per_s']:.0f} "
                    f"| {c['rows_per_s'] / off:.2f}× | {c['p50_ms']:.2f} ms | {c['p99_ms']:.2f} ms "
                    f"| {c['p99_ms'] / c['p50_ms']:.1f} | {c['mean_batch'] or '-'} "
                    f"| {c['cpu']:.2f} |"
                )
    return "\n".join(lines)


def model_cost(hub_data: Path, model: Path) -> dict[str, float]:
    """The models alone (onnxruntime, one thread): ms per call at batch 1 and per row at 64."""
    import onnxruntime as ort

    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    hub = Hub.open(HubSettings(data_dir=hub_data, run_scheduler=False))
    try:
        register_heavy(hub)
        version = hub.registry.resolve_version(HEAVY_REF)
        blob = hub.registry.artifact_blob(version.artifacts[0].sha256)
        heavy = blob if isinstance(blob, bytes) else str(blob)
    finally:
        hub.close()
    out: dict[str, float] = {}
    for key, source, shape in (
        ("cnn", str(model), (8, 8, 1)),
        ("mlp", heavy, (HEAVY_DIMS[0],)),
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in (1, 64):
            x = np.random.default_rng(0).random((batch, *shape)).astype(np.float32)
            for _ in range(5):
                session.run(None, {name: x})
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.5:
                session.run(None, {name: x})
                n += 1
            out[f"{key}_ms_per_row_at_{batch}"] = (time.perf_counter() - t0) / n / batch * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--warm", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--cache-seconds", type=float, default=2.0)
    parser.add_argument("--cache-requests", type=int, default=40000)
    parser.add_argument("--hub-data", type=Path, help="a hub data dir to reuse (or train into)")
    parser.add_argument(
        "--before-src",
        type=Path,
        help="also run (b) and (c) from this source tree (a copy before a change), same run",
    )
    parser.add_argument(
        "--inproc-seconds", type=float, help="measured seconds per in-process cell [--seconds]"
    )
    parser.add_argument("--inproc-callers", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--no-http", action="store_true", help="only the in-process section")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--serve", choices=["baseline", "nomodel", "hub", "hub-nolog"], help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--labels", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        assert args.port is not None and args.hub_data is not None
        serve(args.serve, args.port, args.hub_data, args.model, args.labels)
        return

    if args.inproc_seconds is None:
        args.inproc_seconds = args.seconds
    tmp = None
    if args.hub_data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-serving-")
        args.hub_data = Path(tmp.name)
    info = machine()
    model, labels, train_s = prepare_hub(args.hub_data)
    bodies = digit_bodies()
    hub_args = ["hub", "--hub-data", str(args.hub_data)]
    base_args = ["baseline", "--hub-data", str(args.hub_data), "--model", str(model)]
    base_args += ["--labels", json.dumps(labels)]
    z_args = ["nomodel", "--hub-data", str(args.hub_data), "--labels", json.dumps(labels)]
    cells: dict[tuple[str, int], Cell] = {}
    if args.no_http:
        run_in_process(args, model, info, cells, None, None)
        return
    nobatch, batch = (f"/api/v1/endpoints/{n}/predict" for n in ("bench-nobatch", "bench-batch"))
    health = "/api/v1/health"
    with ExitStack() as stack:
        a = stack.enter_context(start_server("a", base_args, "/predict", "/health"))
        b = stack.enter_context(start_server("b", hub_args, nobatch, health))
        c = stack.enter_context(start_server("c", hub_args, batch, health))
        z = stack.enter_context(start_server("z", z_args, "/predict", "/health"))
        nolog_args = ["hub-nolog", *hub_args[1:]]
        bn = stack.enter_context(start_server("bn", nolog_args, nobatch, health))
        servers = {"a": a, "b": b, "bn": bn, "c": c, "z": z}
        if args.before_src is not None:
            src = args.before_src.resolve()
            servers["b0"] = stack.enter_context(start_server("b0", hub_args, nobatch, health, src))
            servers["c0"] = stack.enter_context(start_server("c0", hub_args, batch, health, src))
        post_endpoint(b.port, endpoint_spec("bench-nobatch", batching=False))
        post_endpoint(b.port, endpoint_spec("bench-cache", batching=False, cache=True))
        post_endpoint(c.port, endpoint_spec("bench-batch", batching=True))
        time.sleep(2.5)  # every hub picks up the endpoints another created (serving_poll_s)
        check_same_answers({k: v for k, v in servers.items() if k != "z"}, bodies)
        prepared = {
            k: [request_bytes(s.port, s.path, body) for body in bodies] for k, s in servers.items()
        }
        for conc in args.concurrency:
            for r in range(args.rounds):
                keys = list(servers)
                order = keys[r % len(keys) :] + keys[: r % len(keys)]
                for key in order:
                    load = drive(
                        servers[key],
                        cycle(prepared[key]),
                        conc,
                        warm_s=args.warm,
                        seconds=args.seconds,
                    )
                    cell = cells.setdefault((key, conc), Cell())
                    cell.latencies_s += load.latencies_s
                    cell.round_rps.append(load.requests / args.seconds)
                    cell.client_cpu.append(load.client_cpu_s / load.wall_s)
                    cell.server_cpu.append(load.server_cpu_s / load.wall_s)
                print(f"concurrency {conc}, round {r + 1}: load {loadavg()}", file=sys.stderr)
        cache = cache_latency(b, args)
        batching = _batch_stats(c.port)
    run_in_process(args, model, info, cells, cache, batching, keys=list(servers))
    if tmp is not None:
        tmp.cleanup()


def run_in_process(
    args: argparse.Namespace,
    model: Path,
    info: dict[str, str],
    cells: dict[tuple[str, int], Cell],
    cache: dict[str, Any] | None,
    batching: dict[str, Any] | None,
    keys: list[str] | None = None,
) -> None:
    """The in-process section (after the HTTP servers are gone), then every table."""
    costs = model_cost(args.hub_data, model)
    inproc = in_process(args)
    info["loadavg_end"] = loadavg()

    print(f"machine: {json.dumps(info)}")
    print(
        f"rounds: {args.rounds}, {args.seconds:g} s measured per HTTP cell, "
        f"{args.inproc_seconds:g} s per in-process cell, after {args.warm:g} s warm-up\n"
    )
    print(
        "models alone (onnxruntime, 1 thread): "
        + ", ".join(f"{k} {v:.4f} ms" for k, v in costs.items())
        + "\n"
    )
    if keys is not None:
        print(markdown_table(cells, args.concurrency, keys))
        print()
        print(ceiling_lines(cells, args.concurrency))
        print()
    if cache is not None:
        print(cache_table(cache))
        print(f"\nbatching at (c): {json.dumps(batching)}\n")
    print(inprocess_table(inproc, args.inproc_callers))
    if args.json:
        payload = {
            "machine": info,
            "model_cost": costs,
            "cells": {
                f"{k}@{conc}": {
                    "rps": cell.rps,
                    "round_rps": cell.round_rps,
                    "p50_ms": cell.pct_ms(50),
                    "p99_ms": cell.pct_ms(99),
                    "client_cpu": cell.client_cpu,
                    "server_cpu": cell.server_cpu,
                }
                for (k, conc), cell in cells.items()
            },
            "cache": cache,
            "batching": batching,
            "in_process": inproc,
        }
        args.json.write_text(json.dumps(payload, indent=2))


def ceiling_lines(cells: dict[tuple[str, int], Cell], levels: list[int]) -> str:
    """(z)/(a): the most any Python HTTP endpoint gets over (a) here, against (c)/(a)."""
    lines = [
        "| concurrency | (c) / (a) | (z) / (a): the ceiling | target for (c) |",
        "|---|---|---|---|",
    ]
    for conc in levels:
        base = cells[("a", conc)].rps
        c, z = cells[("c", conc)].rps / base, cells[("z", conc)].rps / base
        lines.append(f"| {conc} | {c:.2f}× | {z:.2f}× | {'3×' if conc == 64 else '-'} |")
    return "\n".join(lines)


def _batch_stats(port: int) -> dict[str, Any]:
    import httpx

    stats = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/endpoints/bench-batch/stats", headers=AUTH
    ).json()
    snap: dict[str, Any] = stats.get("batching", {}).get("cnn", {})
    return {k: snap.get(k) for k in ("batches", "rows", "mean_batch_size", "max_batch_size")}


def markdown_table(cells: dict[tuple[str, int], Cell], levels: list[int], keys: list[str]) -> str:
    lines = [
        "| server | concurrency | req/s | vs (a) | p50 | p99 | p99/p50 | round spread "
        "| server CPU | client CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for conc in levels:
        base = cells[("a", conc)].rps
        for key in keys:
            name, cell = SERVERS[key], cells[(key, conc)]
            p50, p99 = cell.pct_ms(50), cell.pct_ms(99)
            spread = max(cell.round_rps) / min(cell.round_rps)
            lines.append(
                f"| {name} | {conc} | {cell.rps:.0f} | {cell.rps / base:.2f}× | {p50:.2f} ms "
                f"| {p99:.2f} ms | {p99 / p50:.1f} | {spread:.2f} "
                f"| {np.median(cell.server_cpu):.2f} | {np.median(cell.client_cpu):.2f} |"
            )
    return "\n".join(lines)


def cache_table(cache: dict[str, Any]) -> str:
    lines = [
        "| prediction cache (hub, concurrency 1) | requests | HTTP p50 | HTTP p99 "
        "| engine p50 (latency_ms) | hits | misses |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("hit", "miss"):
        c = cache[kind]
        lines.append(
            f"| {kind} | {c['requests']} | {c['http_p50_ms']:.2f} ms | {c['http_p99_ms']:.2f} ms "
            f"| {c['engine_p50_ms']:.3f} ms | {c['hits']} | {c['misses']} |"
        )
    if "note" in cache:
        lines.append(f"\n{cache['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
