"""Serving fixtures: one hub per session with the digits models a user gets from
`edgepilot train --project digits --dataset digits --model mlp|logreg` (ONNX only, for speed),
and a REST client whose app runs the serving engine."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from cloud_hub.registry import NewArtifact
from cloud_hub.settings import HubSettings
from cloud_hub.training.request import TrainRequest

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "endpoints"


@pytest.fixture(scope="session")
def serving_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data_dir = tmp_path_factory.mktemp("serving-hub")
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    for model in ("mlp", "logreg"):
        run = hub.pipeline().start(
            TrainRequest(
                project="digits",
                dataset="digits",
                model_type=model,
                formats=["onnx"],
                quantize=False,
            )
        )
        assert run.status == "succeeded", run.error
    _register_stacker(hub)
    yield hub
    hub.close()


def _register_stacker(hub: Hub) -> None:
    """digits/digits-stack:1, a model that reads the MLP's 10 class scores (a serial chain B)."""
    from sklearn.linear_model import LogisticRegression

    from converters import sklearn_to_onnx
    from edge_agent.runtimes import load_runtime

    mlp = hub.registry.resolve_version("digits/digits-mlp:1")
    runtime = load_runtime(hub.registry.artifact_blob(mlp.artifacts[0].sha256), "onnx")
    x, y = digits_rows()
    stacker = LogisticRegression(max_iter=500).fit(runtime.predict(x), y)
    hub.registry.register_version(
        "digits",
        "digits-stack",
        artifacts=[NewArtifact("onnx", "fp32", sklearn_to_onnx(stacker, 10))],
        source="uploaded",
        labels=[str(i) for i in range(10)],
        preprocessing={"input_kind": "tabular", "layout": "NF"},
    )


def digits_rows(raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Digits as model-ready rows (64 values in [0, 1]), or raw 8-bit pixel rows."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.data * 255.0 / 16.0, 0, 255)
    x = pixels if raw else pixels / 255.0
    return x.astype(np.float32), bunch.target


def png_b64(index: int) -> str:
    x, _ = digits_rows(raw=True)
    ok, buf = cv2.imencode(".png", x[index].reshape(8, 8).astype(np.uint8))
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def example(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return spec


@pytest.fixture
def client(serving_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(serving_hub, scheduler=False, fleet=False)) as c:
        yield c
        for endpoint in c.get("/api/v1/endpoints").json():
            c.delete(f"/api/v1/endpoints/{endpoint['name']}")


def reference_labels(hub: Hub, ref: str, rows: np.ndarray) -> list[str]:
    """What the version's runtime says for model-ready rows, called directly."""
    from edge_agent.runtimes import load_runtime

    version = hub.registry.resolve_version(ref)
    runtime = load_runtime(hub.registry.artifact_blob(version.artifacts[0].sha256), "onnx")
    return [version.labels[i] for i in runtime.predict(rows).argmax(axis=1)]
