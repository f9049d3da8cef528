"""Benchmark: size, accuracy and latency of fp32 vs int8 artifacts (ONNX and TFLite).

Trains the built-in digits MLP and CNN, exports every artifact, and measures them side by side in
one process, one inference thread each. Latencies are medians of many calls through
edge_agent.core.runtimes (what the agent pays, Python wrapper included), measured in interleaved
rounds
so that a burst of load from elsewhere on the machine hits every artifact alike.

    python bench/convert_quantize.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_hub.training.trainers import TrainedModel, export_artifacts, train_model  # noqa: E402
from converters.quantize import cpu_has_fast_int8, quantize_onnx  # noqa: E402
from edge_agent.core.runtimes import ModelFormat, Runtime, load_runtime  # noqa: E402

RUNTIME_NAMES = {"onnx": "onnxruntime", "tflite": "LiteRT"}


@dataclass
class Row:
    model: str
    format: ModelFormat
    precision: str
    method: str
    size_bytes: int
    accuracy: float
    agreement: float
    b1_samples_us: list[float] = field(default_factory=list, repr=False)
    b64_samples_us: list[float] = field(default_factory=list, repr=False)
    b1_round_medians: list[float] = field(default_factory=list, repr=False)
    b64_round_medians: list[float] = field(default_factory=list, repr=False)

    @property
    def b1_us(self) -> float:
        return float(np.median(self.b1_samples_us))

    @property
    def b64_us(self) -> float:
        return float(np.median(self.b64_samples_us))


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ai_edge_litert
    import onnxruntime
    import tensorflow as tf

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "arch": platform.machine(),
        "int8_dot_product": "yes" if cpu_has_fast_int8() else "no",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "ai-edge-litert": getattr(ai_edge_litert, "__version__", "?"),
        "tensorflow": tf.__version__,
        "loadavg_start": " ".join(os.getloadavg().__repr__().strip("()").split(", ")),
    }


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return X_train, X_test, y_train, y_test


def time_calls(runtime: Runtime, batch: np.ndarray, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        runtime.predict(batch)
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds")
    parser.add_argument("--calls-b1", type=int, default=400, help="batch-1 calls per round")
    parser.add_argument("--calls-b64", type=int, default=60, help="batch-64 calls per round")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    X_train, X_test, y_train, y_test = digits()
    info = machine()
    started = time.time()
    trained: dict[str, tuple[TrainedModel, np.ndarray, np.ndarray]] = {}
    trained["mlp"] = (train_model("mlp", X_train, y_train, seed=0), X_train, X_test)
    images_train, images_test = X_train.reshape(-1, 8, 8, 1), X_test.reshape(-1, 8, 8, 1)
    trained["cnn"] = (train_model("cnn", images_train, y_train, seed=0), images_train, images_test)
    train_s = time.time() - started

    rows: list[Row] = []
    runtimes: list[tuple[Row, Runtime, Runtime, np.ndarray, np.ndarray]] = []
    for name, (model, train, test) in trained.items():
        reference = model.predict_scores(test)
        result = export_artifacts(model, train)
        artifacts = [(a.format, a.precision, a.method or "-", a.data) for a in result.artifacts]
        if model.framework == "sklearn":  # show the int8 method "auto" did not pick, too
            done = {a.method for a in result.artifacts}
            for method in ("static", "dynamic"):
                if method not in done:
                    data = quantize_onnx(artifacts[0][3], train[:300], method=method).data
                    artifacts.append(("onnx", "int8", method, data))
        for fmt, precision, method, data in artifacts:
            one = load_runtime(data, fmt, threads=1)
            many = load_runtime(data, fmt, threads=1)  # kept at batch 64: no resizing in the loop
            scores = one.predict(test)
            row = Row(
                model=name,
                format=fmt,
                precision=precision,
                method=method,
                size_bytes=len(data),
                accuracy=float(np.mean(scores.argmax(1) == y_test)),
                agreement=float(np.mean(scores.argmax(1) == reference.argmax(1))),
            )
            rows.append(row)
            b64 = np.ascontiguousarray(test[:64])
            for _ in range(20):  # warm-up
                one.predict(test[:1])
                many.predict(b64)
            runtimes.append((row, one, many, np.ascontiguousarray(test[:1]), b64))

    for _ in range(args.rounds):
        for row, one, many, b1, b64 in runtimes:
            samples = time_calls(one, b1, args.calls_b1)
            row.b1_samples_us += samples
            row.b1_round_medians.append(float(np.median(samples)))
            samples = time_calls(many, b64, args.calls_b64)
            row.b64_samples_us += samples
            row.b64_round_medians.append(float(np.median(samples)))
    info["loadavg_end"] = " ".join(os.getloadavg().__repr__().strip("()").split(", "))

    print(f"machine: {json.dumps(info)}")
    print(
        f"training both models: {train_s:.1f} s; rounds: {args.rounds}, calls per round: "
        f"{args.calls_b1} (batch 1), {args.calls_b64} (batch 64)\n"
    )
    print(markdown_table(rows))
    if args.json:
        payload = {
            "machine": info,
            "rows": [
                {
                    **{k: v for k, v in asdict(r).items() if not k.endswith("samples_us")},
                    "b1_p50_us": r.b1_us,
                    "b64_p50_us": r.b64_us,
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2))


def markdown_table(rows: list[Row]) -> str:
    fp32 = {(r.model, r.format): r for r in rows if r.precision == "fp32"}
    lines = [
        "| model | format | precision | int8 method | runtime | size | size vs fp32 | accuracy "
        "| top-1 agreement | p50 batch 1 | p50 batch 64 | speed-up b1 | speed-up b64 "
        "| b64 round spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = fp32[r.model, r.format]
        spread = max(r.b64_round_medians) / min(r.b64_round_medians)
        lines.append(
            f"| {r.model} | {r.format} | {r.precision} | {r.method} | {RUNTIME_NAMES[r.format]} "
            f"| {r.size_bytes / 1024:.1f} KB | {r.size_bytes / base.size_bytes:.2f}× "
            f"| {r.accuracy:.4f} | {r.agreement:.4f} | {r.b1_us:.1f} µs | {r.b64_us:.1f} µs "
            f"| {base.b1_us / r.b1_us:.2f}× | {base.b64_us / r.b64_us:.2f}× | {spread:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
