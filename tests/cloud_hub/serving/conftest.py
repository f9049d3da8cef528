"""Serving fixtures: one hub per session with the digits models a user gets from
`edgepilot train --project digits --dataset digits --model mlp|logreg` (ONNX only, for speed),
and a REST client whose app runs the serving engine."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.training.request import TrainRequest
from tests.conftest import admin_headers
from tests.waiting import wait_for  # noqa: F401  (re-exported for the serving tests)

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "endpoints"


@pytest.fixture(scope="session")
def serving_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data_dir = tmp_path_factory.mktemp("serving-hub")
    # REST callers name files inside the data roots: the examples' (relative to the repository)
    # and the tests' own temporary files
    roots = [REPO, tmp_path_factory.getbasetemp()]
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False, data_roots=roots))
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
    from edge_agent.core.runtimes import load_runtime

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
    with TestClient(
        create_app(serving_hub, scheduler=False, fleet=False), headers=admin_headers(serving_hub)
    ) as c:
        yield c
        for endpoint in c.get("/api/v1/endpoints").json():
            c.delete(f"/api/v1/endpoints/{endpoint['name']}")


def reference_labels(hub: Hub, ref: str, rows: np.ndarray) -> list[str]:
    """What the version's runtime says for model-ready rows, called directly."""
    from edge_agent.core.runtimes import load_runtime

    version = hub.registry.resolve_version(ref)
    runtime = load_runtime(hub.registry.artifact_blob(version.artifacts[0].sha256), "onnx")
    return [version.labels[i] for i in runtime.predict(rows).argmax(axis=1)]


def wait_job(client: TestClient, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET /api/v1/jobs/{id} until the job is final."""

    def get() -> dict[str, Any]:
        resp = client.get(f"/api/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    final = ("succeeded", "failed", "cancelled")
    out: dict[str, Any] = wait_for(get, lambda j: j["state"] in final, timeout, what=job_id)
    return out


@contextmanager
def hub_app(
    data_dir: Path, *, keep: bool = False, **settings: Any
) -> Iterator[tuple[Hub, TestClient]]:
    """A second hub (own connections, own settings) on a data directory, with its app running:
    a hub restart is leaving this and entering it again (`keep`: leave its endpoints stored)."""
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False, **settings))
    try:
        with TestClient(
            create_app(hub, scheduler=False, fleet=False), headers=admin_headers(hub)
        ) as c:
            try:
                yield hub, c
            finally:
                for endpoint in [] if keep else c.get("/api/v1/endpoints").json():
                    c.delete(f"/api/v1/endpoints/{endpoint['name']}")
    finally:
        hub.close()


class Subscriber:
    """A real MQTT client subscribed to `topic`, collecting (topic, JSON payload) pairs."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

        def on_connect(c: Any, *_: Any) -> None:
            c.subscribe(topic, qos=1)

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, json.loads(msg.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK from the broker"

    def wait(self, topic: str, timeout: float = 10.0) -> dict[str, Any]:
        def get() -> list[dict[str, Any]]:
            with self._lock:
                return [m for t, m in self.messages if t == topic]

        found: list[dict[str, Any]] = wait_for(get, bool, timeout, what=f"a message on {topic}")
        return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
