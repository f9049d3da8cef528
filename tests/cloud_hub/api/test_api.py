"""The REST API under /api/v1, driven over HTTP through the real app and registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from cloud_hub.registry.artifacts import sha256_hex
from cloud_hub.training.request import TrainRequest
from tests.conftest import admin_headers
from tests.waiting import wait_for


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub, scheduler=False), headers=admin_headers(hub)) as c:
        yield c


def blobs(hub: Hub) -> list[Path]:
    return [p for p in hub.settings.artifacts_dir.rglob("*") if p.is_file()]


def test_projects_and_models_by_id_and_name(client: TestClient) -> None:
    created = client.post("/api/v1/projects", json={"name": "digits", "description": "d"})
    assert created.status_code == 201
    pid = created.json()["id"]
    assert client.get(f"/api/v1/projects/{pid}").json()["name"] == "digits"
    assert client.get("/api/v1/projects/digits").json()["id"] == pid
    dup = client.post("/api/v1/projects", json={"name": "digits"})
    assert dup.status_code == 409
    assert dup.json()["detail"] == "project 'digits' already exists"
    missing = client.get("/api/v1/projects/nope")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    bad = client.post("/api/v1/projects", json={"name": "no spaces please"})
    assert bad.status_code == 422
    model = client.post("/api/v1/projects/digits/models", json={"name": "cnn"}).json()
    assert client.get(f"/api/v1/models/{model['id']}").json()["name"] == "cnn"
    assert client.get("/api/v1/projects/digits/models/cnn").json()["id"] == model["id"]
    again = client.post("/api/v1/projects/digits/models", json={"name": "cnn"})
    assert again.status_code == 409
    assert [p["name"] for p in client.get("/api/v1/projects").json()] == ["digits"]


@pytest.fixture
def onnx_model(hub: Hub) -> bytes:
    """A real ONNX file: train iris logreg in a scratch registry and take its artifact."""
    run = hub.pipeline().start(TrainRequest(project="scratch", dataset="iris", model_type="logreg"))
    version = hub.registry.get_version_by_id(run.version_id or 0)
    return hub.registry.artifact_blob(version.artifacts[0].sha256)


def test_upload_download_round_trip(client: TestClient, onnx_model: bytes) -> None:
    resp = client.post(
        "/api/v1/projects/ext/models/iris/versions",
        files={"file": ("iris.onnx", onnx_model, "application/octet-stream")},
        data={"labels": '["setosa", "versicolor", "virginica"]'},
    )
    assert resp.status_code == 201, resp.text
    version = resp.json()
    assert version["source"] == "uploaded" and version["number"] == 1
    art = version["artifacts"][0]
    assert (art["format"], art["precision"]) == ("onnx", "fp32")
    assert art["sha256"] == sha256_hex(onnx_model)
    assert art["signature"]["inputs"][0]["shape"][1] == 4
    download = client.get(art["download_url"])
    assert download.status_code == 200
    assert download.content == onnx_model
    assert download.headers["x-content-sha256"] == art["sha256"]
    by_version = client.get(f"/api/v1/versions/{version['id']}/artifacts/onnx/fp32")
    assert by_version.content == onnx_model
    wrong = client.get(f"/api/v1/versions/{version['id']}/artifacts/tflite/int8")
    assert wrong.status_code == 404 and "it has: onnx/fp32" in wrong.json()["detail"]
    latest = client.get("/api/v1/projects/ext/models/iris/versions/latest").json()
    assert latest["id"] == version["id"]
    assert latest["labels"] == ["setosa", "versicolor", "virginica"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.onnx", b"\x00\x01definitely not a model" * 10),
        ("empty.onnx", b""),
        ("fake.tflite", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40),
    ],
)
def test_garbage_uploads_are_refused_and_nothing_is_written(
    client: TestClient, hub: Hub, name: str, content: bytes
) -> None:
    before = blobs(hub)
    resp = client.post(
        "/api/v1/projects/ext/models/junk/versions",
        files={"file": (name, content, "application/octet-stream")},
    )
    assert resp.status_code == 422
    assert "model" in resp.json()["detail"].lower()
    assert blobs(hub) == before
    assert client.get("/api/v1/projects/ext").status_code == 404


def test_truncated_model_is_refused(client: TestClient, onnx_model: bytes) -> None:
    resp = client.post(
        "/api/v1/projects/ext/models/cut/versions",
        files={
            "file": ("cut.onnx", onnx_model[: len(onnx_model) // 2], "application/octet-stream")
        },
    )
    assert resp.status_code == 422
    assert "not an ONNX or TFLite model" in resp.json()["detail"]
    assert client.get("/api/v1/projects/ext").status_code == 404


def test_bad_download_refs(client: TestClient) -> None:
    assert client.get("/api/v1/artifacts/abc").status_code == 422
    assert client.get("/api/v1/artifacts/" + "0" * 64).status_code == 404
    assert client.get("/api/v1/versions/999").status_code == 404
    assert client.get("/api/v1/projects/p/models/m/versions/two").status_code == 422


def wait_run(client: TestClient, run_id: int, timeout: float = 120) -> dict[str, Any]:
    run: dict[str, Any] = wait_for(
        lambda: client.get(f"/api/v1/runs/{run_id}").json(),
        lambda r: r["status"] in ("succeeded", "failed"),
        timeout,
        interval=0.1,
        what=f"run {run_id}",
    )
    return run


def test_training_through_the_api(client: TestClient) -> None:
    resp = client.post(
        "/api/v1/runs", json={"project": "flowers", "dataset": "iris", "model_type": "mlp"}
    )
    assert resp.status_code == 202, resp.text
    run = wait_run(client, resp.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 8
    by_name = client.get(f"/api/v1/runs/{run['name']}").json()
    assert by_name["id"] == run["id"]
    version = client.get(f"/api/v1/versions/{run['version_id']}").json()
    assert {(a["format"], a["precision"]) for a in version["artifacts"]} == {
        ("onnx", "fp32"),
        ("onnx", "int8"),
    }
    assert version["report"]["passed"] is True
    listed = client.get("/api/v1/runs", params={"project": "flowers"}).json()
    assert [r["id"] for r in listed] == [run["id"]]
    rerun = client.post(f"/api/v1/runs/{run['id']}/rerun", json={"from_step": "quantize"})
    assert rerun.status_code == 201
    assert rerun.json()["parent_run_id"] == run["id"]


def test_bad_training_requests(client: TestClient, tmp_path: Path) -> None:
    unknown = client.post(
        "/api/v1/runs", json={"project": "p", "dataset": "mnist", "model_type": "mlp"}
    )
    assert unknown.status_code == 422
    assert "unknown dataset 'mnist'" in unknown.text
    kind = client.post(
        "/api/v1/runs", json={"project": "p", "dataset": "iris", "model_type": "svm"}
    )
    assert kind.status_code == 422 and "unknown model type 'svm'" in kind.text
    csv = tmp_path / "hub" / "datasets" / "x.csv"  # inside the hub's data roots
    csv.parent.mkdir(parents=True)
    csv.write_text("a,b\n1,2\n")
    missing = client.post(
        "/api/v1/runs",
        json={
            "project": "p",
            "dataset": "csv",
            "model_type": "mlp",
            "path": str(csv),
            "label_column": "label",
        },
    )
    assert missing.status_code == 422
    assert missing.json()["detail"].endswith(
        "has no label column 'label' (its header has 2 columns)"
    )
    assert client.get("/api/v1/runs").json() == []
    assert client.get("/api/v1/projects").json() == []


def test_schedules_api(client: TestClient) -> None:
    body = {
        "name": "nightly",
        "cron": "0 3 * * *",
        "request": {"project": "p", "dataset": "iris", "model_type": "logreg"},
    }
    created = client.post("/api/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["next_run_at"].endswith("03:00:00.000000Z")
    assert client.post("/api/v1/schedules", json=body).status_code == 409
    bad = client.post("/api/v1/schedules", json={**body, "name": "bad", "cron": "whenever"})
    assert bad.status_code == 422 and "invalid cron expression" in bad.json()["detail"]
    assert [s["name"] for s in client.get("/api/v1/schedules").json()] == ["nightly"]
    assert client.delete("/api/v1/schedules/nightly").status_code == 204
    assert client.get("/api/v1/schedules/nightly").status_code == 404


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/projects/{project}/models/{model}/versions" in paths
