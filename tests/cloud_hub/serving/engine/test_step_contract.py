"""The step interface's contract on the built-in kinds: `signature()` is a query. What a step
keeps from its inputs it keeps in `bind()`, once, when the graph is built."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.serving.engine.graph import Graph
from cloud_hub.serving.engine.step import REQUEST
from tests.cloud_hub.serving.conftest import example

EXAMPLES = [
    "sync.json",
    "serial_chain.json",
    "parallel.json",
    "ab_test.json",
    "threshold.json",
    "prediction_cache.json",
    "circuit_breaker.json",
    "condition.json",
    "shadow.json",
]


def graph_of(client: TestClient, name: str) -> Graph:
    engine: Any = client.app.state.engine  # type: ignore[attr-defined]
    endpoint = engine.live(name)
    assert endpoint is not None, name
    graph: Graph = endpoint.graph
    return graph


@pytest.mark.parametrize("file", EXAMPLES)
def test_signature_changes_nothing_on_a_built_step(client: TestClient, file: str) -> None:
    spec = example(file)
    spec["name"] = f"contract-{file.removesuffix('.json').replace('_', '-')}"
    for step in spec["steps"]:
        if step["kind"] == "http":  # nothing is called while the graph is built
            step["params"]["url"] = "http://127.0.0.1:9/v1/predict"
    resp = client.post("/api/v1/endpoints", json=spec)
    assert resp.status_code == 201, resp.text
    graph = graph_of(client, spec["name"])
    sigs = graph.signatures
    for name in graph.order:
        step = graph.steps[name]
        before = {k: id(v) for k, v in vars(step).items()}
        inputs = [sigs[i] for i in step.inputs] or [REQUEST]
        again = step.signature(inputs, sigs.__getitem__)
        assert (again.describe(), again.labels) == (sigs[name].describe(), sigs[name].labels)
        assert {k: id(v) for k, v in vars(step).items()} == before, f"{name} changed itself"
