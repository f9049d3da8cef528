"""Benchmark: what group commit saves the hub's ingest, in process, on a real SQLite file.

The same stream of log batches (`--batches` of `--records` records each, round-robin over
`--devices` devices, every device's sequence contiguous, as agents send them) is stored through
`cloud_hub.fleet.ingest.Ingest` twice, each time into a fresh database (WAL, synchronous=NORMAL,
the hub's own `Database`): one transaction per batch (`store_logs`, what the hub did on paho's
thread) and groups of `--group` batches per transaction (`store_many`, what the ingest worker
does). Parsing is done beforehand and not timed: only storage is. Every mark is checked against
the expected contiguous mark, so both ways must store the same. Prints µs per batch each way
and CPU µs per batch of this process (medians of `--rounds`, interleaved) and the ratios.

    .venv/bin/python bench/ingest_commit.py [--batches 3000] [--devices 300] [--group 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cloud_hub.core.db import Database
from cloud_hub.fleet.ingest import Ingest, Item
from edge_agent.core.wire import LogBatch, LogRecord

EPOCH = "0123456789abcdef"


def _stream(batches: int, devices: int, records: int) -> tuple[list[Item], list[int]]:
    items: list[Item] = []
    expected: list[int] = []
    next_seq = [1] * devices
    now = time.time()
    for i in range(batches):
        d = i % devices
        first = next_seq[d]
        seqs = range(first, first + records)
        next_seq[d] += records
        batch = LogBatch(
            device_id=f"dev-{d:05d}",
            epoch=EPOCH,
            floor=first,
            records=[
                LogRecord(
                    seq=s,
                    request_id=f"r-{d}-{s}",
                    model_version=1,
                    input_digest="a" * 16,
                    output=[0.1, 0.7, 0.2],
                    latency_ms=1.5,
                    ts=now,
                )
                for s in seqs
            ],
        )
        items.append((batch.device_id, batch))
        expected.append(seqs[-1])
    return items, expected


def _one_each(ingest: Ingest, items: list[Item]) -> list[int]:
    out = []
    for device_id, batch in items:
        assert isinstance(batch, LogBatch)
        out.append(ingest.store_logs(device_id, batch))
    return out


def _grouped(group: int) -> Callable[[Ingest, list[Item]], list[int]]:
    def run(ingest: Ingest, items: list[Item]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(items), group):
            for outcome in ingest.store_many(items[start : start + group]):
                assert isinstance(outcome, int), outcome
                out.append(outcome)
        return out

    return run


def _time(
    way: Callable[[Ingest, list[Item]], list[int]], items: list[Item], expected: list[int]
) -> tuple[float, float]:
    """(wall µs, CPU µs of this process) per batch."""
    with tempfile.TemporaryDirectory(prefix="ep-ingest-") as tmp:
        db = Database(Path(tmp) / "hub.sqlite3")
        try:
            ingest = Ingest(db)
            start, cpu = time.perf_counter(), time.process_time()
            marks = way(ingest, items)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert marks == expected, "the marks differ from the contiguous ones"
            (rows,) = db.conn.execute("SELECT count(*) FROM inference_logs").fetchone()
            assert rows == sum(len(b.records) for _, b in items)
        finally:
            db.close()
    return elapsed / len(items) * 1e6, cpu / len(items) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--records", type=int, default=3)
    ap.add_argument("--group", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    items, expected = _stream(args.batches, args.devices, args.records)
    ways: dict[str, Callable[[Ingest, list[Item]], list[int]]] = {
        "one transaction per batch": _one_each,
        f"groups of {args.group} (store_many)": _grouped(args.group),
        "groups of 50 (store_many)": _grouped(50),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits both ways
        for name, way in ways.items():
            results[name].append(_time(way, items, expected))
    base = statistics.median(w for w, _ in results["one transaction per batch"])
    base_cpu = statistics.median(c for _, c in results["one transaction per batch"])
    print(
        f"{args.batches} log batches of {args.records} records from {args.devices} devices, "
        f"median of {args.rounds} rounds"
    )
    print("| way | wall µs/batch: median (min-max) | speed-up | CPU µs/batch | CPU ratio |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        wall = [w for w, _ in runs]
        med, cpu = statistics.median(wall), statistics.median(c for _, c in runs)
        print(
            f"| {name} | {med:.0f} ({min(wall):.0f}-{max(wall):.0f}) | {base / med:.1f}x "
            f"| {cpu:.0f} | {base_cpu / cpu:.1f}x |"
        )


if __name__ == "__main__":
    main()
