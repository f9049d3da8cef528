"""Benchmark: one ~5 MB model delivered by the hub over MQTT to 20 agents at once.

A Mosquitto broker and the hub (registry + FleetService, as `edgepilot hub serve --mqtt` runs
them) on loopback; an ONNX MLP of about --size-mb MB built with onnx.helper and registered through
the registry's upload path (`cloud_hub.registry.uploads.register_upload`); --agents devices
registered with
one tag, each a real `edgepilot-agent run` process with the config the hub writes (transfer
settings: the agent's defaults). Every agent is started and seen online at the hub first; then one
all-at-once deployment to the tag is created, and the clock runs from its creation until every
device's row reads `active` (polled in the hub's database every 20 ms).

Bytes sent per device: every MQTT payload the hub's client publishes on `{root}/dev/ID/chunk`
(chunk header and CRC included; MQTT fixed/variable header bytes not included), counted by
wrapping the hub's paho `publish`, over the model's size.

    python bench/ota.py [--agents 20] [--size-mb 5] [--runs 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _fleet import Fleet, build_mlp, machine, median, print_machine, wait_until

from cloud_hub.registry.uploads import register_upload

TARGET_S = 5.0
TARGET_BYTES = 1.05


def model_of_size(size_mb: float) -> bytes:
    """An MLP 64 -> h -> h -> 10 whose ONNX file is about size_mb MB."""
    params = size_mb * 2**20 / 4
    hidden = int((-75 + math.sqrt(75**2 + 4 * params)) / 2)
    return build_mlp(hidden, layers=2)


class ChunkCounter:
    """Counts the bytes of every chunk payload the hub's client publishes, per device."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, client: Any) -> None:
        publish = client.publish

        def counting(topic: str, payload: Any = None, *args: Any, **kwargs: Any) -> Any:
            if topic.endswith("/chunk") and payload is not None:
                device = topic.split("/")[-2]
                with self._lock:
                    self.bytes[device] += len(payload)
                    self.messages[device] += 1
            return publish(topic, payload, *args, **kwargs)

        client.publish = counting


def run_once(args: argparse.Namespace, model: bytes, workdir: Path) -> dict[str, Any]:
    hub_dir = workdir / "hub"
    with Fleet(workdir, hub_dir) as fleet:
        version = register_upload(
            fleet.the_hub.registry,
            project="ota",
            model="big-mlp",
            data=model,
            filename="big-mlp.onnx",
            labels=[str(i) for i in range(10)],
        )
        service = fleet.start_service()
        counter = ChunkCounter()
        counter.wrap(service.client)
        agents = [
            fleet.register(f"ota-{i:02d}", ["onnxruntime"], tags=["ota"])
            for i in range(args.agents)
        ]
        env = {}
        if args.window is not None:
            env["EDGEPILOT_AGENT_TRANSFER_WINDOW"] = str(args.window)
        if args.chunk_kb is not None:
            env["EDGEPILOT_AGENT_TRANSFER_CHUNK_SIZE"] = str(args.chunk_kb * 1024)
        started = time.monotonic()
        for agent in agents:
            agent.spawn(env)
        for agent in agents:
            agent.wait_http(120)
        wait_until(lambda: all(fleet.online(a.device_id) for a in agents), 60, "agents online")
        startup_s = time.monotonic() - started
        time.sleep(args.settle)  # let start-up work (imports, first statuses) finish
        load_before = machine()["loadavg"]

        created = time.perf_counter()
        deployment = fleet.deploy(version.id, artifact="onnx/fp32", tag="ota")
        done_at: dict[str, float] = {}
        seen: dict[str, list[float]] = {}  # state -> when each device was first seen in it
        last: dict[str, str] = {}

        def all_active() -> bool:
            for agent in agents:
                agent.check()
            now = time.perf_counter() - created
            for device, state in fleet.device_states(deployment).items():
                if last.get(device) != state:
                    last[device] = state
                    seen.setdefault(state, []).append(now)
                if state == "active" and device not in done_at:
                    done_at[device] = time.perf_counter() - created
                elif state in ("failed", "rolled_back"):
                    raise RuntimeError(f"{device}: {state}")
            return len(done_at) == len(agents)

        wait_until(all_active, 300, "every device active", poll=0.02)
        total_s = time.perf_counter() - created
        stats = service.stats()
        per_device = [counter.bytes[a.device_id] for a in agents]
        chunks = [counter.messages[a.device_id] for a in agents]
        return {
            "total_s": total_s,
            "first_s": min(done_at.values()),
            "median_s": median(list(done_at.values())),
            "bytes_mean": sum(per_device) / len(per_device),
            "bytes_max": max(per_device),
            "chunks_mean": sum(chunks) / len(chunks),
            "hub_chunks": stats.get("chunks", 0),
            "startup_s": startup_s,
            "load_before": load_before,
            "phases": {state: (min(t), median(t), max(t)) for state, t in seen.items()},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="whole runs (fresh hub and agents)")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before deploying")
    parser.add_argument("--window", type=int, help="agents' transfer window (default: theirs)")
    parser.add_argument("--chunk-kb", type=int, help="agents' chunk size in KiB (default: theirs)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 agents, 1 MB")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.size_mb, args.settle = 4, 1.0, 1.0

    info = machine()
    model = model_of_size(args.size_mb)
    results = []
    for run in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="bench-ota-"))
        try:
            results.append(run_once(args, model, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        r = results[-1]
        print(
            f"run {run + 1}: all active after {r['total_s']:.2f} s (agents started in "
            f"{r['startup_s']:.1f} s; load average before deploying {r['load_before']})"
        )
        for state, (first, mid, end) in r["phases"].items():
            print(
                f"  first seen {state:<12} min {first:.2f} s, median {mid:.2f} s, max {end:.2f} s"
            )

    print()
    print_machine(info)
    print()
    size = len(model)
    print(
        "| agents | model | first active | median active | all active | target | "
        "bytes sent per device (mean / max) | vs model | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r["bytes_max"] / size
        print(
            f"| {args.agents} | {size / 2**20:.2f} MB ONNX | {r['first_s']:.2f} s "
            f"| {r['median_s']:.2f} s | {r['total_s']:.2f} s "
            f"| ≤ {TARGET_S:.0f} s ({'met' if r['total_s'] <= TARGET_S else 'missed'}) "
            f"| {r['bytes_mean'] / 2**20:.3f} / {r['bytes_max'] / 2**20:.3f} MB "
            f"({r['chunks_mean']:.0f} chunks) | {ratio:.4f}× "
            f"| ≤ {TARGET_BYTES}× ({'met' if ratio <= TARGET_BYTES else 'missed'}) |"
        )


if __name__ == "__main__":
    main()
