"""Benchmark: what the agent's frame pipeline costs over the bare model, on a real vision model.

The agent's own components in this process, as `edgepilot-agent run` wires them: a ModelStore,
the ModelManager serving the model, InferenceService (runtime, the model's task head, the log
record with its digests and features) and every frame's log committed durably in the Outbox
(SQLite, synchronous=FULL) through the BatchWriter's group commit. A frame goes the way a frame
source's does: PNG bytes decoded (OpenCV, `decode_image`), prepared with the model's
preprocessing spec (`prepare_image`: resize, colour, scale), then `infer(x, wait=False,
geometry=[g])` like `Agent._infer_frame`. The baseline is a bare `Runtime.run` loop over the same
frames already decoded and prepared (the model alone). glibc's malloc is configured as the
agent configures it at start (`configure_allocator`: heaps capped, mmap threshold fixed;
`--glibc-default` leaves it alone). Two more modes explain the gap: the
service alone on prepared frames (infer, head, log), and the same PNG path split in two stages
(the agent's own FrameSource over a folder of the PNGs: its reader thread reads, decodes and
prepares a frame ahead while its source thread infers and submits the log, built on the log
writer's thread). Each round runs every mode for --seconds, the order
rotating; the table gives the medians and the ratios of the medians (target >= 0.9).

The model is MediaPipe's face_detection_full_range_sparse.tflite on LiteRT (about 5 ms a frame
on this machine; `--model` takes any of tests/third_party.py's MediaPipe files). Frames: 64
distinct PNGs at the model's input size, and a second row at 640x480 (a VGA camera frame: the
decode and resize grow with it, the model's cost does not).

    python bench/edge_pipeline.py [--rounds 5] [--seconds 3] [--model NAME] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _fleet import machine, median, print_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.config import RuntimeSettings  # noqa: E402
from edge_agent.core.preprocess import Geometry, decode_image, prepare_image  # noqa: E402
from edge_agent.core.runtimes import load_runtime  # noqa: E402
from edge_agent.core.wire import ModelRef  # noqa: E402
from edge_agent.inference import InferenceService  # noqa: E402
from edge_agent.memory import configure_allocator  # noqa: E402
from edge_agent.model_manager import ModelManager  # noqa: E402
from edge_agent.model_store import ModelStore  # noqa: E402
from edge_agent.outbox import BatchWriter, Outbox  # noqa: E402
from edge_agent.source import FrameSource  # noqa: E402
from edge_agent.telemetry import LatencyTracker  # noqa: E402
from tests.third_party import mediapipe_model  # noqa: E402

TARGET = 0.9
DEFAULT_MODEL = "face_detection_full_range_sparse.tflite"


def frames_png(height: int, width: int, count: int = 64) -> list[bytes]:
    """`count` distinct camera-like PNGs: smooth gradients plus sensor-like noise (sigma 4), so
    the PNG is neither trivially small nor incompressible."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        base = (xx * (1 + i % 5) + yy * (1 + i % 3)) % 256
        image = np.stack([base, (base + 85 * i) % 256, (255 - base) % 256], axis=-1)
        noisy = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", noisy)
        assert ok
        out.append(png.tobytes())
    return out


def _example_head(model: str) -> dict[str, Any] | None:
    """The model's head from examples/heads/ (the face detector's anchors and NMS), if any."""
    path = ROOT / "examples" / "heads" / f"{Path(model).stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


class Pipeline:
    """The agent's serving components in one directory."""

    def __init__(self, directory: Path, name: str, data: bytes, spec: dict[str, Any]) -> None:
        self.outbox = Outbox(directory / "outbox.sqlite3", max_records=10_000_000, max_bytes=2**31)
        assert self.outbox.durable
        self.writer = BatchWriter(self.outbox)
        store = ModelStore(directory / "store")
        ref = ModelRef(
            version_id=1,
            ref=f"bench/{name}:1",
            format="tflite",
            precision="fp32",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            signature="not-checked-here",
            preprocessing=spec,
            head=_example_head(name),
        )
        self.manager = ModelManager(store, threads=1)
        self.manager.activate(store.install(ref, data))
        self.service = InferenceService(self.manager, self.writer, LatencyTracker())
        self.spec = spec

    def frame(self, png: bytes) -> None:
        image = decode_image(png, self.spec)
        x, geometry = prepare_image(image, self.spec)
        self.service.infer(x, source="bench", wait=False, geometry=[geometry])

    def prepared(self, x: np.ndarray, geometry: list[Geometry]) -> None:
        """A frame already decoded and prepared: the service's share alone."""
        self.service.infer(x, source="bench", wait=False, geometry=geometry)

    def close(self) -> None:
        self.service.flush(30)
        self.writer.close()
        self.outbox.close()


def timed(step: Any, items: list[Any], seconds: float) -> float:
    """Items per second of `step` over `items` (cycled) for about `seconds`."""
    done, begin = 0, time.perf_counter()
    deadline = begin + seconds
    while time.perf_counter() < deadline:
        for item in items[:8]:
            step(item)
        items = items[8:] + items[:8]
        done += 8
    return done / (time.perf_counter() - begin)


def frame_source(pipe: Pipeline, folder: Path, seconds: float) -> float:
    """Frames per second of the agent's own FrameSource over a folder of the PNGs (at an fps
    no frame waits for): a reader thread reads, decodes and prepares a frame ahead while the
    source's thread runs infer (model, head) and submits the log, as `edgepilot-agent run`
    with a `[source]` does."""
    source = FrameSource(
        str(folder),
        1e6,
        lambda x, name, geometry: pipe.service.infer(
            x, source=name, wait=False, geometry=[geometry]
        ),
        lambda: pipe.spec,
        name="bench",
    )
    source.start()
    try:
        while source.frames < 8:  # started and warm
            time.sleep(0.01)
        first, begin = source.frames, time.perf_counter()
        time.sleep(seconds)
        return (source.frames - first) / (time.perf_counter() - begin)
    finally:
        source.stop()


def per_call_ms(step: Any, items: list[Any], repeat: int = 3) -> float:
    begin = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            step(item)
    return (time.perf_counter() - begin) / (repeat * len(items)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it is (the agent caps its heaps and fixes the mmap "
        "threshold at start: `configure_allocator`, done here too unless this is given)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 3, 1.0
    if not args.glibc_default:
        configure_allocator(RuntimeSettings().malloc_arenas)  # as `edgepilot-agent run` does
    info = machine()
    data = mediapipe_model(args.model).read_bytes()
    bare = load_runtime(data, "tflite", threads=1)
    _, height, width, _ = (d or 1 for d in bare.input.shape)
    spec = {
        "input_kind": "image",
        "layout": "NHWC",
        "size": [height, width],
        "color": "rgb",
        "scale": 1 / 127.5,
        "mean": [1.0, 1.0, 1.0],
        "std": [1.0, 1.0, 1.0],
    }
    root = Path(tempfile.mkdtemp(prefix="edge-pipeline-"))
    rows = []
    try:
        for label, (h, w) in (
            (f"{height}x{width} PNG", (height, width)),
            ("640x480 PNG", (480, 640)),
        ):
            pngs = frames_png(h, w)
            images = [decode_image(p, spec) for p in pngs]
            xs = [prepare_image(i, spec)[0] for i in images]
            pipe = Pipeline(root / label.split()[0], args.model, data, spec)
            folder = root / f"{label.split()[0]}-frames"
            folder.mkdir()
            for i, png in enumerate(pngs):
                (folder / f"{i:03d}.png").write_bytes(png)
            for x in xs[:10]:
                bare.run(x)
                pipe.service.infer(x, source="warm-up", wait=False)
            geometry = [prepare_image(decode_image(pngs[0], spec), spec)[1]]

            infer_only = functools.partial(pipe.prepared, geometry=geometry)
            agent_fps: list[float] = []
            bare_fps: list[float] = []
            service_fps: list[float] = []
            ahead_fps: list[float] = []
            modes = ("agent", "bare", "service", "ahead")
            for r in range(args.rounds):
                for mode in modes[r % 4 :] + modes[: r % 4]:
                    if mode == "agent":
                        agent_fps.append(timed(pipe.frame, pngs, args.seconds))
                        pipe.service.flush(30)
                    elif mode == "ahead":
                        ahead_fps.append(frame_source(pipe, folder, args.seconds))
                        pipe.service.flush(30)
                    elif mode == "service":
                        service_fps.append(timed(infer_only, xs, args.seconds))
                        pipe.service.flush(30)
                    else:
                        bare_fps.append(timed(bare.run, xs, args.seconds))
            pipe.close()
            kb = sum(len(p) for p in pngs) / len(pngs) / 1024
            decode_ms = per_call_ms(lambda p: decode_image(p, spec), pngs)
            prepare_ms = per_call_ms(lambda p: prepare_image(p, spec), images)
            rows.append(
                (label, kb, bare_fps, agent_fps, service_fps, ahead_fps, decode_ms, prepare_ms)
            )
        print_machine(info)
        print(f"load average at the end: {machine()['loadavg']}")
        allocator = "glibc default" if args.glibc_default else "configured as the agent's"
        print(f"malloc: {allocator}")
        print(
            f"model: {args.model} (LiteRT, 1 thread), "
            f"{1e3 / median(rows[0][2]):.2f} ms a frame bare"
        )
        print()
        print(
            "| frames | PNG size | bare Runtime.run (frames/s) | agent pipeline, PNG in "
            "(frames/s) | ratio | target | infer + head + log only (frames/s) | ratio "
            "| the agent's frame source, PNG files in (frames/s) | ratio | target "
            "| decode | prepare |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, kb, bs, as_, ss, ah, decode_ms, prepare_ms in rows:
            b, a, sv, ahead = median(bs), median(as_), median(ss), median(ah)
            print(
                f"| {label} | {kb:.0f} KB | {b:.1f} ({min(bs):.0f}–{max(bs):.0f}) "
                f"| {a:.1f} ({min(as_):.0f}–{max(as_):.0f}) | {a / b:.3f} "
                f"| >= {TARGET} ({'met' if a / b >= TARGET else 'missed'}) "
                f"| {sv:.1f} ({min(ss):.0f}–{max(ss):.0f}) | {sv / b:.3f} "
                f"| {ahead:.1f} ({min(ah):.0f}–{max(ah):.0f}) | {ahead / b:.3f} "
                f"| >= {TARGET} ({'met' if ahead / b >= TARGET else 'missed'}) "
                f"| {decode_ms:.2f} ms | {prepare_ms:.2f} ms |"
            )
        print(
            f"\n{args.rounds} rounds of {args.seconds:.0f} s per mode, interleaved (the order "
            "rotates each round); medians, (min–max). Decode and prepare: ms per frame, alone."
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
