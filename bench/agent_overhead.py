"""Benchmark: inferences per second through the agent's pipeline vs a bare runtime loop.

The pipeline is the agent's own, in this process: a FrameSource reading a folder of digit PNGs
(written here), `prepare_frame` with the version's preprocessing spec, the ModelManager serving
the installed model from a ModelStore, InferenceService, and every inference logged durably in
the Outbox (SQLite, synchronous=FULL) through the BatchWriter's group commit. The source runs
unthrottled (`fps` far above what it can do). The bare loop calls `Runtime.predict` (batch 1)
on the same images, already preprocessed. Both run in interleaved rounds of --seconds each.

Two pipeline variants are measured side by side:
- "source path": what the agent's frame source does (`infer(..., wait=False)`: the log is
  committed by the next group commit, at most `max_unflushed` logs behind);
- "commit per frame": every frame waits for its log's commit before the next one (what an HTTP
  request pays; one source thread then pays one fsync per frame).

Models: an MLP built here with onnx.helper on the flattened 8×8 image, its hidden size tuned so
that one batch-1 inference takes about --target-ms on this machine, and the digits CNN (ONNX
fp32) trained by the hub's pipeline (or taken from --hub-data).

    python bench/agent_overhead.py [--rounds 5] [--seconds 2] [--hub-data DIR] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _fleet import (
    build_mlp,
    digit_pngs,
    digits_version,
    machine,
    median,
    print_machine,
    train_digits_cnn,
)

from edge_agent.core.preprocess import prepare_frame
from edge_agent.core.runtimes import Runtime, load_runtime
from edge_agent.core.wire import ModelRef
from edge_agent.inference import InferenceService
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.outbox import BatchWriter, Outbox
from edge_agent.source import FrameSource
from edge_agent.telemetry import LatencyTracker

TARGET_RATIO = 0.8
MLP_SPEC: dict[str, Any] = {
    "input_kind": "image",
    "color": "gray",
    "size": [8, 8],
    "scale": 1 / 255,
    "flatten": True,
    "layout": "NHWC",
    "mean": None,
    "std": None,
}


CONV_SPEC: dict[str, Any] = {**MLP_SPEC, "flatten": False}


def build_convnet(channels: int, layers: int = 2, seed: int = 0) -> bytes:
    """A compute-bound ~1 ms model whose weights stay in cache: 8×8×1 NHWC -> Conv 3×3 1→C ->
    (Conv 3×3 C→C) × layers -> global average pool -> Dense 10 -> softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2])]
    inits = []
    current, c_in = "nchw", 1
    for i in range(layers + 1):
        w = (rng.standard_normal((channels, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"cw{i}"),
            numpy_helper.from_array(np.zeros(channels, np.float32), f"cb{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [current, f"cw{i}", f"cb{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"cr{i}"]),
        ]
        current, c_in = f"cr{i}", channels
    w = (rng.standard_normal((channels, 10)) / np.sqrt(channels)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "dw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "db"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "dw", "db"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def batch1_ms(runtime: Runtime, x: np.ndarray, calls: int = 200) -> float:
    for _ in range(20):
        runtime.predict(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - start)
    return median(times) * 1e3


def tune(
    build: Callable[[int], bytes], lo: int, hi: int, target_ms: float, x: np.ndarray
) -> tuple[int, bytes, float]:
    """The width whose batch-1 latency is closest to target_ms (bisection)."""
    best: tuple[int, bytes, float] | None = None
    while hi - lo > max(2, lo // 32):
        mid = (lo + hi) // 2
        data = build(mid)
        ms = batch1_ms(load_runtime(data, "onnx", threads=1), x)
        if best is None or abs(ms - target_ms) < abs(best[2] - target_ms):
            best = (mid, data, ms)
        if ms < target_ms:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best


@dataclass
class Model:
    name: str
    data: bytes
    spec: dict[str, Any]
    note: str
    bare: list[float] = field(default_factory=list)
    source: list[float] = field(default_factory=list)
    per_frame: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)  # p50 of the model's own latency
    source_ms: list[float] = field(default_factory=list)
    logs_expected: int = 0
    logs_stored: int = 0


class Pipeline:
    """The agent's components for one model, in one directory."""

    def __init__(self, directory: Path, model: Model) -> None:
        self.outbox = Outbox(directory / "outbox.sqlite3", max_records=10_000_000, max_bytes=2**30)
        assert self.outbox.durable
        self.writer = BatchWriter(self.outbox)
        store = ModelStore(directory / "store")
        ref = ModelRef(
            version_id=1,
            ref=f"bench/{model.name}:1",
            format="onnx",
            precision="fp32",
            sha256=hashlib.sha256(model.data).hexdigest(),
            size=len(model.data),
            signature="not-checked-here",
            preprocessing=model.spec,
            labels=[str(i) for i in range(10)],
        )
        self.manager = ModelManager(store, threads=1)
        self.manager.activate(store.install(ref, model.data))
        self.tracker = LatencyTracker()
        self.service = InferenceService(
            self.manager, self.writer, self.tracker, labels=lambda: ref.labels
        )
        self.spec = model.spec

    def run(self, folder: Path, seconds: float, *, wait: bool) -> tuple[float, int, float]:
        """Frames per second from an unthrottled FrameSource, the frames it handled, and the
        model's own p50 latency in ms inside the pipeline (what ModelManager.predict measured)."""

        def infer(x: np.ndarray, name: str) -> object:  # as Agent._infer_frame does
            return self.service.infer(x, source=name, wait=wait)

        source = FrameSource(str(folder), 1e9, infer, lambda: self.spec, name="bench")
        source.start()
        time.sleep(min(0.3, seconds / 4))  # warm: the folder listed, cv2 imported
        self.tracker.window(reset=True)
        start_frames, start = source.frames, time.perf_counter()
        time.sleep(seconds)
        frames, elapsed = source.frames - start_frames, time.perf_counter() - start
        source.stop()
        self.service.flush()
        p50 = next(iter(self.tracker.window(reset=True).latency_ms.values()))["p50"]
        return frames / elapsed, source.frames, p50

    def close(self) -> int:
        self.service.flush()
        self.writer.close()
        stored = self.outbox.stats().pending
        self.outbox.close()
        return stored


def bare_loop(runtime: Runtime, inputs: list[np.ndarray], seconds: float) -> tuple[float, float]:
    """Calls per second, and the p50 of each call's latency in ms."""
    n, i = 0, 0
    times: list[float] = []
    stop = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        runtime.predict(inputs[i])
        times.append(time.perf_counter() - t)
        n += 1
        i = (i + 1) % len(inputs)
        if n % 16 == 0 and time.perf_counter() >= stop:
            break
    return n / (time.perf_counter() - start), median(times) * 1e3


def measure(
    model: Model, folder: Path, pngs: list[np.ndarray], workdir: Path, args: argparse.Namespace
) -> None:
    inputs = [prepare_frame(image, model.spec) for image in pngs]
    runtime = load_runtime(model.data, "onnx", threads=1)
    pipeline = Pipeline(workdir / model.name, model)
    runs: list[tuple[str, Callable[[], None]]] = []
    handled = 0

    def do_bare() -> None:
        rate, p50 = bare_loop(runtime, inputs, args.seconds)
        model.bare.append(rate)
        model.bare_ms.append(p50)

    def do_source() -> None:
        nonlocal handled
        rate, frames, p50 = pipeline.run(folder, args.seconds, wait=False)
        model.source.append(rate)
        model.source_ms.append(p50)
        handled += frames

    def do_per_frame() -> None:
        nonlocal handled
        rate, frames, _ = pipeline.run(folder, args.seconds, wait=True)
        model.per_frame.append(rate)
        handled += frames

    runs = [("bare", do_bare), ("source", do_source), ("per_frame", do_per_frame)]
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for _, run in order:
            run()
        print(
            f"{model.name} round {r + 1}: bare {model.bare[-1]:,.0f}/s, source path "
            f"{model.source[-1]:,.0f}/s ({model.source[-1] / model.bare[-1]:.2f}×), commit per "
            f"frame {model.per_frame[-1]:,.0f}/s; model p50 bare {model.bare_ms[-1]:.3f} ms, "
            f"in the pipeline {model.source_ms[-1]:.3f} ms",
            flush=True,
        )
    model.logs_expected = handled
    model.logs_stored = pipeline.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--target-ms", type=float, default=1.0, help="MLP batch-1 latency")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir holding the digits CNN")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 0.5

    import cv2

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        png_bytes, _ = digit_pngs(200)
        folder = workdir / "frames"
        folder.mkdir()
        for i, data in enumerate(png_bytes):
            (folder / f"{i:04d}.png").write_bytes(data)
        images = [
            np.asarray(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in sorted(folder.iterdir())
        ]

        x = prepare_frame(images[0], MLP_SPEC)
        hidden, data, mlp_ms = tune(build_mlp, 64, 8192, args.target_ms, x)
        models = [
            Model(
                "mlp",
                data,
                MLP_SPEC,
                f"MLP 64→{hidden}→{hidden}→10 ({len(data) / 2**20:.1f} MB of weights), "
                f"{mlp_ms:.2f} ms per batch-1 call",
            )
        ]
        x = prepare_frame(images[0], CONV_SPEC)
        channels, data, conv_ms = tune(build_convnet, 16, 512, args.target_ms, x)
        models.append(
            Model(
                "convnet",
                data,
                CONV_SPEC,
                f"ConvNet 3 × Conv3×3 ({channels} ch) ({len(data) / 2**20:.1f} MB), "
                f"{conv_ms:.2f} ms per batch-1 call",
            )
        )

        hub_dir = workdir / "hub"
        if args.hub_data is not None:
            shutil.copytree(args.hub_data, hub_dir)
            version_id = digits_version(hub_dir)
        else:
            version_id = train_digits_cnn(hub_dir)
        from cloud_hub.core.db import Database
        from cloud_hub.registry.artifacts import ArtifactStore
        from cloud_hub.registry.registry import Registry

        db = Database(hub_dir / "registry.db")
        registry = Registry(db, ArtifactStore(hub_dir / "artifacts"))
        version = registry.get_version_by_id(version_id)
        art = next(a for a in version.artifacts if (a.format, a.precision) == ("onnx", "fp32"))
        cnn = registry.store.path_for(art.sha256).read_bytes()
        assert version.preprocessing is not None
        cnn_ms = batch1_ms(
            load_runtime(cnn, "onnx", threads=1), prepare_frame(images[0], version.preprocessing)
        )
        db.close()
        models.append(
            Model(
                "digits CNN",
                cnn,
                dict(version.preprocessing),
                f"digits CNN {version.ref} onnx/fp32, {cnn_ms * 1e3:.0f} µs per batch-1 call",
            )
        )

        for model in models:
            measure(model, folder, images, workdir, args)

        print()
        print_machine(info)
        print(f"load average at the end: {machine()['loadavg']}")
        print()
        print(
            "| model | bare loop | pipeline, source path | ratio | pipeline, commit per frame "
            "| ratio | model p50: bare / in pipeline | logs stored / frames | target |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for model in models:
            bare, src, per = median(model.bare), median(model.source), median(model.per_frame)
            target = (
                f"≥ {TARGET_RATIO}× ({'met' if src / bare >= TARGET_RATIO else 'missed'})"
                if model.name in ("mlp", "convnet")
                else "(reported)"
            )
            print(
                f"| {model.note} | {bare:,.0f}/s | {src:,.0f}/s | {src / bare:.2f}× "
                f"| {per:,.0f}/s | {per / bare:.2f}× | {median(model.bare_ms):.3f} / "
                f"{median(model.source_ms):.3f} ms | {model.logs_stored:,} / "
                f"{model.logs_expected:,} | {target} |"
            )
        print(
            f"\nMedians of {args.rounds} interleaved rounds of {args.seconds:g} s; one inference "
            "thread; 200 PNGs of held-out digits, read from disk by the source in every round."
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
