"""`artifact: auto` in a model step: the hub measures the version's artifacts when the endpoint is
built and serves the one the measurement says is fastest (cloud_hub/serving/engine/variants.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from cloud_hub.hub import Hub
from cloud_hub.registry.conversion import EvalData, quantize_version
from cloud_hub.serving.engine.variants import VariantCache, choose_by_measurement
from edge_agent.core.variant_bench import thread_choices
from edge_agent.core.wire import VariantTiming, fastest_variant

API = "/api/v1/endpoints"


@pytest.fixture(scope="module")
def quantized_ref(serving_hub: Hub) -> str:
    """The trained digits MLP and its dynamically quantized int8 twin (the real conversion
    path, each artifact with its accuracy in the report)."""
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    parent = serving_hub.registry.resolve_version("digits/digits-mlp:1")
    version = quantize_version(
        serving_hub.registry, parent, EvalData(X[:100], X, data.target), method="dynamic"
    )
    return version.ref


def _spec(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "models": {"m": model},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
    }


def test_the_endpoint_runs_what_its_measurement_says_is_fastest(
    client: TestClient, serving_hub: Hub, quantized_ref: str
) -> None:
    resp = client.post(API, json=_spec("auto-a", {"ref": quantized_ref, "artifact": "auto"}))
    assert resp.status_code == 201, resp.text
    stats = client.get(f"{API}/auto-a/stats").json()["artifact_choice"]["m"]
    timings = [VariantTiming(**t) for t in stats["timings"]]
    version = serving_hub.registry.resolve_version(quantized_ref)
    # every candidate at every thread count this machine has, each really timed
    assert {(t.precision, t.threads) for t in timings} == {
        (p, n) for p in ("fp32", "int8") for n in thread_choices([1, 2, 4])
    }
    assert all(t.error is None and t.runs >= 30 and (t.p50_ms or 0) > 0 for t in timings)
    order = [a.sha256 for a in sorted(version.artifacts, key=lambda a: a.precision)]
    best = fastest_variant(timings, order)  # the choice follows the measurement
    assert best is not None
    chosen = stats["chosen"]
    assert chosen == {"artifact": f"onnx/{best.precision}", "threads": best.threads}
    answer = client.post(f"{API}/auto-a/predict", json={"inputs": [[0.0] * 64]})
    assert answer.status_code == 200, answer.text

    # a second endpoint of the same version takes the measurement made for the first
    resp = client.post(API, json=_spec("auto-b", {"ref": quantized_ref, "artifact": "auto"}))
    assert resp.status_code == 201, resp.text
    again = client.get(f"{API}/auto-b/stats").json()["artifact_choice"]["m"]
    assert again["measured_before"] is True and again["chosen"] == chosen


def test_auto_refuses_a_fixed_format_and_a_budget_nothing_fits(
    client: TestClient, serving_hub: Hub, quantized_ref: str
) -> None:
    both = {"ref": quantized_ref, "artifact": "auto", "precision": "int8"}
    resp = client.post(API, json=_spec("auto-c", both))
    assert resp.status_code == 422 and "artifact 'auto' measures every format" in resp.text
    version = serving_hub.registry.resolve_version(quantized_ref)
    failed = [a.model_copy(update={"status": "failed"}) for a in version.artifacts]
    with pytest.raises(LookupError, match="no artifact to measure"):
        choose_by_measurement(
            failed, serving_hub.registry.artifact_blob, budget_points=1, cache=VariantCache()
        )
    # a candidate that cannot be loaded is measured as an error, never chosen
    broken = [version.artifacts[0], version.artifacts[1].model_copy(update={"sha256": "0" * 64})]

    def blob(sha: str) -> bytes | Path:
        return b"not a model" if sha == "0" * 64 else serving_hub.registry.artifact_blob(sha)

    choice = choose_by_measurement(broken, blob, budget_points=100, cache=VariantCache())
    assert choice.artifact.sha256 == version.artifacts[0].sha256
    assert any(t.error and t.error.startswith("cannot load") for t in choice.timings)
