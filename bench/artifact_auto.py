"""Does `--artifact auto` pick the artifact a careful benchmark says is fastest here?

For two models, the digits CNN (trained here with Keras, as `edgepilot train --model cnn` does)
and a MobileNetV2-shaped network with random weights (bench/peers/mobilenet.py), it builds the
candidate sets a version really has:
- the CNN's pipeline version: onnx fp32, onnx int8 (static QDQ), tflite fp32, tflite int8;
- a version quantized with `--method dynamic`: onnx fp32 and onnx int8 (dynamic, ConvInteger);
- MobileNetV2: onnx fp32 with its static and with its dynamic int8 twin.
Then, per set, side by side in one run:
- *benchmark*: every (artifact, threads) timed on its own in `--rounds` interleaved rounds of
  `--seconds` each (single-row p50); the fastest is the lowest median p50;
- *auto*: the decision the agent and the hub make (`measure_candidates` then
  `fastest_variant`, edge_agent.core), run `--picks` times.
auto "picks the fastest" when its pick's median p50 is within the rule's tie band (5%) of the
fastest's: inside that band the rule prefers the default artifact on purpose.

    .venv/bin/python bench/artifact_auto.py [--rounds 5] [--seconds 1.0] [--picks 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # mobilenet.py

from edge_agent.core.runtimes import load_runtime  # noqa: E402
from edge_agent.core.variant_bench import (  # noqa: E402
    Candidate,
    measure_candidates,
    measure_variant,
    thread_choices,
)
from edge_agent.core.wire import VARIANT_TIE, fastest_variant  # noqa: E402

BUDGET_POINTS = 1.0


@dataclass
class Art:
    name: str  # FORMAT/PRECISION (method)
    candidate: Candidate
    accuracy: float | None


def _cand(data: bytes, fmt: str, precision: str) -> Candidate:
    return Candidate(data, fmt, precision, hashlib.sha256(data).hexdigest())  # type: ignore[arg-type]


def _accuracy(data: bytes, fmt: str, X: np.ndarray, y: np.ndarray) -> float:
    runtime = load_runtime(data, fmt, threads=1)  # type: ignore[arg-type]
    return float((runtime.predict(X).argmax(1) == y).mean())


def digits_sets() -> dict[str, list[Art]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from converters import keras_to_onnx, keras_to_tflite, quantize_onnx
    from converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    Xtr, Xte, ytr, yte = train_test_split(X, data.target, test_size=0.25, random_state=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="input"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(Xtr, ytr, epochs=10, batch_size=32, verbose=0)
    fp32 = keras_to_onnx(model)
    calib = Xtr[:300]
    static = quantize_onnx(fp32, calib, method="static").data
    dynamic = quantize_onnx(fp32, calib, method="dynamic").data
    tfl32 = keras_to_tflite(model)
    tfl8 = keras_to_tflite(model, calib)

    def art(name: str, blob: bytes, fmt: str, precision: str) -> Art:
        return Art(name, _cand(blob, fmt, precision), _accuracy(blob, fmt, Xte, yte))

    onnx32 = art("onnx/fp32", fp32, "onnx", "fp32")
    return {
        "digits CNN, pipeline version": [
            onnx32,
            art("onnx/int8 (static)", static, "onnx", "int8"),
            art("tflite/fp32", tfl32, "tflite", "fp32"),
            art("tflite/int8", tfl8, "tflite", "int8"),
        ],
        "digits CNN, --method dynamic": [
            onnx32,
            art("onnx/int8 (dynamic)", dynamic, "onnx", "int8"),
        ],
    }


def mobilenet_sets() -> dict[str, list[Art]]:
    from mobilenet import mobilenet_v2_bytes

    from converters import quantize_onnx

    fp32 = mobilenet_v2_bytes()
    calib = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)
    static = quantize_onnx(fp32, calib, method="static").data
    dynamic = quantize_onnx(fp32, calib, method="dynamic").data
    base = Art("onnx/fp32", _cand(fp32, "onnx", "fp32"), None)  # random weights: no accuracy
    return {
        "MobileNetV2, static int8": [
            base,
            Art("onnx/int8 (static)", _cand(static, "onnx", "int8"), None),
        ],
        "MobileNetV2, dynamic int8": [
            base,
            Art("onnx/int8 (dynamic)", _cand(dynamic, "onnx", "int8"), None),
        ],
    }


def within_budget(arts: list[Art]) -> list[Art]:
    known = [a.accuracy for a in arts if a.accuracy is not None]
    if not known:
        return arts
    return [
        a for a in arts if a.accuracy is not None and a.accuracy >= max(known) - BUDGET_POINTS / 100
    ]


def run_set(name: str, arts: list[Art], args: argparse.Namespace) -> dict[str, Any]:
    kept = within_budget(arts)
    threads = thread_choices([1, 2, 4])
    p50s: dict[tuple[str, int], list[float]] = {(a.name, n): [] for a in kept for n in threads}
    p99s: dict[tuple[str, int], list[float]] = {k: [] for k in p50s}
    for _ in range(args.rounds):  # interleaved: every variant once per round
        for a in kept:
            for n in threads:
                t = measure_variant(a.candidate, n, min_seconds=args.seconds, max_seconds=30)
                if t.p50_ms is not None and t.p99_ms is not None:
                    p50s[(a.name, n)].append(t.p50_ms)
                    p99s[(a.name, n)].append(t.p99_ms)
    median = {k: statistics.median(v) for k, v in p50s.items() if v}
    fastest = min(median, key=lambda k: median[k])
    by_sha = {a.candidate.sha256: a.name for a in kept}
    picks: Counter[tuple[str, int]] = Counter()
    for _ in range(args.picks):
        timings = measure_candidates([a.candidate for a in kept], threads)
        chosen = fastest_variant(timings, [a.candidate.sha256 for a in kept])
        if chosen is not None:
            picks[(by_sha[chosen.sha256], chosen.threads)] += 1
    good = sum(
        c for k, c in picks.items() if median.get(k, 1e9) <= median[fastest] * (1 + VARIANT_TIE)
    )
    return {
        "set": name,
        "excluded": [a.name for a in arts if a not in kept],
        "accuracy": {a.name: a.accuracy for a in arts},
        "variants": [
            {
                "artifact": k[0],
                "threads": k[1],
                "p50_ms": round(median[k], 4),
                "p50_range": [round(min(p50s[k]), 4), round(max(p50s[k]), 4)],
                "p99_ms": round(statistics.median(p99s[k]), 4),
            }
            for k in sorted(median, key=lambda k: median[k])
        ],
        "fastest": {"artifact": fastest[0], "threads": fastest[1]},
        "auto_picks": {f"{k[0]} x{k[1]}": c for k, c in picks.items()},
        "auto_picked_fastest": f"{good}/{args.picks}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per variant and round")
    parser.add_argument("--picks", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sets = {**digits_sets(), **mobilenet_sets()}
    results = [run_set(name, arts, args) for name, arts in sets.items()]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        left_out = ", ".join(r["excluded"]) or "none"
        print(f"\n## {r['set']}  (budget {BUDGET_POINTS:g} point; left out: {left_out})")
        print(
            f"{'artifact':<22} {'thr':>3} {'p50 ms':>9} {'p50 range':>19} {'p99 ms':>9}  accuracy"
        )
        for v in r["variants"]:
            acc = r["accuracy"].get(v["artifact"])
            lo, hi = v["p50_range"]
            print(
                f"{v['artifact']:<22} {v['threads']:>3} {v['p50_ms']:>9.4f} "
                f"{lo:>9.4f}-{hi:<9.4f} {v['p99_ms']:>9.4f}  {'-' if acc is None else f'{acc:.2%}'}"
            )
        picked = f"auto picked {r['auto_picks']}: fastest {r['auto_picked_fastest']}"
        print(f"fastest: {r['fastest']}; {picked}")


if __name__ == "__main__":
    main()
