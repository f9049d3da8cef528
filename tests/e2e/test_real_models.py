"""Real third-party models through the whole loop: upload, deploy, answer on device and hub.

Every model that onnxruntime's wheel ships and every model in MediaPipe's wheel (tests/
third_party.py) is uploaded to a real hub, deployed over Mosquitto to a real agent process, and
asked through the agent's HTTP API and through a hub endpoint, with every raw output requested:
the tensors must equal a direct run of the runtime on the same input, exactly. The one MediaPipe
model that needs a custom op LiteRT lacks is refused at upload, with the op named.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.errors import InvalidInput
from cloud_hub.fleet.schemas import DeploymentCreate
from cloud_hub.registry.schemas import Version
from cloud_hub.registry.uploads import register_upload
from edge_agent.core.runtimes import Runtime, detect_format, load_runtime
from tests.agent_processes import AgentProc
from tests.conftest import REPO, admin_headers
from tests.e2e.test_fleet_loop import Fleet
from tests.third_party import MEDIAPIPE_MODELS, all_models

HEADS = REPO / "examples" / "heads"


def _head_for(name: str) -> dict[str, Any] | None:
    path = HEADS / (Path(name).stem + ".json")
    return json.loads(path.read_text()) if path.is_file() else None


def _feed(runtime: Runtime, seed: int) -> dict[str, np.ndarray]:
    """A deterministic input for every model input: fixed dims as declared, dynamic ones 2."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runtime.inputs:
        shape = [2 if d is None else d for d in spec.shape]
        feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def _as_json_inputs(runtime: Runtime, feeds: dict[str, np.ndarray]) -> Any:
    if len(runtime.inputs) == 1:
        return feeds[runtime.inputs[0].name].tolist()
    return {k: v.tolist() for k, v in feeds.items()}


def _same_tensors(got: dict[str, Any], expected: dict[str, np.ndarray], where: str) -> None:
    assert set(got) == set(expected), f"{where}: outputs {sorted(got)} != {sorted(expected)}"
    for name, want in expected.items():
        tensor = got[name]
        assert tensor["shape"] == list(want.shape), f"{where}: {name} shape"
        values = np.asarray(tensor["data"], dtype=want.dtype).reshape(want.shape)
        assert np.array_equal(values, want), f"{where}: {name} differs from a direct run"


def _same_rows(
    predictions: list[dict[str, Any]],
    expected: dict[str, np.ndarray],
    runtime: Runtime,
    where: str,
) -> None:
    """A hub endpoint answers each row with its own tensors (rows may be routed to different
    models): row i of each output, or the whole tensor for a model without a batch."""
    for i, prediction in enumerate(predictions):
        rows = {
            name: want[i] if runtime.batched and want.ndim else want
            for name, want in expected.items()
        }
        _same_tensors(prediction["outputs"], rows, f"{where}, row {i}")


def _answers_with_its_head(predictions: list[dict[str, Any]], version: Version, where: str) -> None:
    """One structured answer per row, of the version's task."""
    assert predictions, f"{where}: no predictions"
    for p in predictions:
        assert p.get("task") == version.task, f"{where}: {p}"
        if version.task == "classification":
            assert p["scores"][p["class"]] == p["score"], f"{where}: {p}"
    if version.task == "keypoints":
        assert version.head is not None
        points = predictions[0]["instances"][0]["points"]
        assert len(points) == version.head["points"], f"{where}: {len(points)} points"


def _upload(fleet: Fleet, name: str, data: bytes, head: dict[str, Any] | None) -> Version:
    return register_upload(
        fleet.hub.registry,
        project="e2e",
        model=Path(name).stem.replace("_", "-"),
        data=data,
        filename=name,
        head=head,
    )


@pytest.fixture
def one_agent(
    make_fleet: Callable[[tuple[str, int]], Fleet], mosquitto: tuple[str, int]
) -> tuple[Fleet, AgentProc]:
    fleet = make_fleet(mosquitto)
    fleet.start_service()
    agent = fleet.add_agent("zoo-1", runtimes=["onnxruntime", "litert"])
    return fleet, agent


def _deploy_and_ask(
    fleet: Fleet, agent: AgentProc, client: TestClient, version: Version, data: bytes, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deploy `version` to the agent and serve it from a hub endpoint; ask both for every raw
    output on the same input and check the tensors against a direct run. Returns the agent's
    and the hub's predictions."""
    where = version.ref
    fmt = detect_format(data)
    assert fmt is not None
    runtime = load_runtime(data, fmt)
    feeds = _feed(runtime, seed)
    expected = runtime.run(feeds)
    inputs = _as_json_inputs(runtime, feeds)

    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(version.id), devices=["zoo-1"]))
    fleet.wait_active(version, "zoo-1", timeout=60)
    body = json.dumps({"inputs": inputs, "outputs": True}).encode()
    code, doc = agent.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
    assert code == 200, f"{where} on the agent: {doc}"
    assert doc["model_version"] == version.id
    _same_tensors(doc["outputs"], expected, f"{where} on the agent")
    _answers_with_its_head(doc["predictions"], version, f"{where} on the agent")

    endpoint = f"e2e{version.id}"
    spec = {
        "name": endpoint,
        "models": {"m": str(version.id)},
        "steps": [{"name": "run", "kind": "model", "params": {"model": "m"}}],
    }
    created = client.post("/api/v1/endpoints", json=spec)
    assert created.status_code == 201, f"{where}: {created.text}"
    answer = client.post(
        f"/api/v1/endpoints/{endpoint}/predict", json={"inputs": inputs, "outputs": True}
    )
    assert answer.status_code == 200, f"{where} at the hub: {answer.text}"
    hub_predictions = answer.json()["predictions"]
    _same_rows(hub_predictions, expected, runtime, f"{where} at the hub")
    _answers_with_its_head(hub_predictions, version, f"{where} at the hub")
    assert client.delete(f"/api/v1/endpoints/{endpoint}").status_code == 204
    return doc["predictions"], hub_predictions


def _without_tensors(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = ("outputs", "model_version", "thresholded")
    return [{k: v for k, v in p.items() if k not in drop} for p in predictions]


@pytest.mark.slow
def test_every_third_party_model_loads_deploys_and_answers_on_device_and_hub(
    one_agent: tuple[Fleet, AgentProc],
) -> None:
    fleet, agent = one_agent
    models = all_models()
    answered: list[str] = []
    app = create_app(fleet.hub, scheduler=False, fleet=False)
    with TestClient(app, headers=admin_headers(fleet.hub)) as client:
        for i, (name, path) in enumerate(sorted(models.items())):
            data = path.read_bytes()
            if not MEDIAPIPE_MODELS.get(name, True):
                with pytest.raises(InvalidInput, match="custom op Landmarks2TransformMatrix"):
                    _upload(fleet, name, data, _head_for(name))
                continue
            version = _upload(fleet, name, data, _head_for(name))
            _deploy_and_ask(fleet, agent, client, version, data, seed=i)
            answered.append(name)
    assert len(answered) == len(models) - 1, answered


@pytest.mark.slow
def test_detection_keypoints_segmentation_and_embedding_models_answer_alike_on_device_and_hub(
    one_agent: tuple[Fleet, AgentProc],
) -> None:
    """Models the tests build, one per task plus a two-input and a fixed-batch one: each head's
    answer is the same on the device and at the hub, and matches the model's numpy twin."""
    from tests.model_zoo import all_zoo_models

    fleet, agent = one_agent
    zoo = all_zoo_models()
    tasks: set[str] = set()
    app = create_app(fleet.hub, scheduler=False, fleet=False)
    with TestClient(app, headers=admin_headers(fleet.hub)) as client:
        for i, (name, model) in enumerate(sorted(zoo.items())):
            version = _upload(fleet, f"{name}.onnx", model.data, model.head)
            device, hub = _deploy_and_ask(fleet, agent, client, version, model.data, seed=100 + i)
            if version.task == "classification":  # the hub rounds its scores to 6 places
                assert [p["class"] for p in device] == [p["class"] for p in hub], name
            else:
                assert _without_tensors(device) == _without_tensors(hub), name
            tasks.add(version.task)
            if version.task == "embedding":
                runtime = load_runtime(model.data, "onnx")
                twin = model.reference(_feed(runtime, seed=100 + i))
                (vectors,) = twin.values()
                for got, want in zip(device, vectors, strict=True):
                    assert np.allclose(got["embedding"], want, atol=1e-5), name
    assert {"detection", "keypoints", "segmentation", "embedding"} <= tasks, tasks
