"""`--artifact auto` end to end: the hub's fleet service, Mosquitto and real agent processes.

A canary agent downloads every candidate (a real fp32 ONNX model and its dynamically quantized
int8 twin), measures them on this machine, runs the fastest and reports its table; the hub
settles the choice from that table and the second device of the same hardware type gets the
choice without measuring anything."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_iris

from cloud_hub.registry.conversion import EvalData, quantize_version
from cloud_hub.registry.registry import NewArtifact
from edge_agent.core.wire import VariantTiming, fastest_variant
from tests.e2e.test_fleet_loop import IRIS_SAMPLE, Fleet
from tests.waiting import wait_until


def _iris_fp32() -> bytes:
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant here
        model = MLPClassifier(hidden_layer_sizes=(256,), max_iter=200, random_state=0).fit(X, y)
    return sklearn_to_onnx(model, 4)


def test_auto_measures_on_the_canary_and_reuses_its_choice_for_the_same_hardware(
    make_fleet: Callable[[tuple[str, int]], Fleet], mosquitto: tuple[str, int]
) -> None:
    from cloud_hub.fleet.schemas import DeploymentCreate

    fleet = make_fleet(mosquitto)
    fleet.start_service()
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    parent = fleet.hub.registry.register_version(
        "e2e",
        "iris-auto",
        artifacts=[NewArtifact("onnx", "fp32", _iris_fp32())],
        source="uploaded",
        labels=["setosa", "versicolor", "virginica"],
        preprocessing={"input_kind": "tabular", "layout": "NF"},
    )
    version = quantize_version(fleet.hub.registry, parent, EvalData(X[:50], X, y), method="dynamic")
    agents = [fleet.add_agent(d, hardware="e2e-box", tags=["auto"]) for d in ("box-a", "box-b")]
    dep = fleet.hub.fleet.deployments.create(
        DeploymentCreate(
            version=version.ref,
            tag="auto",
            artifact="auto",
            strategy="canary",
            canary_count=1,
            promote_after_s=0,
            probation={"window_s": 0},
        )
    )
    fleet.wait_active(version, "box-a", "box-b", timeout=90)
    wait_until(lambda: fleet.hub.fleet.deployments.get(dep.id).status == "completed", 30)
    rows = {d.device_id: d for d in fleet.hub.fleet.deployments.get(dep.id).devices}
    canary, rest = rows["box-a"], rows["box-b"]
    assert canary.choice == "measured" and rest.choice == "reused"
    assert set(canary.candidates) == {"onnx/fp32", "onnx/int8"}

    # the canary measured every candidate at every thread count; the hub chose by that table
    measured = canary.variants
    assert {v.artifact for v in measured} == {"onnx/fp32", "onnx/int8"}
    assert all(v.source == "measured" and v.error is None and v.runs >= 30 for v in measured)
    by_id = {a.id: a for a in version.artifacts}
    timings = [
        VariantTiming(
            sha256=by_id[v.artifact_id].sha256,
            format="onnx",
            precision=by_id[v.artifact_id].precision,
            threads=v.threads,
            p50_ms=v.p50_ms,
            p99_ms=v.p99_ms,
            runs=v.runs,
        )
        for v in measured
    ]
    order = [by_id[i].sha256 for i in sorted(by_id, key=lambda i: by_id[i].precision)]
    best = fastest_variant(timings, order)
    assert best is not None
    assert (canary.artifact, canary.threads) == (f"onnx/{best.precision}", best.threads)
    assert [v.chosen for v in measured].count(True) == 1

    # the second device got the same choice from the canary's table, and measured nothing (a
    # device's own rows are shown first: "reused" rows mean it reported none)
    assert (rest.artifact, rest.threads) == (canary.artifact, canary.threads)
    assert all(v.source == "reused" and v.hardware == "e2e-box" for v in rest.variants)
    for agent in agents:  # both serve the chosen artifact
        status = agent.status()
        assert status["active_version"] == version.id
        code, body = agent.predict(IRIS_SAMPLE)
        assert code == 200, body
