"""Benchmark: one alert-monitor round over per-device windows, full recomputation vs incremental.

A real SQLite hub database (WAL, as the hub opens it) holding what a fleet's forwarders would
have stored: DEVICES devices × WINDOW s of inference logs at RATE records/s each (every record
with a head result, a latency and its 64-value feature summary, as agents send them), their
outbox marks in `device_epochs`, and a version with a 64-feature training baseline. Rows are
written directly in big transactions (the ingest path is not what is measured).

Measured, for the default `device-input-drift` rule (psi_max, scope device, 300 s):
- "full": what the monitor did before: for every device with records in the window, the window
  recomputed from its records (`WindowReader.window`: a query, every answer parsed, every feature
  summary decoded and binned);
- "incremental, first pass": `DeviceView` building its sums (one read of the window);
- "incremental, next pass": the monitor's next round INTERVAL s later, after the fleet stored
  INTERVAL s more records: reading what arrived and what left, then every device's window from
  the sums. Both give the same windows
  (tests/cloud_hub/monitoring/test_monitoring_incremental.py; this script checks a sample of
  devices too).

    python bench/monitor_cost.py [--devices 1000] [--window 300] [--rate 3] [--interval 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _fleet import build_mlp, machine, print_machine

from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.monitoring import WindowReader
from cloud_hub.monitoring.baseline import BaselineStore, compute_baseline
from cloud_hub.monitoring.incremental import DeviceView
from cloud_hub.registry.registry import NewArtifact
from edge_agent.core.features import encode

LABELS = [str(i) for i in range(10)]


def fill(hub: Hub, version: int, devices: int, t0: float, t1: float, rate: float, seq0: int) -> int:
    """Logs of every device with ts in [t0, t1) (seq from seq0), marks moved on; returns rows."""
    rng = np.random.default_rng(int(t0))
    n = int((t1 - t0) * rate)
    feats = [encode(row) for row in np.round(rng.random((256, 64)), 4).astype(np.float32)]
    rows = []
    for d in range(devices):
        device = f"dev-{d:05d}"
        for i in range(n):
            scores = rng.random(10).round(4).tolist()
            top = int(np.argmax(scores))
            output = json.dumps({"task": "classification", "label": LABELS[top], "scores": scores})
            rows.append(
                (
                    device,
                    "e1",
                    seq0 + i,
                    f"{device}-{seq0 + i}",
                    version,
                    "ab" * 8,
                    output,
                    float(rng.integers(2, 30)),
                    t0 + (i + rng.random()) / rate,
                    "camera",
                    feats[(d * 7 + i) % len(feats)],
                )
            )
    with hub.db.transaction():
        hub.db.conn.executemany(
            "INSERT INTO inference_logs (device_id, epoch, seq, request_id, model_version, "
            "input_digest, output, latency_ms, ts, source, features) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        hub.db.conn.executemany(
            "INSERT INTO device_epochs (device_id, epoch, acked_upto) VALUES (?, 'e1', ?) "
            "ON CONFLICT (device_id, epoch) DO UPDATE SET acked_upto = excluded.acked_upto",
            [(f"dev-{d:05d}", seq0 + n - 1) for d in range(devices)],
        )
    return len(rows)


def full_round(hub: Hub, window: float, now: float) -> tuple[float, float, int]:
    start, cpu = time.perf_counter(), time.process_time()
    reader = WindowReader(hub.db, max_records=hub.settings.monitor_max_records)
    keys = reader.keys("device", now - window, now)
    for key in keys:
        reader.window("device", key, window_s=window, now=now)
    return time.perf_counter() - start, time.process_time() - cpu, len(keys)


def incremental_round(hub: Hub, view: DeviceView, now: float) -> tuple[float, float, int, int]:
    start, cpu = time.perf_counter(), time.process_time()
    before = view.rows_read + view.rows_left
    view.advance(now)
    reader = WindowReader(hub.db, max_records=hub.settings.monitor_max_records)
    keys = view.keys()
    for key in keys:
        view.window(reader, key)
    return (
        time.perf_counter() - start,
        time.process_time() - cpu,
        len(keys),
        view.rows_read + view.rows_left - before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--window", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=3.0, help="records/s per device")
    parser.add_argument("--interval", type=float, default=15.0, help="the monitor's interval")
    args = parser.parse_args()
    print_machine(machine())
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub.open(HubSettings(data_dir=Path(tmp) / "hub", run_scheduler=False, monitor=False))
        try:
            version = hub.registry.register_version(
                "bench",
                "m",
                artifacts=[NewArtifact("onnx", "fp32", build_mlp(16))],
                source="uploaded",
                labels=LABELS,
            ).id
            rng = np.random.default_rng(0)
            BaselineStore(hub.db).save(
                compute_baseline(
                    version,
                    rng.random((2000, 64)).astype(np.float32),
                    source="training",
                    labels=LABELS,
                    y=rng.integers(0, 10, 2000),
                )
            )
            now = time.time()
            made = time.perf_counter()
            rows = fill(hub, version, args.devices, now - args.window, now, args.rate, 1)
            print(f"stored {rows:,} records in {time.perf_counter() - made:.1f} s", flush=True)
            db_mb = sum(p.stat().st_size for p in (Path(tmp) / "hub").glob("registry.db*")) / 1e6
            full_s, full_cpu, keys = full_round(hub, args.window, now)
            view = DeviceView(hub.db, args.window, max_records=hub.settings.monitor_max_records)
            first_s, first_cpu, _, first_read = incremental_round(hub, view, now)
            seq0 = int(args.window * args.rate) + 1
            later = now + args.interval
            added = fill(hub, version, args.devices, now, later, args.rate, seq0)
            next_s, next_cpu, next_keys, next_read = incremental_round(hub, view, later)
            full_next_s, full_next_cpu, _ = full_round(hub, args.window, later)
            reader = WindowReader(hub.db, max_records=hub.settings.monitor_max_records)
            for key in view.keys()[:: max(1, len(view.keys()) // 20)]:
                want = reader.window("device", key, window_s=args.window, now=later)
                assert view.window(reader, key).model_dump() == want.model_dump(), key
        finally:
            hub.close()
    per_round = args.devices * args.window * args.rate
    print()
    print(
        f"{args.devices:,} devices × {args.window:g} s × {args.rate:g} records/s "
        f"({per_round:,.0f} records in each window round; database {db_mb:.0f} MB); "
        f"{added:,} records arrive between rounds ({args.interval:g} s)"
    )
    print()
    print(
        "| round | devices judged | records read (arrived + left) | wall time | CPU time "
        "| CPU per device | CPU share of a core at this interval |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, secs, cpu, n, read in (
        ("full recomputation", full_s, full_cpu, keys, rows),
        ("full recomputation, next round", full_next_s, full_next_cpu, keys, rows),
        ("incremental, first pass (builds its sums)", first_s, first_cpu, keys, first_read),
        ("incremental, next round", next_s, next_cpu, next_keys, next_read),
    ):
        print(
            f"| {name} | {n:,} | {read:,} | {secs:.2f} s | {cpu:.2f} s "
            f"| {1000 * cpu / max(n, 1):.2f} ms | {100 * cpu / args.interval:.0f} % |"
        )
    print()
    print(f"a steady round: {full_next_cpu / next_cpu:.0f}× less CPU than the full one")


if __name__ == "__main__":
    main()
