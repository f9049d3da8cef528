"""Benchmark: what authentication costs a prediction on the hub, in process.

Two endpoints over the same small model, one `public` (no credential checked) and one that
needs a token (a verified token is cached, `token_cache_s`), called in turn straight into the
real ASGI app (no client library, no socket: their own cost would drown the difference).
Prints each one's time per request (median, min and max over interleaved rounds) and the
median of the paired differences.

    .venv/bin/python bench/auth_overhead.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _model(data_dir: Path) -> str:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.registry.registry import NewArtifact
    from converters import sklearn_to_onnx

    x, y = load_iris(return_X_y=True)
    onnx = sklearn_to_onnx(LogisticRegression(max_iter=500).fit(x, y), 4)
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        version = hub.registry.register_version(
            "bench", "iris", artifacts=[NewArtifact("onnx", "fp32", onnx)], source="uploaded"
        )
        return version.ref
    finally:
        hub.close()


async def _call(app: Any, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One request straight into the ASGI app (no client library, no socket); its status."""
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": head,
        "client": ("127.0.0.1", 1),
        "server": ("hub", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def _run(data_dir: Path, ref: str, requests: int, rounds: int) -> dict[str, list[float]]:
    import httpx

    from cloud_hub.api.app import create_app
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    hub = Hub.open(
        HubSettings(data_dir=data_dir, run_scheduler=False, prediction_log=False, monitor=False)
    )
    app = create_app(hub, scheduler=False, fleet=False)
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    body = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    times: dict[str, list[float]] = {"public": [], "token": []}
    raw = json.dumps(body).encode()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
            for name, public in (("public", True), ("token", False)):
                spec = {
                    "name": f"iris-{name}",
                    "models": {"m": ref},
                    "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
                    "batching": {"enabled": False},
                    "public": public,
                }
                made = await c.post("/api/v1/endpoints", json=spec, headers=auth)
                made.raise_for_status()
        for round_no in range(rounds):  # the order alternates: neither always goes first
            order = [("public", {}), ("token", auth)]
            for name, headers in order if round_no % 2 == 0 else order[::-1]:
                path = f"/api/v1/endpoints/iris-{name}/predict"
                for _ in range(50):  # warm
                    assert await _call(app, path, raw, headers) == 200
                started = time.perf_counter()
                for _ in range(requests):
                    assert await _call(app, path, raw, headers) == 200
                times[name].append((time.perf_counter() - started) / requests * 1e6)
    hub.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "hub"
        ref = _model(data_dir)
        times = asyncio.run(_run(data_dir, ref, args.requests, args.rounds))
    print(f"{args.rounds} interleaved rounds of {args.requests} sequential requests each\n")
    print("| endpoint | µs per request (median of rounds) | min | max |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |"
        )
    diff = statistics.median(np.subtract(times["token"], times["public"]).tolist())
    print(f"\ntoken − public, median of paired rounds: {diff:+.1f} µs per request")


if __name__ == "__main__":
    main()
