"""Shadow and serving parameters at the edge, end to end: the hub's REST API (with the example
bodies of examples/deployments/), its fleet service, Mosquitto and real agent processes.

What a user would check: a shadow's answer never reaches the caller; the hub reports agreement
and both latencies per device; promoting the shadow activates it without sending the model again;
a score threshold and a kill switch change the answers on the devices without any transfer.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.registry.schemas import Version
from tests.agent_processes import AgentProc
from tests.conftest import REPO, admin_headers
from tests.e2e.test_fleet_loop import Fleet
from tests.waiting import wait_until

EXAMPLES = REPO / "examples" / "deployments"
LINE = ["line-a", "line-b"]  # the devices tagged line-1, as the examples target them


@dataclass(frozen=True)
class Iris:
    X: np.ndarray
    onnx: list[bytes]  # version 1, version 2
    classes: list[np.ndarray]  # each version's top class for every row of X
    top_score: list[np.ndarray]


@pytest.fixture(scope="module")
def iris() -> Iris:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [
            LogisticRegression(max_iter=500).fit(X, y),
            MLPClassifier((64, 64), max_iter=300, random_state=0).fit(X, y),
        ]
    return Iris(
        X,
        [sklearn_to_onnx(m, 4) for m in models],
        [m.predict(X) for m in models],
        [m.predict_proba(X).max(axis=1) for m in models],
    )


def _register(hub: Hub, data: bytes) -> Version:
    return hub.registry.register_version(
        "iris",
        "iris-mlp",
        artifacts=[NewArtifact("onnx", "fp32", data)],
        source="uploaded",
        labels=["setosa", "versicolor", "virginica"],
        preprocessing={"input_kind": "tabular", "layout": "NF"},
    )


def _example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return body


@pytest.fixture
def line(
    tmp_path: Path, mosquitto: tuple[str, int], iris: Iris
) -> Iterator[tuple[Fleet, TestClient, list[AgentProc], list[Version]]]:
    """The hub (REST + fleet service) and two agents tagged line-1, versions 1 and 2 registered."""
    fleet = Fleet(tmp_path, mosquitto)
    try:
        fleet.start_service()
        agents = [fleet.add_agent(d, tags=["line-1"]) for d in LINE]
        versions = [_register(fleet.hub, data) for data in iris.onnx]
        assert [v.ref for v in versions] == ["iris/iris-mlp:1", "iris/iris-mlp:2"]
        with TestClient(
            create_app(fleet.hub, scheduler=False, fleet=False), headers=admin_headers(fleet.hub)
        ) as client:
            yield fleet, client, agents, versions
    finally:
        fleet.close()


def _logs_reach(fleet: Fleet, device_id: str, n: int) -> Callable[[], bool]:
    return lambda: len(fleet.logs_at_hub(device_id)) == n


def _param_is(agent: AgentProc, key: str, value: Any) -> Callable[[], bool]:
    return lambda: bool(agent.status()["params"][key] == value)


def _chunks(fleet: Fleet) -> int:
    assert fleet.service is not None
    return fleet.service.stats().get("chunks", 0)


def test_shadow_is_compared_reported_and_promoted_without_a_second_transfer(
    line: tuple[Fleet, TestClient, list[AgentProc], list[Version]], iris: Iris
) -> None:
    fleet, client, agents, (v1, v2) = line
    made = client.post("/api/v1/deployments", json=_example("shadow.json"))
    assert made.status_code == 201, made.text
    dep = made.json()
    assert dep["shadow_version"] == "iris/iris-mlp:2" and dep["version"] == "iris/iris-mlp:1"

    def shadows_active() -> bool:
        rows = client.get(f"/api/v1/deployments/{dep['id']}").json()["devices"]
        return all(r["state"] == "active" and r["shadow_state"] == "active" for r in rows)

    fleet.wait_active(v1, *LINE)
    wait_until(shadows_active, 30, "both devices running the shadow")
    chunks_after_delivery = _chunks(fleet)
    size = len(iris.onnx[0]) + len(iris.onnx[1])
    assert chunks_after_delivery >= 2 * (size // 4096)  # each device fetched both models

    # The callers only ever get version 1's answers, where the two disagree too.
    X = iris.X
    disagree = np.where(iris.classes[0] != iris.classes[1])[0]
    assert len(disagree) > 0
    request_ids = {d: set[str]() for d in LINE}
    for device_id, agent in zip(LINE, agents, strict=True):
        code, doc = agent.predict(X.tolist())  # one batch of all 150 samples
        assert code == 200, doc
        assert doc["model_version"] == v1.id
        assert [p["class"] for p in doc["predictions"]] == iris.classes[0].tolist()
        request_ids[device_id].add(doc["request_id"])
        for i in disagree:  # one request per sample the shadow answers differently
            code, doc = agent.predict(X[[i]].tolist())
            assert code == 200 and doc["model_version"] == v1.id
            assert doc["predictions"][0]["class"] == int(iris.classes[0][i])
            assert doc["predictions"][0]["class"] != int(iris.classes[1][i])
            request_ids[device_id].add(doc["request_id"])
    n = len(X) + len(disagree)
    agreed = int(np.sum(iris.classes[0] == iris.classes[1]))

    # At the hub: every request logged twice (active and shadow), and the shadow report.
    for device_id in LINE:
        wait_until(_logs_reach(fleet, device_id, 2 * n), 30, f"{2 * n} logs of {device_id}")
        logs = fleet.logs_at_hub(device_id)
        assert {(log.role, log.model_version) for log in logs} == {
            ("active", v1.id),
            ("shadow", v2.id),
        }
    report = client.get(f"/api/v1/deployments/{dep['id']}/shadow")
    assert report.status_code == 200, report.text
    doc = report.json()
    assert doc["compared"] == 2 * n and doc["agreed"] == 2 * agreed
    assert doc["agreement"] == round(agreed / n, 4)
    for row in doc["devices"]:
        assert row["shadow_state"] == "active"
        assert row["compared"] == n and row["agreed"] == agreed
        for key in ("active_latency_ms", "shadow_latency_ms"):
            assert 0 < row[key]["p50"] <= row[key]["p99"], row

    # Promote: version 2 becomes active on both devices, and no model byte is sent again.
    promoted = client.post(f"/api/v1/deployments/{dep['id']}/promote")
    assert promoted.status_code == 201, promoted.text
    new = promoted.json()
    assert new["version"] == "iris/iris-mlp:2" and new["promoted_from"] == dep["id"]
    assert new["shadow_version"] is None
    fleet.wait_active(v2, *LINE)
    wait_until(
        lambda: client.get(f"/api/v1/deployments/{new['id']}").json()["status"] == "completed",
        30,
        "the promotion to complete",
    )
    assert _chunks(fleet) == chunks_after_delivery
    old = client.get(f"/api/v1/deployments/{dep['id']}").json()
    assert old["status"] == "superseded" and old["promoted_to"] == new["id"]
    for agent in agents:
        code, answer = agent.predict(X[disagree].tolist())
        assert code == 200 and answer["model_version"] == v2.id
        assert [p["class"] for p in answer["predictions"]] == iris.classes[1][disagree].tolist()
        assert agent.status()["shadow_version"] is None
    again = client.post(f"/api/v1/deployments/{dep['id']}/promote")
    assert again.status_code == 422 and "already promoted" in again.text


def test_params_threshold_and_kill_switch_reach_the_devices_without_a_transfer(
    line: tuple[Fleet, TestClient, list[AgentProc], list[Version]], iris: Iris
) -> None:
    fleet, client, agents, (v1, _) = line
    made = client.post("/api/v1/deployments", json=_example("params.json"))
    assert made.status_code == 201, made.text
    dep = made.json()
    assert dep["params"] == {"min_score": 0.9, "default_label": "unsure"}
    fleet.wait_active(v1, *LINE)
    chunks = _chunks(fleet)
    X = iris.X
    low = np.where(iris.top_score[0] < 0.9)[0]
    high = np.where(iris.top_score[0] >= 0.95)[0]
    assert len(low) > 5 and len(high) > 5

    # The threshold is in force from the start: below 0.9, the default answer, flagged.
    for agent in agents:
        code, doc = agent.predict(X.tolist())
        assert code == 200, doc
        preds = doc["predictions"]
        assert {preds[i]["label"] for i in low} == {"unsure"}
        assert all(preds[i]["thresholded"] and preds[i]["class"] is None for i in low)
        assert [preds[i]["class"] for i in high] == iris.classes[0][high].tolist()

    # The kill switch (the example body), then off again: no transfer, answers change at once.
    switched = client.put(
        f"/api/v1/deployments/{dep['id']}/params", json=_example("kill_switch.json")
    )
    assert switched.status_code == 200, switched.text
    for agent in agents:
        wait_until(_param_is(agent, "disabled", True), 15, "kill switch on")
        code, doc = agent.predict(X[high[:3]].tolist())
        assert code == 200 and doc["disabled"] is True and doc["model_version"] is None
        assert [p["label"] for p in doc["predictions"]] == ["manual-check"] * 3
    lowered = client.put(f"/api/v1/deployments/{dep['id']}/params", json={"min_score": 0.5})
    assert lowered.status_code == 200
    for agent in agents:
        wait_until(_param_is(agent, "disabled", False), 15, "kill switch off")
        code, doc = agent.predict(X.tolist())
        assert code == 200 and doc["model_version"] == v1.id
        assert sum(p["thresholded"] for p in doc["predictions"]) < len(low)
    assert _chunks(fleet) == chunks
    assert fleet.hub.fleet.deployments.get(dep["id"]).params == {"min_score": 0.5}

    # Bad parameters are refused at the hub, naming the field; nothing changes.
    for body, field in (
        ({"min_score": 1.5}, "min_score"),
        ({"disabled": "maybe"}, "disabled"),
        ({"kill": True}, "kill"),
    ):
        refused = client.put(f"/api/v1/deployments/{dep['id']}/params", json=body)
        assert refused.status_code == 422 and field in refused.text, refused.text
    assert fleet.hub.fleet.deployments.get(dep["id"]).params == {"min_score": 0.5}
