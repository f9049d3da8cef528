"""Benchmark: what each router/guard step of the quality patterns adds to the sync path.

In process (no HTTP): `ServingEngine.predict` on the digits CNN (trained into the hub data
directory like bench/serving.py does, or reused), one caller, one row per request, batching off,
prediction log off (`--log` turns it on for every endpoint alike). A plain `model` endpoint and
one endpoint per step kind, each with the same model step behind the router or guard, are
measured side by side in interleaved rounds (the order rotates every round). Per endpoint: p50
of the predict call; added: the median over rounds of (its p50 − the model endpoint's p50 in the
same round); %: added over the model endpoint's p50.

    python bench/quality_steps.py [--rounds 7] [--calls 1500] [--hub-data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _serving_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MODEL = {"name": "predict", "kind": "model", "params": {"model": "cnn"}}
OTHER = {"name": "other", "kind": "model", "params": {"model": "cnn"}}

# name → (extra steps after the model step, output, request extras, what it shows)
CASES: dict[str, tuple[list[dict[str, Any]], str, dict[str, Any], str]] = {
    "model": ([], "predict", {}, "plain model step (the reference)"),
    "pass-through (floor)": (
        [{"name": "via", "kind": "bench_pass", "params": {"target": "predict"}}],
        "via",
        {},
        "a step that only calls its target: what any extra node of the graph costs",
    ),
    "circuit_breaker": (
        [
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "predict", "fallback": {"label": "0"}},
            }
        ],
        "guard",
        {},
        "closed, no timeout: the target runs inline",
    ),
    "circuit_breaker+timeout": (
        [
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "predict", "fallback": {"label": "0"}, "timeout_ms": 1000},
            }
        ],
        "guard",
        {},
        "closed, timeout_ms: the target runs on the fan-out pool, waited on",
    ),
    "ab_split": (
        [
            OTHER,
            {
                "name": "split",
                "kind": "ab_split",
                "params": {
                    "variants": {"A": "predict", "B": "other"},
                    "weights": {"A": 0.5, "B": 0.5},
                    "sticky": "key",
                },
            },
        ],
        "split",
        {"key": "user-42"},
        "sticky by key (hash per request)",
    ),
    "shadow (sample 0)": (
        [
            OTHER,
            {
                "name": "mirror",
                "kind": "shadow",
                "params": {"primary": "predict", "candidates": ["other"], "sample": 0.0},
            },
        ],
        "mirror",
        {},
        "the guard itself: nothing mirrored",
    ),
    "shadow (sample 1)": (
        [
            OTHER,
            {
                "name": "mirror",
                "kind": "shadow",
                "params": {"primary": "predict", "candidates": ["other"], "sample": 1.0},
            },
        ],
        "mirror",
        {},
        "every request mirrored: the candidate runs in the background, on the same cores",
    ),
    "threshold": (
        [
            {
                "name": "gate",
                "kind": "threshold",
                "inputs": ["predict"],
                "params": {"min_score": 0.5, "default_label": "unsure"},
            }
        ],
        "gate",
        {},
        "min_score with an extra default class",
    ),
    "condition": (
        [
            OTHER,
            {
                "name": "route",
                "kind": "condition",
                "params": {
                    "routes": [
                        {"when": {"header": {"name": "x-model", "equals": "b"}}, "step": "other"},
                        {
                            "when": {"attribute": {"name": "tier", "equals": "free"}},
                            "step": "other",
                        },
                        {"when": {"device_tag": "low-power"}, "step": "other"},
                    ],
                    "default": "predict",
                },
            },
        ],
        "route",
        {"attributes": {"tier": "paid", "device_id": "bench-device"}},
        "3 routes tested (header, attribute, device tag: cached lookup), default taken",
    ),
}


def register_pass_through() -> None:
    """A bench-only kind: calls its target and returns its value, nothing else."""
    from collections.abc import Callable

    from cloud_hub.serving import RunContext, Signature, Step, StepParams, Value, register_step

    class PassParams(StepParams):
        target: str

    class PassThrough(Step):
        kind = "bench_pass"
        Params = PassParams
        arity = (0, 0)

        def targets(self) -> list[str]:
            return [self.params.target]

        def signature(
            self, inputs: list[Signature], target: Callable[[str], Signature]
        ) -> Signature:
            return target(self.params.target)

        def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
            return ctx.call(self.params.target)

    register_step(PassThrough)


def spec_for(case: str, ref: str) -> dict[str, Any]:
    steps, output, _, _ = CASES[case]
    return {
        "name": "bench-q-" + "".join(c if c.isalnum() else "-" for c in case).strip("-"),
        "models": {"cnn": {"ref": ref, "format": "onnx", "precision": "fp32"}},
        "steps": [MODEL, *steps],
        "output": output,
        "batching": {"enabled": False},
    }


def measure(engine: Any, name: str, requests: list[Any], calls: int) -> list[float]:
    for r in requests[:50]:  # warm
        engine.predict(name, r)
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        engine.predict(name, requests[i % len(requests)])
        out.append(time.perf_counter() - t0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.values import PredictRequest

    register_pass_through()
    bench = _serving_bench()
    _, _, train_s = bench.prepare_hub(args.hub_data)
    hub = Hub.open(HubSettings(data_dir=args.hub_data, run_scheduler=False))
    log = None
    if args.log:
        from cloud_hub.predlog.writer import PredictionLogWriter

        log = PredictionLogWriter(hub.db).start()
    engine = ServingEngine(hub.registry, hub.db, threads=8, log=log)
    digits = (load_digits().data / 16.0).reshape(-1, 8, 8, 1)[:256]
    names: dict[str, str] = {}
    lat: dict[str, list[float]] = {c: [] for c in CASES}
    rounds: dict[str, list[float]] = {c: [] for c in CASES}
    try:
        for case in CASES:
            spec = spec_for(case, bench.MODEL_REF)
            with contextlib.suppress(NotFound):
                engine.delete(spec["name"])
            engine.create(EndpointSpec.model_validate(spec))
            names[case] = spec["name"]
        cases = list(CASES)
        for r in range(args.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for case in order:
                extra = CASES[case][2]
                reqs = [PredictRequest(inputs=[d.tolist()], **extra) for d in digits]
                got = measure(engine, names[case], reqs, args.calls)
                lat[case] += got
                rounds[case].append(float(np.percentile(got, 50)))
                if case.startswith("shadow (sample 1)"):
                    time.sleep(0.05)  # let the mirrored calls drain before the next endpoint
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for name in names.values():
            with contextlib.suppress(NotFound):
                engine.delete(name)
        engine.close()
        hub.close()
    base = float(np.percentile(lat["model"], 50)) * 1e6
    out: dict[str, Any] = {"model_p50_us": base, "train_s": train_s, "steps": {}}
    for case in CASES:
        p50 = float(np.percentile(lat[case], 50)) * 1e6
        added = float(np.median(np.subtract(rounds[case], rounds["model"]))) * 1e6
        out["steps"][case] = {
            "p50_us": p50,
            "p99_us": float(np.percentile(lat[case], 99)) * 1e6,
            "added_us": added,
            "added_pct": 100 * added / base,
            "round_added_us": [
                round((a - b) * 1e6, 1) for a, b in zip(rounds[case], rounds["model"], strict=True)
            ],
            "what": CASES[case][3],
        }
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| step | p50 µs | p99 µs | added µs (p50) | % of the model step | what |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in result["steps"].items():
        added = "—" if case == "model" else f"{r['added_us']:+.1f}"
        pct = "—" if case == "model" else f"{r['added_pct']:+.1f}%"
        lines.append(
            f"| {case} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {added} | {pct} | {r['what']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1500, help="predict calls per round")
    parser.add_argument("--hub-data", type=Path, default=None)
    parser.add_argument("--log", action="store_true", help="prediction log on")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.hub_data is None:
            args.hub_data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = run(args)
    print(table(result))
    print(
        f"\nreference: the plain model endpoint's p50 {result['model_p50_us']:.1f} µs per call "
        f"(one CNN row); {args.rounds} rounds × {args.calls} calls per endpoint; prediction log "
        f"{'on' if args.log else 'off'}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
