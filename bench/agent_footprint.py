"""Benchmark: the agent's memory when idle with the digits CNN loaded, and its cold start.

The digits CNN is trained by the hub's pipeline (`edgepilot train --project digits --dataset
digits --model cnn`, about 15 s) or taken from --hub-data. A Mosquitto broker and the hub's
FleetService run on loopback; one device per runtime is registered, its `edgepilot-agent run`
process started with the config the hub writes, and the model delivered to it over MQTT (TFLite
to a LiteRT-only device, ONNX fp32 to an onnxruntime-only one). Then each agent is restarted
--starts times (a restart: the model is already installed in its data directory) and timed from
spawning the process to the first successful POST /v1/predict answer. RSS is VmRSS from
/proc/PID/status, read --settle seconds after that first answer (idle, model loaded).

    python bench/agent_footprint.py [--starts 5] [--hub-data DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
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
)

TARGET_RSS_MB = {"litert": 60.0, "onnxruntime": 90.0}
TARGET_COLD_S = 1.5


@dataclass
class Case:
    device_id: str
    runtime: str
    artifact: str
    agent: Agent | None = None
    cold_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def sample_input() -> list[Any]:
    from cloud_hub.registry.datasets import load_digits

    image = np.asarray(load_digits().X[0], dtype=np.float32).reshape(1, 8, 8, 1) / 255.0
    return list(image.tolist())


def cold_start(agent: Agent, inputs: object, timeout: float = 60.0) -> float:
    """Spawn the agent; seconds until its first successful POST /v1/predict."""
    agent.spawn()
    body = json.dumps({"inputs": inputs}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.check()
        if agent.read_port() > 0:
            code, _ = agent.request("POST", "/v1/predict", body, timeout=10)
            if code == 200:
                return time.perf_counter() - agent.spawned_at
        time.sleep(0.002)
    raise TimeoutError(f"{agent.device_id} did not answer within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts per runtime")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before RSS")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir holding the digits CNN")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 starts, 1 s settle")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.quick:
        args.starts, args.settle = 2, 1.0

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    try:
        if args.hub_data is not None:
            hub_dir = workdir / "hub"
            shutil.copytree(args.hub_data, hub_dir)
            version = digits_version(hub_dir)
        else:
            started = time.monotonic()
            hub_dir = workdir / "hub"
            version = train_digits_cnn(hub_dir)
            print(f"trained the digits CNN in {time.monotonic() - started:.1f} s")
        cases = [
            Case("fp-litert-int8", "litert", "tflite/int8"),
            Case("fp-litert-fp32", "litert", "tflite/fp32"),
            Case("fp-onnx-fp32", "onnxruntime", "onnx/fp32"),
        ]
        inputs = sample_input()
        with Fleet(workdir, hub_dir) as fleet:
            fleet.start_service()
            for case in cases:
                case.agent = fleet.register(case.device_id, [case.runtime])
                case.agent.spawn()
            for case in cases:
                assert case.agent is not None
                case.agent.wait_http()
                deployment = fleet.deploy(version, artifact=case.artifact, device=case.device_id)
                fleet.wait_active(deployment)
            for case in cases:  # the model is installed: stop, then restart cold, one at a time
                assert case.agent is not None
                case.agent.stop()
            for _ in range(args.starts):  # interleaved: a burst of load hits every runtime alike
                for case in cases:
                    assert case.agent is not None
                    case.cold_s.append(cold_start(case.agent, inputs))
                    for _ in range(20):
                        case.agent.predict(inputs)
                    time.sleep(args.settle)
                    case.rss_mb.append(case.agent.rss_kb() / 1024)
                    case.agent.stop()

        print()
        print_machine(info)
        print(f"load average at the end: {machine()['loadavg']}")
        print()
        print(
            "| runtime | artifact | idle RSS (median) | RSS range | RSS target | cold start "
            "p50 | cold start range | cold target |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for case in cases:
            rss_target = TARGET_RSS_MB[case.runtime]
            rss, cold = median(case.rss_mb), median(case.cold_s)
            print(
                f"| {'LiteRT' if case.runtime == 'litert' else 'onnxruntime'} | {case.artifact} "
                f"| {rss:.1f} MB | {min(case.rss_mb):.1f}–{max(case.rss_mb):.1f} MB "
                f"| ≤ {rss_target:.0f} MB ({'met' if rss <= rss_target else 'missed'}) "
                f"| {cold:.2f} s | {min(case.cold_s):.2f}–{max(case.cold_s):.2f} s "
                f"| ≤ {TARGET_COLD_S} s ({'met' if cold <= TARGET_COLD_S else 'missed'}) |"
            )
        print(f"\n{args.starts} cold starts per row; RSS {args.settle:.0f} s after 20 requests.")
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
