"""Benchmark: an agent's 10,000 buffered logs drained to the hub once it comes back.

A Mosquitto broker and the hub (registry + FleetService in this process) on loopback; one device
registered, its `edgepilot-agent run` process started, and the digits CNN (ONNX fp32, trained by
the hub's pipeline or taken from --hub-data) delivered to it over MQTT. Then the hub's MQTT
service stops (its broker session persists, as when a hub restarts) and the agent infers --logs
times over HTTP (`{"inputs": [...]}` batches of --batch samples; one log per sample) while the
hub is away: the logs wait in the agent's outbox. The clock starts when the FleetService starts
again and stops when the hub's `inference_logs` table holds all of them for that device.

    python bench/backlog_drain.py [--logs 10000] [--runs 3] [--hub-data DIR] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _fleet import (
    Agent,
    Fleet,
    digits_version,
    machine,
    median,
    print_machine,
    train_digits_cnn,
    wait_until,
)

TARGET_S = 3.0


def inputs(n: int) -> list[Any]:
    from cloud_hub.registry.datasets import load_digits

    X = np.asarray(load_digits().X, dtype=np.float32) / 255.0
    return [X[i % len(X)].tolist() for i in range(n)]


def logs_at_hub(fleet: Fleet, device_id: str) -> int:
    rows = fleet.query("SELECT COUNT(*) FROM inference_logs WHERE device_id = ?", [device_id])
    return int(rows[0][0])


def run_once(args: argparse.Namespace, fleet: Fleet, agent: Agent, run: int) -> dict[str, Any]:
    before = logs_at_hub(fleet, agent.device_id)
    fleet.stop_service()  # the hub goes away; its persistent session stays at the broker
    samples = inputs(args.batch)
    made = 0
    filled = time.monotonic()
    while made < args.logs:
        n = min(args.batch, args.logs - made)
        code, doc = agent.predict(samples[:n])
        if code != 200:
            raise RuntimeError(f"predict answered {code}: {doc}")
        made += n
    fill_s = time.monotonic() - filled
    status = agent.get("/v1/status")[1]
    pending = status["outbox"]["pending"]
    time.sleep(args.settle)
    load = machine()["loadavg"]
    expected = before + args.logs

    started = time.perf_counter()
    service = fleet.start_service()
    wait_until(lambda: logs_at_hub(fleet, agent.device_id) >= expected, 120, "all logs", 0.01)
    drain_s = time.perf_counter() - started
    stats = service.stats()
    wait_until(lambda: agent.get("/v1/status")[1]["outbox"]["pending"] == 0, 30, "acks", 0.05)
    return {
        "run": run,
        "drain_s": drain_s,
        "fill_s": fill_s,
        "pending": pending,
        "stored": logs_at_hub(fleet, agent.device_id) - before,
        "messages": stats.get("messages", 0),
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--logs", type=int, default=10_000, help="logs buffered while offline")
    parser.add_argument("--batch", type=int, default=100, help="samples per HTTP request")
    parser.add_argument("--runs", type=int, default=3, help="offline/drain cycles")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before the hub")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir holding the digits CNN")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 logs, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.logs, args.runs, args.settle = 2_000, 1, 0.5

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    try:
        hub_dir = workdir / "hub"
        if args.hub_data is not None:
            shutil.copytree(args.hub_data, hub_dir)
            version = digits_version(hub_dir)
        else:
            version = train_digits_cnn(hub_dir)
        results = []
        with Fleet(workdir, hub_dir) as fleet:
            fleet.start_service()
            agent = fleet.register("backlog-01", ["onnxruntime"])
            agent.spawn()
            agent.wait_http()
            fleet.wait_active(fleet.deploy(version, artifact="onnx/fp32", device=agent.device_id))
            for run in range(args.runs):
                r = run_once(args, fleet, agent, run + 1)
                results.append(r)
                print(
                    f"run {run + 1}: {r['pending']:,} logs pending after {r['fill_s']:.1f} s "
                    f"offline; all {r['stored']:,} at the hub {r['drain_s']:.2f} s after it "
                    f"started (load average before: {r['load']})"
                )

        print()
        print_machine(info)
        print()
        print("| run | logs buffered | outbox pending | drained in | rate | target |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['run']} | {args.logs:,} | {r['pending']:,} | {r['drain_s']:.2f} s "
                f"| {r['stored'] / r['drain_s']:,.0f} logs/s "
                f"| ≤ {TARGET_S:.0f} s ({'met' if r['drain_s'] <= TARGET_S else 'missed'}) |"
            )
        mid = median([r["drain_s"] for r in results])
        print(f"\nmedian of {len(results)} runs: {mid:.2f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
