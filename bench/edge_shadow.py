"""Benchmark: the agent's throughput and its callers' latency with a shadow on vs off.

The agent's own components in this process, as `edgepilot-agent run` wires them: a ModelStore,
the ModelManager serving the active model, InferenceService with its ShadowRunner, every
inference logged durably in the Outbox (SQLite, synchronous=FULL) through the BatchWriter's group
commit. "off" is the agent with no shadow in its desired state (the runner is there, idle);
"on" has a candidate of the same architecture (other weights) loaded as the shadow, so every
request is also run on it in the shadow's thread, logged (role "shadow") and compared.

Workloads, each measured in interleaved off/on rounds of --seconds:
- "request, 1 caller" / "request, 4 callers": threads calling `infer(x, wait=True)` back to
  back, one sample per call (an HTTP or MQTT request: the answer waits for its log's commit);
  inferences per second and the callers' p50/p99 latency;
- "source": one thread calling `infer(x, wait=False)` back to back (a camera at full speed).

With the shadow on, "shadow ran" is the share of those samples the shadow answered; the rest
were skipped because its queue was full (by design: the shadow never holds up an answer).
Models: MLPs 64 → H → H → 10 built with onnx.helper, a small one (the pipeline dominates) and a
larger one (the model dominates).

    python bench/edge_shadow.py [--rounds 3] [--seconds 2] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _fleet import build_mlp, machine, median, print_machine

from edge_agent.core.wire import ModelRef
from edge_agent.inference import InferenceService
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.outbox import BatchWriter, Outbox
from edge_agent.shadow import ShadowRunner
from edge_agent.telemetry import LatencyTracker

WORKLOADS = ("request, 1 caller", "request, 4 callers", "source")


def _ref(version_id: int, name: str, data: bytes) -> ModelRef:
    return ModelRef(
        version_id=version_id,
        ref=f"bench/{name}:{version_id}",
        format="onnx",
        precision="fp32",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        signature="not-checked-here",
        labels=[str(i) for i in range(10)],
    )


class Pipeline:
    """The agent's serving components in one directory, with or without a shadow."""

    def __init__(self, directory: Path, name: str, active: bytes, shadow: bytes | None) -> None:
        self.outbox = Outbox(directory / "outbox.sqlite3", max_records=10_000_000, max_bytes=2**31)
        assert self.outbox.durable
        self.writer = BatchWriter(self.outbox)
        store = ModelStore(directory / "store")
        self.manager = ModelManager(store, threads=1)
        self.manager.activate(store.install(_ref(1, name, active), active))
        if shadow is not None:
            self.manager.set_shadow(store.install(_ref(2, name, shadow), shadow))
        self.runner = ShadowRunner(self.manager, self.writer)
        self.runner.start()
        self.service = InferenceService(
            self.manager, self.writer, LatencyTracker(), shadow=self.runner
        )

    def close(self) -> None:
        self.runner.stop()
        self.service.flush(10)
        self.writer.close()
        self.outbox.close()

    def run(self, workload: str, xs: list[np.ndarray], seconds: float) -> Round:
        self.runner.drain(30)
        self.runner.window(reset=True)
        callers = 4 if workload == "request, 4 callers" else 1
        wait = workload != "source"
        latencies: list[list[float]] = [[] for _ in range(callers)]
        stop = threading.Event()

        def call(k: int) -> None:
            mine = latencies[k]
            i = k
            while not stop.is_set():
                x = xs[i % len(xs)]
                start = time.perf_counter()
                self.service.infer(x, source="bench", wait=wait)
                mine.append(time.perf_counter() - start)
                i += callers

        threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - begin
        self.service.flush(30)
        self.runner.drain(30)
        stats = self.runner.window(reset=True)
        done = sum(len(lat) for lat in latencies)
        flat = np.asarray([v for lat in latencies for v in lat]) * 1e3
        ran = None
        if stats is not None:
            offered = stats.compared + stats.dropped + stats.errors
            ran = stats.compared / offered if offered else None
        return Round(
            done / elapsed,
            float(np.percentile(flat, 50)),
            float(np.percentile(flat, 99)),
            ran,
        )


@dataclass(frozen=True)
class Round:
    per_s: float
    p50_ms: float
    p99_ms: float
    shadow_ran: float | None


@dataclass
class Cell:
    rounds: list[Round] = field(default_factory=list)

    def per_s(self) -> float:
        return median([r.per_s for r in self.rounds])

    def p50(self) -> float:
        return median([r.p50_ms for r in self.rounds])

    def p99(self) -> float:
        return median([r.p99_ms for r in self.rounds])

    def ran(self) -> str:
        values = [r.shadow_ran for r in self.rounds if r.shadow_ran is not None]
        return "-" if not values else f"{100 * median(values):.0f}%"


def model_ms(data: bytes, x: np.ndarray) -> float:
    from edge_agent.core.runtimes import load_runtime

    runtime = load_runtime(data, "onnx", threads=1)
    for _ in range(20):
        runtime.predict(x)
    times = []
    for _ in range(300):
        start = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - start)
    return median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s, one model")
    args = parser.parse_args()
    rounds, seconds = (1, 0.5) if args.quick else (args.rounds, args.seconds)
    info = machine()
    print_machine(info)
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 64), dtype=np.float32) for _ in range(512)]
    models = [("mlp-128", 128), ("mlp-1024", 1024)][: 1 if args.quick else 2]
    root = Path(tempfile.mkdtemp(prefix="edge-shadow-"))
    results: dict[tuple[str, str, str], Cell] = {}
    notes: dict[str, float] = {}
    try:
        for name, hidden in models:
            active, candidate = build_mlp(hidden, seed=0), build_mlp(hidden, seed=1)
            notes[name] = model_ms(active, xs[0])
            pipes = {
                "off": Pipeline(root / name / "off", name, active, None),
                "on": Pipeline(root / name / "on", name, active, candidate),
            }
            try:
                for r in range(rounds):
                    for workload in WORKLOADS:
                        order = ("off", "on") if r % 2 == 0 else ("on", "off")
                        for mode in order:
                            cell = results.setdefault((name, workload, mode), Cell())
                            cell.rounds.append(pipes[mode].run(workload, xs, seconds))
            finally:
                for pipe in pipes.values():
                    pipe.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{rounds} interleaved round(s) of {seconds:g} s per cell; medians over rounds; "
        "one sample per call\n"
    )
    print(
        "| model (batch-1 ms) | workload | shadow | inferences/s | on/off | "
        "caller p50 | caller p99 | shadow ran |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, _ in models:
        for workload in WORKLOADS:
            off = results[(name, workload, "off")]
            for mode in ("off", "on"):
                cell = results[(name, workload, mode)]
                ratio = "" if mode == "off" else f"{cell.per_s() / off.per_s():.2f}×"
                print(
                    f"| {name} ({notes[name]:.3f} ms) | {workload} | {mode} | "
                    f"{cell.per_s():,.0f} | {ratio} | {cell.p50():.3f} ms | {cell.p99():.3f} ms "
                    f"| {cell.ran()} |"
                )


if __name__ == "__main__":
    main()
