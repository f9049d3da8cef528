"""Benchmark: the hub's serving against LitServe and BentoML, and against the machine's limit.

One command (after scripts/test or scripts/demo made .venv):

    .venv/bin/python bench/peers.py [--rounds 3] [--seconds 3] [--quick] [--json out.json]

Installs each peer into its own venv, outside the project's (build/peers/<peer>-venv, from the
pinned bench/peers/requirements-<peer>.txt; reused while its stamp matches). Trains the digits
CNN with the project's pipeline into a temporary hub data dir (bench/serving.py's
`prepare_hub`) and registers a MobileNetV2-shaped ONNX model with random weights
(bench/peers/mobilenet.py, 224×224, 1000 classes). Three workloads: the CNN with JSON rows;
MobileNetV2 with JPEG bodies (640×480) decoded and preprocessed by the server (the hub's
`preprocess` step; the peers do the same work in OpenCV, bench/peers/workload.py); MobileNetV2
with raw float JSON (1.3 MB). For each, four servers on loopback, each its own process tree, one
inference thread (onnxruntime intra-op 1): `edgepilot hub serve` with the endpoint batching off,
and on (each hub its own copy of the data dir), LitServe with its batching, BentoML
(@bentoml.service, one worker, one thread). bench/serving.py's load generator drives every one
at concurrency 1, 16 and 64 in interleaved rounds (the server order rotates each round). The
limit: the same decode + preprocess + model work in a bare loop in this process, no HTTP, on as
many threads as cores.

Per cell: throughput (median of rounds), p50 and p99 (all rounds' latencies), server CPU per
request (its process tree's /proc stat, before and after), RSS of the tree (idle after
start-up, and the peak sampled during the cell). JSON into bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
VENVS = ROOT / "build" / "peers"
sys.path.insert(0, str(PEERS_DIR))

import _servers  # noqa: E402  (bench/: the server processes)
import procs  # noqa: E402  (bench/peers/)
import serving  # noqa: E402  (bench/serving.py: the hub, the token, the load generator)
from _servers import Server  # noqa: E402
from mobilenet import PREPROCESSING, mobilenet_v2_bytes  # noqa: E402

MNV2_REF = "digits/bench-mobilenet-v2:latest"
WORKLOADS = {
    "cnn": "digits CNN, JSON rows (535 B)",
    "jpeg": "MobileNetV2, JPEG 640×480",
    "raw": "MobileNetV2, 1.3 MB JSON floats",
    "npy": "MobileNetV2, 602 KB .npy (hub only)",
}
HUB_ONLY = ("npy",)  # bodies the peers take no documented way: the hub against its JSON floats
SERVERS = {
    "hub-off": "hub, batching off",
    "hub-on": "hub, adaptive batching",
    "hub-auto": "hub, batching auto (the default)",
    "litserve": "LitServe 0.2.19 (batching)",
    "bentoml": "BentoML 1.4.40",
}
PEERS = ("litserve", "bentoml")
HUBS = ("hub-off", "hub-on", "hub-auto")
BATCH = {"max_batch_size": 64, "max_wait_ms": 2}  # the hub's, and LitServe's (2 ms timeout)


# -- the peers' venvs -------------------------------------------------------------------------
def ensure_venv(peer: str) -> Path:
    """build/peers/<peer>-venv with bench/peers/requirements-<peer>.txt; its python."""
    reqs = PEERS_DIR / f"requirements-{peer}.txt"
    venv = VENVS / f"{peer}-venv"
    python = venv / "bin" / "python"
    base = shutil.which("python3") or "python3"
    stamp_text = hashlib.sha256(reqs.read_bytes() + base.encode()).hexdigest()
    stamp = venv / "requirements.stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == stamp_text:
        return python
    print(f"installing {peer} into {venv} (from {reqs.relative_to(ROOT)})", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(reqs)], check=True)
    stamp.write_text(stamp_text)
    return python


# -- the servers (each `peers.py --serve KIND ...` execs the real server, same pid) -----------
def serve(args: argparse.Namespace) -> None:
    kind = args.serve
    logs = VENVS / "logs"  # the servers' own output (the hub's access log among it)
    logs.mkdir(parents=True, exist_ok=True)
    log = os.open(
        logs / f"{kind}-{args.mode or args.hub_data.name}.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    )
    os.dup2(log, 1)
    os.dup2(log, 2)
    if kind == "hub":
        edgepilot = str(Path(sys.executable).with_name("edgepilot"))
        cmd = [edgepilot, "--data-dir", str(args.hub_data), "hub", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(args.port), "--no-scheduler"]
        os.execv(edgepilot, cmd)
    python = str(VENVS / f"{kind}-venv" / "bin" / "python")
    os.chdir(PEERS_DIR)
    if kind == "litserve":
        cmd = [python, "litserve_server.py", "--mode", args.mode, "--model", str(args.model)]
        cmd += ["--labels", str(args.labels), "--port", str(args.port)]
        cmd += ["--batch", str(BATCH["max_batch_size"])]
        cmd += ["--batch-timeout", str(BATCH["max_wait_ms"] / 1000)]
        os.execv(python, cmd)
    if kind == "bentoml":
        os.environ["PEER_MODEL"], os.environ["PEER_LABELS"] = str(args.model), str(args.labels)
        bentoml = str(VENVS / "bentoml-venv" / "bin" / "bentoml")
        cmd = [bentoml, "serve", "bentoml_service:Peer", "--host", "127.0.0.1"]
        cmd += ["--port", str(args.port)]
        os.execv(bentoml, cmd)
    raise SystemExit(f"unknown server {kind}")


class TreeServer(Server):
    """A Server whose CPU is its whole process tree's (the load generator reads `cpu_s`)."""

    def cpu_s(self) -> float:
        return procs.cpu_s(self.proc.pid)


def start(key: str, args: list[str], path: str, health: str) -> Any:
    """bench/_servers.py's server process, measured as a tree, and stopped as one: the peers'
    child processes (inference workers) are terminated with it."""

    @contextlib.contextmanager
    def tree_server() -> Any:
        family: list[int] = []
        try:
            with _servers.start_server(
                Path(__file__), key, args, path, health=health, cwd=ROOT
            ) as s:
                try:
                    yield TreeServer(s.key, s.port, s.path, s.proc)
                finally:
                    family = procs.tree(s.proc.pid)[1:]
        finally:
            procs.stop(family)

    return tree_server()


# -- the workloads ----------------------------------------------------------------------------
@dataclass
class Workload:
    key: str
    model: Path  # the ONNX file the peers load
    labels: Path  # a JSON list
    bodies: list[bytes]  # what the hub gets (JSON, a JPEG's bytes, a .npy)
    jpeg: bool
    npy: bool = False


def jpeg_images(n: int) -> list[bytes]:
    """Synthetic 640×480 photos-alike (smooth gradients, shapes, some noise), JPEG quality 90."""
    import cv2

    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        base = np.stack(
            [
                127 + 100 * np.sin(xx / (40 + 9 * i) + c) * np.cos(yy / (55 + 7 * c))
                for c in range(3)
            ],
            axis=-1,
        )
        image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        for _ in range(6):
            centre = (int(rng.integers(0, 640)), int(rng.integers(0, 480)))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(image, centre, int(rng.integers(20, 120)), colour, -1)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(data.tobytes())
    return out


def reference_tensor(jpeg: bytes) -> np.ndarray:
    """The hub's own decode + preprocess (edge_agent.core.preprocess) of one JPEG."""
    from edge_agent.core.preprocess import decode_image, prepare_image

    x, _ = prepare_image(decode_image(jpeg, PREPROCESSING), PREPROCESSING)
    return x


def register_mobilenet(hub_data: Path) -> Path:
    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.registry.registry import NewArtifact

    model = hub_data / "bench-mnv2.onnx"
    hub = Hub.open(HubSettings(data_dir=hub_data, run_scheduler=False))
    try:
        try:
            version = hub.registry.resolve_version(MNV2_REF)
            model.write_bytes(hub.registry.artifact_blob(version.artifacts[0].sha256))
        except NotFound:
            data = mobilenet_v2_bytes()
            hub.registry.register_version(
                "digits",
                "bench-mobilenet-v2",
                artifacts=[NewArtifact("onnx", "fp32", data)],
                source="uploaded",
                labels=[f"class{i}" for i in range(1000)],
                preprocessing=PREPROCESSING,
            )
            model.write_bytes(data)
    finally:
        hub.close()
    return model


def prepare(hub_data: Path) -> tuple[dict[str, Workload], float]:
    cnn, cnn_labels, train_s = serving.prepare_hub(hub_data)  # trains, and sets the token
    mnv2 = register_mobilenet(hub_data)
    (hub_data / "cnn-labels.json").write_text(json.dumps(cnn_labels))
    (hub_data / "mnv2-labels.json").write_text(json.dumps([f"class{i}" for i in range(1000)]))
    jpegs = jpeg_images(8)
    tensors = [reference_tensor(j).round(4) for j in jpegs[:4]]
    raws = [json.dumps({"inputs": x.tolist()}).encode() for x in tensors]
    npys = [npy_bytes(x) for x in tensors]
    loads = {
        "cnn": Workload("cnn", cnn, hub_data / "cnn-labels.json", serving.digit_bodies(), False),
        "jpeg": Workload("jpeg", mnv2, hub_data / "mnv2-labels.json", jpegs, True),
        "raw": Workload("raw", mnv2, hub_data / "mnv2-labels.json", raws, False),
        "npy": Workload("npy", mnv2, hub_data / "mnv2-labels.json", npys, False, npy=True),
    }
    return loads, train_s


def npy_bytes(x: np.ndarray) -> bytes:
    """A tensor as `np.save` writes it (the body of an application/x-npy request)."""
    import io

    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def hub_spec(load: Workload, batching: bool | str) -> dict[str, Any]:
    ref = serving.MODEL_REF if load.key == "cnn" else MNV2_REF
    steps: list[dict[str, Any]] = []
    if load.jpeg:
        steps.append({"name": "pre", "kind": "preprocess", "params": {"model": "m"}})
    predict: dict[str, Any] = {"name": "predict", "kind": "model", "params": {"model": "m"}}
    if load.jpeg:
        predict["inputs"] = ["pre"]
    steps.append(predict)
    return {
        "name": f"peers-{load.key}",
        "models": {"m": {"ref": ref, "format": "onnx", "precision": "fp32"}},
        "steps": steps,
        "output": "predict",
        "batching": {"enabled": batching, **BATCH},
    }


BOUNDARY = "peersbenchboundary7f3a"


def multipart(field_name: str, data: bytes) -> bytes:
    """A JPEG as the peers take files: one multipart/form-data file field."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
        f'filename="image.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def bodies(key: str, load: Workload) -> list[tuple[bytes, str]]:
    """The load's bodies as this server takes them, with their Content-Type: the hub takes a
    JPEG as the body itself, the peers as a multipart file field (their documented way)."""
    if load.npy:
        return [(body, "application/x-npy") for body in load.bodies]
    if not load.jpeg:
        return [(body, "application/json") for body in load.bodies]
    if key.startswith("hub"):
        return [(body, "image/jpeg") for body in load.bodies]
    field_name = "content" if key == "litserve" else "image"
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    return [(multipart(field_name, body), ctype) for body in load.bodies]


def prepared(key: str, server: Server, load: Workload) -> list[bytes]:
    """bench/serving.py's prepared requests (built before the clock starts), each with its
    body's Content-Type."""
    json_type = b"Content-Type: application/json"
    return [
        serving.request_bytes(server.port, server.path, body).replace(
            json_type, f"Content-Type: {ctype}".encode(), 1
        )
        for body, ctype in bodies(key, load)
    ]


def check_answers(servers: dict[str, Server], load: Workload) -> None:
    """Every server gives the same scores (to 1e-4) as the first for the same inputs."""
    import httpx

    answers: dict[str, list[Any]] = {}
    for key, server in servers.items():
        answers[key] = []
        for body, ctype in bodies(key, load)[:3]:
            r = httpx.post(
                f"http://127.0.0.1:{server.port}{server.path}",
                content=body,
                headers={"Content-Type": ctype, **serving.AUTH},
                timeout=60,
            )
            if r.status_code != 200:
                raise RuntimeError(f"{key}: {r.status_code} {r.text[:500]}")
            answers[key].append([p["scores"] for p in r.json()["predictions"]])
    first = next(iter(answers))
    for key, got in answers.items():
        np.testing.assert_allclose(got, answers[first], atol=1e-4, err_msg=key)


# -- measuring --------------------------------------------------------------------------------
@dataclass
class Cell:
    latencies_s: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    cpu_ms_per_req: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    refused: int = 0  # 503s (the hub's backpressure), summed over rounds
    idle_rss: int = 0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s or [float("nan")]
        return {
            "rps": float(np.median(self.round_rps)),
            "round_rps": self.round_rps,
            "p50_ms": float(np.percentile(lat, 50)) * 1000,
            "p99_ms": float(np.percentile(lat, 99)) * 1000,
            "cpu_ms_per_req": float(np.median(self.cpu_ms_per_req))
            if self.cpu_ms_per_req
            else None,
            "idle_rss_mb": self.idle_rss / 2**20,
            "peak_rss_mb": max(self.peak_rss) / 2**20 if self.peak_rss else None,
            "refused": self.refused,
        }


def measure(
    server: Server, requests: list[bytes], conc: int, args: argparse.Namespace, cell: Cell
) -> None:
    with procs.PeakRss(server.proc.pid) as rss:
        load = serving.drive(
            server, serving.cycle(requests), conc, warm_s=args.warm, seconds=args.seconds
        )
    cell.latencies_s += load.latencies_s
    cell.round_rps.append(load.requests / args.seconds)
    cell.refused += load.refused
    # CPU over warm-up and measured window, per request at the measured rate
    if load.requests:
        per_s = load.server_cpu_s / load.wall_s
        cell.cpu_ms_per_req.append(per_s / (load.requests / args.seconds) * 1000)
    cell.peak_rss.append(rss.peak)


def bare_loop(load: Workload, threads: int, seconds: float) -> dict[str, Any]:
    """The same decode + preprocess + model work, no HTTP, `threads` threads back to back on
    one onnxruntime session (one intra-op thread per call, as the servers)."""
    import io

    import onnxruntime as ort
    from pydantic_core import from_json

    from edge_agent.core.preprocess import decode_image, prepare_image

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(load.model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def work(body: bytes) -> int:
        if load.jpeg:
            x, _ = prepare_image(decode_image(body, PREPROCESSING), PREPROCESSING)
        elif load.npy:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        else:
            x = np.asarray(from_json(body)["inputs"], dtype=np.float32)  # the fastest here
        return int(session.run(None, {name: x})[0].argmax())

    work(load.bodies[0])
    latencies: list[float] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + seconds

    def runner(k: int) -> None:
        mine, i = [], k
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            work(load.bodies[i % len(load.bodies)])
            mine.append(time.perf_counter() - t0)
            i += threads
        with lock:
            latencies.extend(mine)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    pool = [threading.Thread(target=runner, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - wall0
    return {
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "cpu_ms_per_req": (time.process_time() - cpu0) / len(latencies) * 1000,
    }


def model_cost(load: Workload, batches: tuple[int, ...]) -> dict[str, float]:
    """The model alone (onnxruntime, one thread): ms per row at each batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(load.model), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    out = {}
    for batch in batches:
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        session.run(None, {inp.name: x})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            session.run(None, {inp.name: x})
            n += 1
        out[f"ms_per_row_at_{batch}"] = (time.perf_counter() - t0) / n / batch * 1000
    return out


def run_workload(
    load: Workload, args: argparse.Namespace, hubs: dict[str, Path], failed: dict[str, str]
) -> dict[str, Any]:
    cells: dict[tuple[str, int], Cell] = {}
    paths = {
        "hub-off": f"/api/v1/endpoints/peers-{load.key}/predict",
        "hub-on": f"/api/v1/endpoints/peers-{load.key}/predict",
        "hub-auto": f"/api/v1/endpoints/peers-{load.key}/predict",
        "litserve": "/predict",
        "bentoml": "/predict_image" if load.jpeg else "/predict",
    }
    health = {key: "/api/v1/health" for key in HUBS}
    health |= {"litserve": "/health", "bentoml": "/readyz"}
    peer_args = ["--mode", load.key, "--model", str(load.model), "--labels", str(load.labels)]
    with ExitStack() as stack:
        running: dict[str, Server] = {}
        for key in args.servers:
            if key in failed or (key in PEERS and load.key in HUB_ONLY):
                continue
            if key.startswith("hub"):
                cli = ["hub", "--hub-data", str(hubs[key])]
            else:
                cli = [key, *peer_args]
            try:
                running[key] = stack.enter_context(start(key, cli, paths[key], health[key]))
            except RuntimeError as exc:
                failed[key] = f"{load.key}: {exc}"
                print(f"{key} did not start: {exc}", file=sys.stderr)
        batching: dict[str, bool | str] = {"hub-off": False, "hub-on": True, "hub-auto": "auto"}
        for key in HUBS:
            if key in running:
                serving.post_endpoint(running[key].port, hub_spec(load, batching[key]))
        requests = {k: prepared(k, s, load) for k, s in running.items()}
        check_answers(running, load)
        idle = {k: procs.rss_bytes(s.proc.pid) for k, s in running.items()}
        bare: list[dict[str, Any]] = []
        for conc in args.concurrency:
            for r in range(args.rounds):
                keys = list(running)
                order = keys[r % len(keys) :] + keys[: r % len(keys)]
                for key in order:
                    cell = cells.setdefault((key, conc), Cell(idle_rss=idle[key]))
                    measure(running[key], requests[key], conc, args, cell)
                print(
                    f"{load.key}, concurrency {conc}, round {r + 1}: load {serving.loadavg()}",
                    file=sys.stderr,
                )
        for key in HUBS:
            if key in running:
                with contextlib.suppress(Exception):
                    import httpx

                    httpx.delete(
                        f"http://127.0.0.1:{running[key].port}/api/v1/endpoints/peers-{load.key}",
                        headers=serving.AUTH,
                        timeout=30,
                    )
    for _ in range(args.rounds):  # the servers are gone: the machine is the loop's alone
        bare.append(bare_loop(load, os.cpu_count() or 1, args.seconds))
    return {
        "model_alone": model_cost(load, (1, 8) if load.key != "cnn" else (1, 64)),
        "cells": {f"{k}@{c}": cell.summary() for (k, c), cell in cells.items()},
        "bare_loop": {
            "threads": os.cpu_count(),
            "rps": float(np.median([b["rps"] for b in bare])),
            "round_rps": [b["rps"] for b in bare],
            "p50_ms": float(np.median([b["p50_ms"] for b in bare])),
            "p99_ms": float(np.median([b["p99_ms"] for b in bare])),
            "cpu_ms_per_req": float(np.median([b["cpu_ms_per_req"] for b in bare])),
        },
    }


# -- reporting --------------------------------------------------------------------------------
def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict[str, Any], levels: list[int]) -> str:
    lines = [
        "| model, body | c | server | req/s | p50 | p99 | p99/p50 | server CPU / req "
        "| RSS idle → peak | 503s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wk, res in results.items():
        for conc in levels:
            for key in SERVERS:
                c = res["cells"].get(f"{key}@{conc}")
                if c is None:
                    continue
                lines.append(
                    f"| {WORKLOADS[wk]} | {conc} | {SERVERS[key]} | {c['rps']:.0f} "
                    f"| {c['p50_ms']:.1f} ms | {c['p99_ms']:.1f} ms "
                    f"| {c['p99_ms'] / c['p50_ms']:.1f} | {fmt(c['cpu_ms_per_req'], '.2f')} ms "
                    f"| {c['idle_rss_mb']:.0f} → {fmt(c['peak_rss_mb'])} MB "
                    f"| {c.get('refused', 0)} |"
                )
        b = res["bare_loop"]
        lines.append(
            f"| {WORKLOADS[wk]} | - | bare loop, {b['threads']} threads, no HTTP "
            f"| {b['rps']:.0f} | {b['p50_ms']:.1f} ms | {b['p99_ms']:.1f} ms "
            f"| {b['p99_ms'] / b['p50_ms']:.1f} | {b['cpu_ms_per_req']:.2f} ms | - | - |"
        )
    return "\n".join(lines)


BATCHED = {"hub-on": "on", "hub-auto": "auto"}  # the hubs held to the targets, by prefix


def ratios(results: dict[str, Any], levels: list[int]) -> dict[str, dict[str, Any]]:
    """Per workload and concurrency, for the hub with batching on and with the default (auto):
    against the best peer (throughput, and p99 against that peer's), against batching off and
    the bare loop, and its RSS growth over idle; for .npy bodies, against the same hub with
    JSON floats."""
    out: dict[str, dict[str, Any]] = {}
    for wk, res in results.items():
        cells, bare = res["cells"], res["bare_loop"]["rps"]
        for conc in levels:
            off = cells.get(f"hub-off@{conc}")
            peers = {p: cells[f"{p}@{conc}"] for p in PEERS if f"{p}@{conc}" in cells}
            best = max(peers, key=lambda p: peers[p]["rps"]) if peers else None
            row: dict[str, Any] = {}
            if best is not None:
                row["best_peer"] = best
            for key, tag in BATCHED.items():
                hub = cells.get(f"{key}@{conc}")
                if hub is None:
                    continue
                if best is not None:
                    row[f"{tag}_vs_best_peer"] = hub["rps"] / peers[best]["rps"]
                    row[f"{tag}_p99_vs_peer_p99"] = hub["p99_ms"] / peers[best]["p99_ms"]
                if off is not None:
                    row[f"{tag}_vs_off"] = hub["rps"] / off["rps"]
                row[f"{tag}_vs_bare_loop"] = hub["rps"] / bare
                row[f"{tag}_p99_vs_p50"] = hub["p99_ms"] / hub["p50_ms"]
                if hub["peak_rss_mb"] is not None:
                    row[f"{tag}_rss_growth_mb"] = hub["peak_rss_mb"] - hub["idle_rss_mb"]
            if off is not None:
                row["off_vs_bare_loop"] = off["rps"] / bare
            if wk == "npy" and "raw" in results:
                for key in HUBS:
                    npy, raw = (
                        cells.get(f"{key}@{conc}"),
                        results["raw"]["cells"].get(f"{key}@{conc}"),
                    )
                    if npy is not None and raw is not None:
                        row[f"{key}_npy_vs_json"] = npy["rps"] / raw["rps"]
            out[f"{wk}@{conc}"] = row
    return out


def ratio_table(rat: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model, body | c | hub | / best peer (target ≥ 1.3× at c ≥ 16) | p99 / that peer's "
        "| / batching off (≥ 0.97×) | / bare loop (≥ 0.85×, JPEG c=64) | p99 / p50 (≤ 3) "
        "| RSS growth (≤ 200 MB at c=64) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rat.items():
        wk, conc = key.split("@")
        peer = r.get("best_peer", "-")
        for tag in BATCHED.values():
            if f"{tag}_vs_bare_loop" not in r:
                continue
            lines.append(
                f"| {WORKLOADS[wk]} | {conc} | {tag} "
                f"| {fmt(r.get(f'{tag}_vs_best_peer'), '.2f')}× ({peer}) "
                f"| {fmt(r.get(f'{tag}_p99_vs_peer_p99'), '.2f')}× "
                f"| {fmt(r.get(f'{tag}_vs_off'), '.2f')}× "
                f"| {fmt(r.get(f'{tag}_vs_bare_loop'), '.2f')}× "
                f"| {fmt(r.get(f'{tag}_p99_vs_p50'), '.1f')} "
                f"| {fmt(r.get(f'{tag}_rss_growth_mb'))} MB |"
            )
    return "\n".join(lines)


def npy_table(rat: dict[str, dict[str, Any]]) -> str:
    """The hub's throughput with .npy bodies over the same hub's with JSON floats."""
    rows = [(k, r) for k, r in rat.items() if k.startswith("npy@")]
    if not rows:
        return ""
    lines = ["| c | " + " | ".join(SERVERS[h] for h in HUBS) + " |", "|---|---|---|---|"]
    for key, r in rows:
        cells = " | ".join(f"{fmt(r.get(f'{h}_npy_vs_json'), '.2f')}×" for h in HUBS)
        lines.append(f"| {key.split('@')[1]} | {cells} |")
    return "\n".join(lines)


def targets(rat: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 14's targets that this benchmark measures, each met or missed, per cell and hub
    (batching on, and the default: auto)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = []
    for key, r in rat.items():
        wk, conc = key.split("@")
        for tag in BATCHED.values():
            where = f"{WORKLOADS[wk]}, c={conc}, batching {tag}"
            if int(conc) >= 16 and f"{tag}_vs_best_peer" in r:
                ratio, p99 = r[f"{tag}_vs_best_peer"], r[f"{tag}_p99_vs_peer_p99"]
                ok = ratio >= 1.3 and p99 <= 1.0
                lines.append(
                    f"{where}: ≥ 1.3× best peer ({r['best_peer']}) with p99 no worse: "
                    f"{ratio:.2f}×, p99 {p99:.2f}× → {verdict(ok)}"
                )
            if f"{tag}_vs_off" in r:
                ok = r[f"{tag}_vs_off"] >= 0.97
                lines.append(f"{where}: ≥ 0.97× off: {r[f'{tag}_vs_off']:.2f}× → {verdict(ok)}")
            if f"{tag}_p99_vs_p50" in r:
                ok = r[f"{tag}_p99_vs_p50"] <= 3.0
                lines.append(
                    f"{where}: p99 ≤ 3× p50: {r[f'{tag}_p99_vs_p50']:.1f}× → {verdict(ok)}"
                )
            if wk == "jpeg" and conc == "64" and f"{tag}_vs_bare_loop" in r:
                ok = r[f"{tag}_vs_bare_loop"] >= 0.85
                lines.append(
                    f"{where}: ≥ 0.85× the bare loop: {r[f'{tag}_vs_bare_loop']:.2f}× "
                    f"→ {verdict(ok)}"
                )
            if conc == "64" and f"{tag}_rss_growth_mb" in r:
                ok = r[f"{tag}_rss_growth_mb"] <= 200
                lines.append(
                    f"{where}: RSS ≤ idle + 200 MB: +{r[f'{tag}_rss_growth_mb']:.0f} MB "
                    f"→ {verdict(ok)}"
                )
    return lines


def versions() -> dict[str, str]:
    out = {}
    for peer in PEERS:
        pip = VENVS / f"{peer}-venv" / "bin" / "pip"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            freeze = subprocess.run([str(pip), "freeze"], capture_output=True, text=True).stdout
            wanted = (peer, "onnxruntime", "numpy", "uvicorn", "starlette", "uvloop", "httptools")
            out[peer] = ", ".join(
                line for line in freeze.splitlines() if line.split("==")[0].lower() in wanted
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--warm", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 s cells")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir to reuse (or train into)")
    parser.add_argument("--json", type=Path, help="[bench/results/peers.json; --quick: none]")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    # terminated (timeout, kill): unwind, so that every server's process tree is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.rounds, args.seconds, args.warm = 1, 1.0, 0.3
    if args.json is None and not args.quick:
        args.json = ROOT / "bench" / "results" / "peers.json"

    started = time.time()
    failed: dict[str, str] = {}
    for peer in PEERS:
        if peer in args.servers:
            try:
                ensure_venv(peer)
            except (subprocess.CalledProcessError, OSError) as exc:
                failed[peer] = f"install failed: {exc}"
                print(f"{peer}: {failed[peer]}", file=sys.stderr)
    tmp = None
    if args.hub_data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-peers-")
        args.hub_data = Path(tmp.name) / "hub"
    info = serving.machine()
    loads, train_s = prepare(args.hub_data)
    # each hub its own data dir (its own endpoints only in memory): copies of the prepared one
    hubs = {}
    for key in HUBS:
        hubs[key] = args.hub_data.parent / f"{args.hub_data.name}-{key}"
        if not hubs[key].exists():
            shutil.copytree(args.hub_data, hubs[key])
    results: dict[str, Any] = {}
    for wk in args.workloads:
        try:
            results[wk] = run_workload(loads[wk], args, hubs, failed)
        except Exception as exc:  # one workload's failure: report it, measure the others
            failed[wk] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"workload {wk} failed: {failed[wk]}", file=sys.stderr)
    info["loadavg_end"] = serving.loadavg()
    rat = ratios(results, args.concurrency)
    print(f"machine: {json.dumps(info)}")
    print(f"peers: {json.dumps(versions())}")
    print(
        f"rounds: {args.rounds}, {args.seconds:g} s measured per cell after {args.warm:g} s "
        f"warm-up; training {train_s:.0f} s; whole run {time.time() - started:.0f} s\n"
    )
    if failed:
        print(f"failed: {json.dumps(failed)}\n")
    for wk, res in results.items():
        cost = ", ".join(f"{k} {v:.3f}" for k, v in res["model_alone"].items())
        print(f"model alone (onnxruntime, 1 thread), {WORKLOADS[wk]}: {cost}")
    print()
    print(table(results, args.concurrency))
    print()
    print(ratio_table(rat))
    if npy_table(rat):
        print("\n.npy bodies against the same hub's JSON floats (throughput):\n")
        print(npy_table(rat))
    print("\nissue 14's targets (this run):")
    for line in targets(rat):
        print(f"- {line}")
    if args.json:
        payload = {
            "machine": info,
            "peers": versions(),
            "args": {k: v for k, v in vars(args).items() if k in ("rounds", "seconds", "warm")},
            "failed": failed,
            "results": results,
            "ratios": rat,
            "targets": targets(rat),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
