"""The agent's local HTTP API and OpenCV source, on a real agent process."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from converters import sklearn_to_onnx
from tests.agent_processes import AgentProc
from tests.edge_agent.conftest import IrisModels
from tests.waiting import wait_until

JSON = {"Content-Type": "application/json"}
DIGITS_SPEC = {
    "input_kind": "image",
    "layout": "NF",
    "size": [8, 8],
    "color": "gray",
    "scale": 1 / 255,
    "flatten": True,
}


@pytest.fixture(scope="module")
def digits_model() -> tuple[Any, bytes, np.ndarray]:
    """A classifier on 8x8 digits as 0..255 pixels scaled to [0, 1], flattened (as the hub)."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    clf = LogisticRegression(max_iter=1000).fit(X, data.target)
    return clf, sklearn_to_onnx(clf, 64), images


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def test_bad_http_input_is_refused_and_the_agent_keeps_serving(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto, http={"max_body_bytes": 4096})
    code, doc = agent.predict([[5.1, 3.5, 1.4, 0.2]])
    assert code == 503 and doc["error"] == "no active model"
    hub.deploy(hub.ref(iris_models.a, 1), iris_models.a, deployment_id=1)
    hub.wait_report(1, "active")

    def post(body: bytes, headers: dict[str, str] = JSON) -> tuple[int, dict[str, Any]]:
        return agent.request("POST", "/v1/predict", body, headers)

    cases: list[tuple[tuple[int, dict[str, Any]], int, str]] = [
        (agent.predict([[1.0, 2.0]]), 422, "shape"),  # wrong width
        (agent.predict([1.0, 2.0, 3.0, 4.0]), 422, "shape"),  # not a batch
        (agent.predict([["a", "b", "c", "d"]]), 422, "numbers"),  # strings
        (agent.predict([[True, False, True, False]]), 422, "numbers"),  # booleans
        (agent.predict([[1.0, 2.0], [1.0]]), 422, "ragged"),
        (agent.predict([]), 422, "non-empty"),
        (post(b'{"inputs": [[NaN, 1, 2, 3]]}'), 422, "NaN"),
        (post(b"{not json"), 400, "Expecting"),
        (post(b'{"something": 1}'), 400, "inputs"),
        (post(b"\x89PNG not really", {"Content-Type": "image/png"}), 422, "image"),
        (post(json.dumps({"image_b64": "!!"}).encode()), 422, "base64"),
        (post(b"x", {"Content-Type": "text/csv"}), 415, "text/csv"),
        (post(b"[" * 5000), 413, "limit"),
        (agent.request("GET", "/v2/nothing"), 404, "/v2/nothing"),
        (agent.request("GET", "/v1/predict"), 405, "POST"),
    ]
    for (code, doc), expected, word in cases:
        assert code == expected, (expected, word, doc)
        assert set(doc) == {"error", "detail"} and word in doc["detail"], (word, doc)
    # the iris model takes no images: a PNG is refused with the reason
    code, doc = post(_png(np.zeros((8, 8), np.uint8)), {"Content-Type": "image/png"})
    assert code == 422 and "takes no images" in doc["detail"]
    # a body announced bigger than the limit is refused before it is read
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
    code, doc = agent.predict(iris_models.X[:2].tolist())
    assert code == 200 and len(doc["predictions"]) == 2
    assert agent.status()["inference_count"] == 2
    code, doc = agent.get("/v1/health")
    assert code == 200 and doc["status"] == "ok" and doc["active_version"] == 1


def test_images_over_http_and_from_an_opencv_folder_source(
    make_hub: Any,
    make_agent: Any,
    mosquitto: Any,
    device_id: str,
    tmp_path: Path,
    digits_model: tuple[Any, bytes, np.ndarray],
) -> None:
    clf, model, images = digits_model
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):  # bigger and in colour: the source resizes and converts like the hub
        big = cv2.resize(images[i], (32, 32), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(
        device_id, mosquitto, source={"uri": str(folder), "fps": 20, "name": "door-cam"}
    )
    ref = hub.ref(model, 1, preprocessing=DIGITS_SPEC, labels=[str(d) for d in range(10)])
    hub.deploy(ref, model, deployment_id=1)
    hub.wait_report(1, "active")
    expected = clf.predict(images[:5].reshape(5, -1).astype(np.float32) / 255.0).tolist()
    for i in range(5):
        code, doc = agent.request(
            "POST", "/v1/predict", _png(images[i]), {"Content-Type": "image/png"}
        )
        assert code == 200, doc
        assert doc["predictions"][0]["class"] == expected[i]
        assert doc["predictions"][0]["label"] == str(expected[i])
    body = json.dumps({"image_b64": base64.b64encode(_png(images[3])).decode()}).encode()
    code, doc = agent.request("POST", "/v1/predict", body, JSON)
    assert code == 200 and doc["predictions"][0]["class"] == expected[3]

    def from_source() -> list[dict[str, Any]]:
        with hub.lock:
            return [r for r in hub.logs.values() if r["source"] == "door-cam"]

    wait_until(lambda: len(from_source()) >= 6, 10, "logs from the source")
    logs = from_source()
    outputs = {tuple(np.round(r["output"]["scores"], 4)) for r in logs}
    assert len(outputs) == 3  # three frames, looping
    http_logs = [r for r in hub.logs.values() if r["source"] == "http"]
    assert len(http_logs) >= 1


def test_frame_source_reads_a_video_file_and_loops(tmp_path: Path) -> None:
    """In-process: a video file is read frame by frame, prepared with the spec, and looped."""
    from edge_agent.core.preprocess import Geometry
    from edge_agent.source import FrameSource

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
    assert writer.isOpened()
    for value in (0, 128, 255):
        writer.write(np.full((16, 16, 3), value, np.uint8))
    writer.release()
    seen: list[tuple[np.ndarray, str]] = []
    geometries: list[Geometry] = []

    def infer(x: np.ndarray, name: str, geometry: Geometry) -> None:
        seen.append((x, name))
        geometries.append(geometry)

    source = FrameSource(str(video), 100, infer, lambda: DIGITS_SPEC, name="clip")
    source.start()
    try:
        wait_until(lambda: len(seen) >= 7, 10, "frames from the video, looping")
    finally:
        source.stop()
    x, name = seen[0]
    assert name == "clip" and x.shape == (1, 64) and x.dtype == np.float32
    # each frame's geometry: the 16x16 frame resized to the model's 8x8 (for boxes and points)
    first = geometries[0]
    assert (first.image_width, first.image_height, first.input_width) == (16, 16, 8)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    levels = [round(float(x.mean()), 1) for x, _ in seen[:7]]
    assert levels[:3] == levels[3:6], levels  # the clip played again


def test_a_token_guards_the_local_api_but_not_its_health(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    token = "lan-secret-0123456789"
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto, http={"token": token})
    hub.deploy(hub.ref(iris_models.a, 1), iris_models.a, deployment_id=1)
    hub.wait_report(1, "active")
    body = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    good = {**JSON, "Authorization": f"Bearer {token}"}
    for headers in (JSON, {**JSON, "Authorization": "Bearer wrong-token-0000000"}):
        code, doc = agent.request("POST", "/v1/predict", body, headers)
        assert code == 401 and doc["error"] == "unauthorized"
        assert token not in json.dumps(doc)
        assert agent.request("GET", "/v1/status", None, headers)[0] == 401
    code, doc = agent.request("POST", "/v1/predict", body, good)
    assert code == 200 and doc["predictions"][0]["class"] == 0
    assert agent.request("GET", "/v1/status", None, good)[0] == 200
    assert agent.get("/v1/health")[0] == 200  # liveness probes need no token
