"""Batching's default is chosen by measurement: a model is batched only where a row costs
clearly less in a batch than alone (cloud_hub/serving/engine/batch_policy.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.devtools.synthetic_models import random_mlp
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.serving.engine.batch_policy import MIN_SAVING_US, decide, measure
from edge_agent.core.runtimes import load_runtime
from tests.model_zoo import fixed_batch_model, multi_input_model

API = "/api/v1/endpoints"


def test_the_rule_batches_only_where_a_row_saves_enough() -> None:
    # a memory-bound model: a row costs a tenth in a batch of 64
    on = decide({1: 2000.0, 4: 640.0, 16: 530.0, 64: 220.0}, 64)
    assert on.enabled and on.max_batch_size == 64 and "batch of 64" in on.reason
    # capped at the spec's size when the best size measured is larger
    assert decide({1: 2000.0, 64: 220.0}, 32).max_batch_size == 32
    # the cheapest size is the cap: batches of 16 are cheaper than of 64 here
    assert decide({1: 2000.0, 16: 300.0, 64: 310.0}, 64).max_batch_size == 16
    # a tiny model: most of its cost saved, but microseconds nobody notices
    assert not decide({1: 34.0, 4: 8.0, 16: 2.0, 64: 0.7}, 64).enabled
    # a convolutional network on one thread: as dear a row in a batch as alone
    off = decide({1: 4420.0, 4: 4450.0, 16: 4490.0}, 64)
    assert not off.enabled and "not worth" in off.reason
    # enough µs but too small a share of the cost
    assert not decide({1: 10_000.0, 16: 10_000.0 - MIN_SAVING_US - 1}, 64).enabled


def test_real_models_measured_here() -> None:
    heavy = load_runtime(random_mlp(1024, 2560, 2), "onnx", threads=1)  # ~26 MB of weights
    choice = measure(heavy, 64)
    assert choice.enabled, choice.describe()
    assert choice.us_per_row[1] > 2 * choice.us_per_row[choice.max_batch_size]
    tiny = load_runtime(random_mlp(64, 64, 1), "onnx", threads=1)
    assert not measure(tiny, 64).enabled
    fixed = measure(load_runtime(fixed_batch_model().data, "onnx"), 64)
    assert fixed.enabled and "fixed batch of 3" in fixed.reason and not fixed.us_per_row
    pair = measure(load_runtime(multi_input_model().data, "onnx"), 64)
    assert set(pair.us_per_row) == {1, 4, 16, 64} and not pair.enabled


@pytest.fixture(scope="module")
def heavy_ref(serving_hub: Hub) -> str:
    version = serving_hub.registry.register_version(
        "digits",
        "policy-mlp",
        artifacts=[NewArtifact("onnx", "fp32", random_mlp(1024, 2560, 2))],
        source="uploaded",
        labels=[str(i) for i in range(10)],
    )
    return version.ref


def stats(client: TestClient, name: str) -> dict[str, Any]:
    resp = client.get(f"{API}/{name}/stats")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()["batching"]
    return out


def model_endpoint(name: str, ref: str, batching: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "models": {"m": ref},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
    }
    if batching is not None:
        spec["batching"] = batching
    return spec


def test_an_endpoint_batches_by_default_only_the_model_that_pays(
    client: TestClient, heavy_ref: str
) -> None:
    for name, ref in (("policy-heavy", heavy_ref), ("policy-small", "digits/digits-mlp:1")):
        resp = client.post(API, json=model_endpoint(name, ref, None))
        assert resp.status_code == 201, resp.text
    heavy = stats(client, "policy-heavy")["m"]
    assert heavy["policy"]["enabled"] is True and heavy["batches"] == 0  # a batcher, unused
    small = stats(client, "policy-small")["m"]
    assert small["policy"]["enabled"] is False and "batches" not in small  # no batcher
    assert set(small["policy"]["us_per_row"]) == {"1", "4", "16", "64"}

    # what the spec says is obeyed as written, unmeasured
    forced = model_endpoint("policy-forced", "digits/digits-mlp:1", {"enabled": True})
    assert client.post(API, json=forced).status_code == 201
    got = stats(client, "policy-forced")["m"]
    assert "policy" not in got and "batches" in got
