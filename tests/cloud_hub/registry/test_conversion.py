"""`edgepilot quantize` and `edgepilot convert` on registry versions and on model files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from cloud_hub.training.request import TrainRequest
from tests.conftest import admin_headers, run_cli

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def digits_flat() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


@pytest.fixture
def mlp_onnx(tmp_path: Path, hub: Hub) -> Path:
    """A digits MLP as a plain .onnx file, as a user would bring one (inputs in [0, 1])."""
    run = hub.pipeline().start(
        TrainRequest(project="scratch", dataset="digits", model_type="mlp", quantize=False)
    )
    version = hub.registry.get_version_by_id(run.version_id or 0)
    path = tmp_path / "digits-mlp.onnx"
    path.write_bytes(hub.registry.artifact_blob(version.artifacts[0].sha256))
    return path


def test_quantize_an_onnx_file(cli_env: dict[str, str], mlp_onnx: Path) -> None:
    done = run_cli(
        [
            "quantize",
            str(mlp_onnx),
            "--project",
            "ext",
            "--model",
            "mlp",
            "--dataset",
            "digits",
            "--scale",
            "0.00392156862745098",
            "--method",
            "static",
            "--json",
        ],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    assert version["number"] == 2 and version["source"] == "converted"
    arts = {a["precision"]: a for a in version["artifacts"]}
    assert arts["int8"]["method"] == "static"
    assert arts["int8"]["size"] < arts["fp32"]["size"]
    assert arts["int8"]["metrics"]["top1_agreement"] >= 0.99
    assert arts["fp32"]["metrics"]["accuracy"] > 0.9
    parent = json.loads(run_cli(["models", "show", "ext/mlp:1", "--json"], cli_env).stdout)
    assert version["parent_id"] == parent["id"] and parent["source"] == "uploaded"


def test_quantize_refuses_what_it_cannot_do(cli_env: dict[str, str], mlp_onnx: Path) -> None:
    no_data = run_cli(["quantize", str(mlp_onnx), "--project", "ext", "--model", "m"], cli_env)
    assert no_data.returncode == 2 and "give data to calibrate" in no_data.stderr
    logreg = run_cli(["train", "--project", "p", "--dataset", "iris", "--model", "logreg"], cli_env)
    assert logreg.returncode == 0
    refused = run_cli(["quantize", "p/iris-logreg:1", "--dataset", "iris"], cli_env)
    assert refused.returncode == 2 and "cannot quantize p/iris-logreg:1" in refused.stderr
    uploaded_convert = run_cli(["convert", "p/iris-logreg:1", "--to", "tflite"], cli_env)
    assert uploaded_convert.returncode == 2
    assert "cannot be converted to tflite" in uploaded_convert.stderr
    runs = json.loads(run_cli(["runs", "list", "--json"], cli_env).stdout)
    assert len(runs) == 1  # the refused conversion recorded no run


def test_convert_a_keras_file_to_onnx_and_tflite(cli_env: dict[str, str], tmp_path: Path) -> None:
    import keras

    X, y = digits_flat()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(X, y, epochs=10, verbose=0)
    path = tmp_path / "digits.keras"
    model.save(path)
    done = run_cli(
        [
            "convert",
            str(path),
            "--project",
            "ext",
            "--model",
            "keras-mlp",
            "--dataset",
            "digits",
            "--scale",
            "0.00392156862745098",
            "--json",
        ],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    kinds = {(a["format"], a["precision"]) for a in version["artifacts"]}
    assert kinds == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")}
    assert version["report"]["passed"] is True
    assert version["report"]["reference"]["accuracy"] > 0.9
    garbage = tmp_path / "broken.keras"
    garbage.write_bytes(b"nope")
    bad = run_cli(
        ["convert", str(garbage), "--project", "ext", "--model", "x", "--dataset", "digits"],
        cli_env,
    )
    assert bad.returncode == 2 and "not a loadable Keras model" in bad.stderr


def test_convert_a_torch_export_program(cli_env: dict[str, str], tmp_path: Path) -> None:
    import torch

    X, y = digits_flat()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10), torch.nn.Softmax(dim=1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(net(xt) + 1e-9), yt)
        loss.backward()
        opt.step()
    fixed = tmp_path / "fixed-batch.pt2"
    torch.export.save(torch.export.export(net.eval(), (xt[:4],)), str(fixed))
    refused = run_cli(
        [
            "convert",
            str(fixed),
            "--project",
            "ext",
            "--model",
            "torch-mlp",
            "--dataset",
            "digits",
            "--scale",
            "0.00392156862745098",
        ],
        cli_env,
    )
    assert refused.returncode == 2 and "export it with a dynamic batch" in refused.stderr
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (xt[:4],), dynamic_shapes=({0: batch},))
    path = tmp_path / "digits.pt2"
    torch.export.save(program, str(path))
    done = run_cli(
        [
            "convert",
            str(path),
            "--project",
            "ext",
            "--model",
            "torch-mlp",
            "--dataset",
            "digits",
            "--scale",
            "0.00392156862745098",
            "--json",
        ],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    arts = {(a["format"], a["precision"]): a for a in version["artifacts"]}
    assert set(arts) == {("onnx", "fp32"), ("onnx", "int8")}
    assert arts["onnx", "fp32"]["metrics"]["top1_agreement"] == 1.0
    assert arts["onnx", "fp32"]["metrics"]["max_abs_diff"] < 1e-4
    assert arts["onnx", "fp32"]["metrics"]["accuracy"] > 0.9


def test_quantize_through_the_api(hub: Hub) -> None:
    run = hub.pipeline().start(
        TrainRequest(project="digits", dataset="digits", model_type="mlp", quantize=False)
    )
    with TestClient(create_app(hub, scheduler=False), headers=admin_headers(hub)) as client:
        resp = client.post(
            f"/api/v1/versions/{run.version_id}/quantize",
            json={"dataset": "digits", "method": "dynamic"},
        )
        assert resp.status_code == 201, resp.text
        version = resp.json()
        assert version["parent_id"] == run.version_id
        int8 = [a for a in version["artifacts"] if a["precision"] == "int8"][0]
        assert int8["method"] == "dynamic"
        bad = client.post(f"/api/v1/versions/{run.version_id}/quantize", json={"dataset": "nope"})
        assert bad.status_code == 422 and "unknown dataset 'nope'" in bad.json()["detail"]


def test_quantizing_an_unquantizable_file_stores_nothing(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    from converters import sklearn_to_onnx

    iris = load_iris()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(iris.data, iris.target)
    path = tmp_path / "forest.onnx"
    path.write_bytes(sklearn_to_onnx(forest, 4))
    refused = run_cli(
        ["quantize", str(path), "--project", "ext", "--model", "forest", "--dataset", "iris"],
        cli_env,
    )
    assert refused.returncode == 2 and "cannot quantize forest.onnx" in refused.stderr
    assert json.loads(run_cli(["models", "list", "--json"], cli_env).stdout) == []
