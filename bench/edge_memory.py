"""Benchmark: the agent's resident memory serving a real ~5 MB vision model, through a swap.

A real `edgepilot-agent run` process per case (started like tests/agent_processes.py does),
a real Mosquitto on loopback and a small hub on the wire (tests/edge_agent/conftest.py's
WireHub: a signed ModelRef in a retained desired state, chunks answered over MQTT). The model is
MediaPipe's hand_landmark_full.tflite (5.5 MB, 224x224x3 float input, four outputs) on LiteRT,
and the same model converted to ONNX at bench time (`tf2onnx.convert.from_tflite`, opset 13) on
onnxruntime, with the agent's default config (its CPU memory arena off) and with `[runtime]
onnx_memory_arena = true`. RSS is VmRSS from /proc/PID/status (VmHWM, the peak, beside it),
read after a 1 s settle at:

- idle: the agent running, no model deployed;
- loaded: version 1 delivered, verified, loaded and warmed up; no request yet;
- warm: after the first 20 requests of the mix below (one-time costs: the agent imports OpenCV,
  about 16 MB, at its first image body; the runtime's first-run buffers);
- after N requests: N (default 1,000, after those 20) mixed POST /v1/predict, in turn a JSON
  body with `inputs` holding a full 224x224x3 float frame (about 3 MB), a 96x96 PNG, a 1280x720
  PNG and a 224x224 PNG (the agent decodes, resizes and scales them with the ref's spec);
- probation: version 2 activated (the same bytes under a new signed ref: installed from the
  store without a transfer) with a probation window, version 1 still held for a rollback, after
  20 requests on version 2: two models held;
- after the swap: the window passed, the next request ends probation and drops version 1.

Targets: after N requests RSS <= loaded + 30 MB; after the swap RSS <= 1.15 x loaded. Both are
also given against the warm figure (the single model once it has served), which separates
growth from one-time costs.

    python bench/edge_memory.py [--requests 1000] [--probation-s 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _fleet import machine, print_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_hub.registry.signing import HubSigner  # noqa: E402
from edge_agent.core.wire import ProbationPolicy  # noqa: E402
from tests.agent_processes import AgentProc, agent_toml, wait_until  # noqa: E402
from tests.conftest import Mosquitto  # noqa: E402
from tests.edge_agent.conftest import WireHub  # noqa: E402
from tests.third_party import mediapipe_model  # noqa: E402

MODEL = "hand_landmark_full.tflite"
TARGET_AFTER_REQUESTS_MB = 30.0
TARGET_SWAP_RATIO = 1.15
PREPROCESSING = {
    "input_kind": "image",
    "layout": "NHWC",
    "size": [224, 224],
    "color": "rgb",
    "scale": 1 / 255,
}
POINTS = ["rss_idle", "rss_loaded", "rss_warm", "rss_requests", "rss_probation", "rss_swapped"]
WARM_REQUESTS = 20


@dataclass
class Case:
    name: str
    fmt: str
    data: bytes
    runtime: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)  # point -> (VmRSS, VmHWM)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def to_onnx(tflite: Path, out: Path) -> bytes:
    import tf2onnx

    tf2onnx.convert.from_tflite(str(tflite), opset=13, output_path=str(out))
    return out.read_bytes()


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def png(height: int, width: int, seed: int) -> bytes:
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx + 2 * yy) % 256
    image = np.stack([base, (base + 85) % 256, 255 - base], axis=-1)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def bodies() -> list[tuple[str, bytes]]:
    """The request mix, in turn: a 3 MB JSON frame, then small, large and model-size PNGs."""
    frame = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    as_json = json.dumps({"inputs": frame.tolist()}).encode()
    return [
        ("application/json", as_json),
        ("image/png", png(96, 96, 1)),
        ("image/png", png(720, 1280, 2)),
        ("image/png", png(224, 224, 3)),
    ]


def settle_rss(agent: AgentProc, seconds: float = 1.0) -> tuple[float, float]:
    time.sleep(seconds)  # let a request's thread finish and the allocator settle
    assert agent.proc is not None
    return memory_mb(agent.proc.pid)


def run_case(case: Case, root: Path, address: tuple[str, int], args: argparse.Namespace) -> None:
    signer = HubSigner.generate()
    device_id = "mem-" + re.sub(r"[^A-Za-z0-9]+", "-", case.name)
    home = root / device_id
    home.mkdir(parents=True)
    sections: dict[str, Any] = {"transfer": {"chunk_size": 256 * 1024, "window": 8}}
    if case.runtime:
        sections["runtime"] = case.runtime
    config = home / "agent.toml"
    config.write_text(
        agent_toml(device_id, home / "data", address, signer.public_key_b64, **sections)
    )
    agent = AgentProc(config, home / "data", home / "agent.log")
    hub = WireHub(address, device_id, signer).start()
    try:
        agent.start()
        case.rss["rss_idle"] = settle_rss(agent)

        def ref(version_id: int) -> Any:
            return hub.ref(
                case.data,
                version_id,
                format=case.fmt,
                preprocessing=PREPROCESSING,
                labels=[],
                signature=signer.sign_model(version_id, _sha(case.data), len(case.data), case.fmt),
            )

        hub.deploy(ref(1), case.data, deployment_id=1)
        hub.wait_report(1, "active", timeout=120)
        case.rss["rss_loaded"] = settle_rss(agent)

        mix = bodies()
        for i in range(WARM_REQUESTS):  # one-time costs: OpenCV's import, first-run buffers
            content_type, body = mix[i % len(mix)]
            agent.request("POST", "/v1/predict", body, {"Content-Type": content_type})
        case.rss["rss_warm"] = settle_rss(agent)
        began = time.monotonic()
        for i in range(args.requests):
            content_type, body = mix[i % len(mix)]
            code, _ = agent.request("POST", "/v1/predict", body, {"Content-Type": content_type})
            case.statuses[str(code)] = case.statuses.get(str(code), 0) + 1
        case.seconds = time.monotonic() - began
        case.rss["rss_requests"] = settle_rss(agent)

        window = ProbationPolicy(window_s=args.probation_s, min_requests=1)
        hub.deploy(ref(2), case.data, deployment_id=2, probation=window)
        hub.wait_report(2, "active", timeout=120)
        started = time.monotonic()
        for i in range(20):
            content_type, body = mix[1 + i % 3]
            agent.request("POST", "/v1/predict", body, {"Content-Type": content_type})
        loaded = agent.status()["loaded_versions"]
        assert sorted(loaded) == [1, 2], f"expected two models held in probation, got {loaded}"
        case.rss["rss_probation"] = settle_rss(agent)
        time.sleep(max(0.0, args.probation_s - (time.monotonic() - started)) + 0.5)
        agent.request("POST", "/v1/predict", mix[3][1], {"Content-Type": "image/png"})
        wait_until(lambda: agent.status()["loaded_versions"] == [2], 10, "probation to end")
        case.rss["rss_swapped"] = settle_rss(agent)
    finally:
        agent.kill()
        hub.stop()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def verdict(ok: bool) -> str:
    return "pass" if ok else "miss"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--probation-s", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="100 requests, 4 s probation")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument(
        "--preload-cv2",
        action="store_true",
        help="the agents import OpenCV at start (a sitecustomize on PYTHONPATH): what the "
        "figures are when its import is paid up front instead of at the first image",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.probation_s = 100, 4.0
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="edge-memory-"))
    if args.preload_cv2:
        (root / "preload").mkdir()
        (root / "preload" / "sitecustomize.py").write_text("import cv2  # noqa: F401\n")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(root / "preload"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    (root / "broker").mkdir()
    broker = Mosquitto(root / "broker")
    try:
        tflite = mediapipe_model(MODEL)
        started = time.monotonic()
        onnx_bytes = to_onnx(tflite, root / "hand_landmark_full.onnx")
        converted_s = time.monotonic() - started
        cases = [
            Case("LiteRT", "tflite", tflite.read_bytes()),
            Case("onnxruntime", "onnx", onnx_bytes),
            Case("onnxruntime, arena on", "onnx", onnx_bytes, {"onnx_memory_arena": True}),
        ]
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        broker.start()
        for case in cases:
            run_case(case, root, broker.address, args)
        print()
        print_machine(info)
        print(f"load average at the end: {machine()['loadavg']}")
        if args.preload_cv2:
            print("agents started with OpenCV imported (--preload-cv2)")
        print(
            f"model: {MODEL} ({len(cases[0].data) / 1e6:.1f} MB tflite; ONNX by tf2onnx in "
            f"{converted_s:.0f} s, {len(onnx_bytes) / 1e6:.1f} MB)"
        )
        print()
        print(
            f"| runtime | idle | loaded | warm ({WARM_REQUESTS} requests) "
            f"| after {args.requests:,} more | probation (2 held) | after the swap "
            f"| requests ≤ loaded + {TARGET_AFTER_REQUESTS_MB:.0f} MB "
            f"| swap ≤ {TARGET_SWAP_RATIO} × loaded | vs warm: requests, swap |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for case in cases:
            rss = {k: v[0] for k, v in case.rss.items()}
            cells = [f"{case.rss[p][0]:.1f} MB (peak {case.rss[p][1]:.0f})" for p in POINTS]
            grown = rss["rss_requests"] - rss["rss_loaded"]
            ratio = rss["rss_swapped"] / rss["rss_loaded"]
            warm_grown = rss["rss_requests"] - rss["rss_warm"]
            warm_ratio = rss["rss_swapped"] / rss["rss_warm"]
            print(
                f"| {case.name} | {' | '.join(cells)} "
                f"| +{grown:.1f} MB: {verdict(grown <= TARGET_AFTER_REQUESTS_MB)} "
                f"| {ratio:.2f}×: {verdict(ratio <= TARGET_SWAP_RATIO)} "
                f"| {warm_grown:+.1f} MB: {verdict(warm_grown <= TARGET_AFTER_REQUESTS_MB)}, "
                f"{warm_ratio:.2f}×: {verdict(warm_ratio <= TARGET_SWAP_RATIO)} |"
            )
        print()
        for case in cases:
            print(
                f"{case.name}: {args.requests} requests in {case.seconds:.1f} s, "
                f"HTTP status {case.statuses}"
            )
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
