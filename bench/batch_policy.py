"""What the engine's batching policy ("auto", the default) measures and decides for the models
of the serving benchmarks (µs per row at batch sizes 1, 4, 16 and 64, one inference thread),
and, with `--load`, what batching does under load: the engine in process (no HTTP), driven by
threads calling `ServingEngine.predict` back to back, one row a call, for the digits CNN (JSON
rows), the 26 MB MLP of bench/serving.py (rows) and the MobileNetV2-shaped model of bench/peers
(640×480 JPEGs through a `preprocess` step), each with batching off, on (forced) and auto, at
each concurrency, in interleaved rounds (the order of the modes rotates every round).

    .venv/bin/python bench/batch_policy.py
    .venv/bin/python bench/batch_policy.py --load [--rounds 3] [--seconds 2] [--hub-data DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "peers"))

from mobilenet import mobilenet_v2_bytes  # noqa: E402  (bench/peers/mobilenet.py)

from cloud_hub.devtools.synthetic_models import random_mlp  # noqa: E402
from cloud_hub.serving.engine.batch_policy import measure  # noqa: E402
from edge_agent.core.runtimes import load_runtime  # noqa: E402

MODES = ("off", "on", "auto")
TITLES = {
    "cnn": "digits CNN, JSON rows",
    "mlp": "MLP 1024-2560-2560-10 (26 MB), rows",
    "mnv2": "MobileNetV2-shaped, JPEG 640×480 + preprocess",
}


def policy_table() -> None:
    models = {
        "MLP 64-64-10 (tiny)": random_mlp(64, 64, 1),
        "MLP 1024-2560-2560-10 (26 MB, bench/serving.py)": random_mlp(1024, 2560, 2),
        "MobileNetV2-shaped, 224x224 (bench/peers)": mobilenet_v2_bytes(),
    }
    print("| model | µs/row @1 | @4 | @16 | @64 | batching | why |")
    print("|---|---|---|---|---|---|---|")
    for name, data in models.items():
        choice = measure(load_runtime(data, "onnx", threads=1), 64, budget_s=5.0)
        cost = choice.us_per_row
        cells = " | ".join(f"{cost[s]:.0f}" if s in cost else "–" for s in (1, 4, 16, 64))
        state = f"on, ≤{choice.max_batch_size}" if choice.enabled else "off"
        print(f"| {name} | {cells} | {state} | {choice.reason} |")


# -- under load -------------------------------------------------------------------------------
def load_spec(name: str, model: str, ref: str, mode: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    predict: dict[str, Any] = {"name": "predict", "kind": "model", "params": {"model": "m"}}
    if model == "mnv2":
        steps.append({"name": "pre", "kind": "preprocess", "params": {"model": "m"}})
        predict["inputs"] = ["pre"]
    steps.append(predict)
    enabled: bool | str = {"off": False, "on": True, "auto": "auto"}[mode]
    return {
        "name": name,
        "models": {"m": {"ref": ref, "format": "onnx", "precision": "fp32"}},
        "steps": steps,
        "output": "predict",
        "batching": {"enabled": enabled, "max_batch_size": 64, "max_wait_ms": 2},
    }


def requests(model: str) -> list[Any]:
    import peers  # bench/peers.py: its JPEGs
    import serving  # bench/serving.py: the heavy MLP's shape
    from sklearn.datasets import load_digits

    from cloud_hub.serving.engine.values import PredictRequest

    if model == "cnn":
        digits = (load_digits().data / 16.0).reshape(-1, 8, 8, 1)[:256]
        return [PredictRequest(inputs=[r.tolist()]) for r in digits]
    if model == "mlp":
        rows = np.random.default_rng(1).random((256, serving.HEAVY_DIMS[0])).round(4)
        return [PredictRequest(inputs=[r.tolist()]) for r in rows]
    return [PredictRequest(image_b64=base64.b64encode(j).decode()) for j in peers.jpeg_images(8)]


def under_load(args: argparse.Namespace) -> dict[str, Any]:
    import peers
    import serving

    from cloud_hub.core.errors import NotFound
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.engine.spec import EndpointSpec

    serving.prepare_hub(args.hub_data)  # the digits CNN, trained on first use
    peers.register_mobilenet(args.hub_data)
    hub = Hub.open(HubSettings(data_dir=args.hub_data, run_scheduler=False))
    serving.register_heavy(hub)
    refs = {"cnn": serving.MODEL_REF, "mlp": serving.HEAVY_REF, "mnv2": peers.MNV2_REF}
    engine = ServingEngine(hub.registry, hub.db, threads=8)
    reqs = {m: requests(m) for m in args.models}
    cells: dict[str, dict[str, Any]] = {}
    policies: dict[str, Any] = {}
    names = []
    try:
        for model in args.models:
            for mode in MODES:
                name = f"bench-batching-{model}-{mode}"
                with contextlib.suppress(NotFound):
                    engine.delete(name)
                engine.create(
                    EndpointSpec.model_validate(load_spec(name, model, refs[model], mode))
                )
                names.append(name)
                got = engine.stats(name).get("batching", {}).get("m", {})
                if mode == "auto":
                    policies[model] = got.get("policy")
        for model in args.models:
            for conc in args.concurrency:
                for r in range(args.rounds):
                    order = MODES[r % 3 :] + MODES[: r % 3]
                    for mode in order:
                        name = f"bench-batching-{model}-{mode}"
                        before = engine.stats(name).get("batching", {}).get("m", {})
                        load = serving.drive_engine(
                            engine, name, reqs[model], conc, args.warm, args.seconds
                        )
                        after = engine.stats(name).get("batching", {}).get("m", {})
                        cell = cells.setdefault(
                            f"{model}|{mode}|{conc}",
                            {"lat": [], "rps": [], "cpu": [], "batches": 0, "rows": 0, "most": 0},
                        )
                        cell["lat"] += load.latencies_s
                        cell["rps"].append(load.requests / args.seconds)
                        cell["cpu"].append(load.server_cpu_s / load.wall_s)
                        cell["batches"] += after.get("batches", 0) - before.get("batches", 0)
                        cell["rows"] += after.get("rows", 0) - before.get("rows", 0)
                        cell["most"] = max(cell["most"], after.get("most_concurrent_batches", 0))
                    print(
                        f"{model} c={conc} round {r + 1}: load {serving.loadavg()}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for name in names:
            with contextlib.suppress(NotFound):
                engine.delete(name)
        engine.close()
        hub.close()
    out: dict[str, Any] = {"policies": policies, "cells": {}}
    for key, cell in cells.items():
        lat = cell["lat"]
        out["cells"][key] = {
            "rps": float(np.median(cell["rps"])),
            "round_rps": [round(v, 1) for v in cell["rps"]],
            "p50_ms": float(np.percentile(lat, 50)) * 1000 if lat else None,
            "p99_ms": float(np.percentile(lat, 99)) * 1000 if lat else None,
            "cpu": float(np.median(cell["cpu"])),
            "mean_batch": round(cell["rows"] / cell["batches"], 2) if cell["batches"] else None,
            "most_concurrent_batches": cell["most"],
        }
    return out


def load_table(result: dict[str, Any], models: list[str], levels: list[int]) -> str:
    cells = result["cells"]
    lines = [
        "| model | c | off req/s (p99) | on req/s (p99) | on/off | auto req/s (p99) | auto/off "
        "| on: mean batch, most at once | CPU off/on/auto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for conc in levels:
            c = {mode: cells[f"{model}|{mode}|{conc}"] for mode in MODES}
            off = c["off"]["rps"]

            def show(cell: dict[str, Any]) -> str:
                spread = f"{min(cell['round_rps']):.0f}–{max(cell['round_rps']):.0f}"
                return f"{cell['rps']:.0f} [{spread}] ({cell['p99_ms']:.1f} ms)"

            lines.append(
                f"| {TITLES[model]} | {conc} | {show(c['off'])} | {show(c['on'])} "
                f"| {c['on']['rps'] / off:.2f}× | {show(c['auto'])} "
                f"| {c['auto']['rps'] / off:.2f}× "
                f"| {c['on']['mean_batch'] or '-'}, {c['on']['most_concurrent_batches']} "
                f"| {c['off']['cpu']:.2f}/{c['on']['cpu']:.2f}/{c['auto']['cpu']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--load", action="store_true", help="also batching off/on/auto under load")
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp", "mnv2"], choices=TITLES)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--warm", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--hub-data", type=Path, help="a hub data dir to reuse (or train into)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    policy_table()
    if not args.load:
        return
    tmp = None
    if args.hub_data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-batching-")
        args.hub_data = Path(tmp.name)
    import serving

    info = serving.machine()
    result = under_load(args)
    info["loadavg_end"] = serving.loadavg()
    print(f"\nmachine: {json.dumps(info)}")
    print(
        f"rounds: {args.rounds}, {args.seconds:g} s measured per cell after {args.warm:g} s "
        "warm-up; req/s: median [range over rounds]; p99 over every round's calls\n"
    )
    print(load_table(result, args.models, args.concurrency))
    print("\nauto decided: " + json.dumps(result["policies"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **result}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
