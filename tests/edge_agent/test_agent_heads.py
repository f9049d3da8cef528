"""Any model at a real agent process: the head's structured answer and every raw output.

Models are delivered by a stand-in hub over Mosquitto (signed refs, verified transfer) to a real
`edgepilot-agent run`. Raw tensors the agent returns are compared with a direct run of the same
runtime on the same input (they must be equal, bit for bit); head results with a decoding the
test does itself.

- a MediaPipe hand-landmark model (LiteRT, 4 outputs, fixed batch 1) fed a PNG: 21 points in
  the PNG's pixels, and its 4 raw outputs;
- onnxruntime's own mul_1.onnx (fixed [3, 2]): 1 row and 4 rows, run in padded chunks; a [1, 5]
  input is refused with 422 naming the shape it takes; a head naming a missing output fails;
- a two-input model (tests/model_zoo.py) fed by name, over HTTP and the MQTT infer topic;
  mismatched feeds are 422;
- a detection model behind a letterbox: boxes come back in the posted PNG's pixels;
- a segmentation model: class counts, and on request its mask as a PNG.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edge_agent.core.preprocess import (
    PreprocessingSpec,
    decode_image,
    infer_preprocessing,
    prepare_image,
)
from edge_agent.core.runtimes import load_runtime
from edge_agent.core.wire import InferRequest, InferResult, ModelRef
from tests.agent_processes import AgentProc
from tests.edge_agent.conftest import WireHub
from tests.model_zoo import multi_input_model, segmentation_model
from tests.third_party import ROOT, mediapipe_model, onnxruntime_model
from tests.waiting import wait_until

JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}
BIG_CHUNKS = {"chunk_size": 256 * 1024, "window": 8, "timeout_s": 5.0}


def _ref(hub: WireHub, data: bytes, version_id: int, fmt: str = "onnx", **fields: Any) -> ModelRef:
    sha = hashlib.sha256(data).hexdigest()
    fields.setdefault("labels", [])
    signature = hub.signer.sign_model(version_id, sha, len(data), fmt)
    return hub.ref(data, version_id, format=fmt, signature=signature, **fields)


def _deploy(hub: WireHub, ref: ModelRef, data: bytes, deployment_id: int) -> None:
    hub.deploy(ref, data, deployment_id=deployment_id)
    hub.wait_report(deployment_id, "active", timeout=60)


def _post(agent: AgentProc, doc: dict[str, Any], query: str = "") -> tuple[int, dict[str, Any]]:
    return agent.request("POST", "/v1/predict" + query, json.dumps(doc).encode(), JSON)


def _tensor(doc: dict[str, Any]) -> np.ndarray:
    """A raw output from the agent's JSON, in its own dtype and shape."""
    value = np.asarray(doc["data"], dtype=np.dtype(doc["dtype"]))
    assert list(value.shape) == doc["shape"]
    return value


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _same(got: dict[str, dict[str, Any]], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        mine = _tensor(got[name])
        assert mine.dtype == value.dtype, name
        assert np.array_equal(mine, value), name


# -- models the tests build -------------------------------------------------------------------
def _onnx(graph: Any) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


BOXES = np.asarray([[[0.25, 0.5, 0.75, 0.75], [0.0, 0.0, 0.1, 0.1]]], np.float32)
SCORES = np.asarray([[0.9, 0.2]], np.float32)


def fixed_box_detector() -> bytes:
    """A [1, 64, 64, 3] image in; two fixed boxes (normalised xyxy) and their scores out (the
    image's mean times 0 is added, so the outputs depend on the input as a real model's do)."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    boxes = numpy_helper.from_array(BOXES, "box_values")
    scores = numpy_helper.from_array(SCORES, "score_values")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["box_values", "nothing"], ["boxes"]),
            helper.make_node("Add", ["score_values", "nothing"], ["scores"]),
        ],
        "fixed_boxes",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 64, 64, 3])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2]),
        ],
        [zero, boxes, scores],
    )
    return _onnx(graph)


# -- tests ------------------------------------------------------------------------------------
HAND_SPEC = {
    "input_kind": "image",
    "layout": "NHWC",
    "size": [224, 224],
    "color": "rgb",
    "scale": 1 / 255,
}
HAND_HEAD = json.loads((ROOT / "examples" / "heads" / "hand_landmark_full.json").read_text())


def test_a_hand_landmark_model_answers_with_21_points_and_all_its_outputs(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str
) -> None:
    path = mediapipe_model("hand_landmark_full.tflite")
    data = path.read_bytes()
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto, transfer=BIG_CHUNKS)
    # no preprocessing spec: the agent takes the one the signature implies (an RGB 224x224
    # image, scaled to [0, 1]), the same as HAND_SPEC
    ref = _ref(hub, data, 1, "tflite", head=HAND_HEAD)
    inferred = infer_preprocessing(load_runtime(path, "tflite").inputs)
    assert inferred is not None and inferred == PreprocessingSpec.model_validate(HAND_SPEC)
    _deploy(hub, ref, data, 1)
    assert agent.status()["active_task"] == "keypoints"

    rng = np.random.default_rng(7)  # a 320x240 colour image: not the model's input size
    image = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (31, 31), 8)
    png = _png(image)
    code, doc = agent.request("POST", "/v1/predict?outputs=all", png, PNG)
    assert code == 200, doc
    x, geometry = prepare_image(decode_image(png, HAND_SPEC), HAND_SPEC)
    direct = load_runtime(path, "tflite").run(x)
    _same(doc["outputs"], direct)  # all 4 outputs, exactly the runtime's values

    (prediction,) = doc["predictions"]
    assert prediction["task"] == "keypoints"
    (instance,) = prediction["instances"]
    points = np.asarray(instance["points"], np.float64)
    assert points.shape[0] == 21
    # the model's landmarks are in its 224x224 input pixels: the agent maps them to the PNG's
    raw = direct["Identity"].reshape(21, 3).astype(np.float64)
    expected_x = raw[:, 0] * 320 / 224
    expected_y = raw[:, 1] * 240 / 224
    assert (geometry.image_width, geometry.image_height) == (320, 240)
    np.testing.assert_allclose(points[:, 0], expected_x, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(points[:, 1], expected_y, rtol=1e-5, atol=1e-3)

    # the same tensor as JSON numbers: the same outputs; without asking, no outputs at all
    code, doc = _post(agent, {"inputs": x.tolist(), "outputs": True})
    assert code == 200, doc
    _same(doc["outputs"], direct)
    code, doc = _post(agent, {"inputs": x.tolist()})
    assert code == 200 and "outputs" not in doc

    def logged() -> list[dict[str, Any]]:
        with hub.lock:
            return [r for r in hub.logs.values() if r["source"] == "http"]

    logs = wait_until(lambda: len(logged()) >= 3 and logged(), 10, "the requests' logs")
    assert all(r["output"]["task"] == "keypoints" for r in logs)
    assert len({r["outputs_digest"] for r in logs}) == 1  # the same tensors each time


def test_a_fixed_batch_model_takes_any_rows_and_refuses_other_shapes(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str
) -> None:
    path = onnxruntime_model("mul_1.onnx")  # X [3, 2] -> Y [3, 2]
    data = path.read_bytes()
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    _deploy(hub, _ref(hub, data, 1, head={"task": "raw"}), data, 1)
    runtime = load_runtime(path, "onnx")
    x4 = np.asarray([[1.5, -2.0], [3.25, 4.0], [0.1, 0.2], [-7.0, 1e-3]], np.float32)

    def direct(rows: int) -> np.ndarray:
        """What the model gives, 3 rows at a time, the last chunk padded by hand."""
        parts = []
        for start in range(0, rows, 3):
            chunk = x4[start : min(start + 3, rows)]
            full = np.concatenate([chunk, np.repeat(chunk[-1:], 3 - len(chunk), axis=0)])
            parts.append(runtime.run(full)["Y"][: len(chunk)])
        return np.concatenate(parts)

    for rows in (1, 4):
        code, doc = _post(agent, {"inputs": x4[:rows].tolist()}, "?outputs=all")
        assert code == 200, doc
        assert doc["predictions"] == [{"task": "raw"}] * rows
        got = _tensor(doc["outputs"]["Y"])
        assert got.shape == (rows, 2) and np.array_equal(got, direct(rows))
    code, doc = _post(agent, {"inputs": [[1.0, 2.0, 3.0, 4.0, 5.0]]})
    assert code == 422, doc
    assert "[3, 2]" in doc["detail"] and "(1, 5)" in doc["detail"]

    # a head that does not fit the signature: the version fails, the model keeps serving
    bad = _ref(hub, data, 2, head={"task": "regression", "output": "nope"})
    hub.deploy(bad, data, deployment_id=2)
    report = hub.wait_report(2, "failed", timeout=30)
    assert report.reason and "head.output" in report.reason and "nope" in report.reason
    assert agent.status()["active_version"] == 1
    assert _post(agent, {"inputs": x4[:1].tolist()})[0] == 200


def test_a_two_input_model_is_fed_by_name_over_http_and_mqtt(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str
) -> None:
    zoo = multi_input_model()  # a, b -> sum, product
    data = zoo.data
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    head = {"task": "regression", "output": "sum", "names": ["x", "y", "z"]}
    _deploy(hub, _ref(hub, data, 1, head=head), data, 1)
    a = np.asarray([[1.0, 2.0, 3.0], [0.5, -1.0, 1e-7]], np.float32)
    b = np.asarray([[0.25, 0.125, -3.0], [2.0, 1e30, 3.0]], np.float32)
    expected = zoo.reference({"a": a, "b": b})
    code, doc = _post(agent, {"inputs": {"a": a.tolist(), "b": b.tolist()}, "outputs": True})
    assert code == 200, doc
    _same(doc["outputs"], expected)
    values = [p["values"] for p in doc["predictions"]]
    assert np.array_equal(np.asarray(values, np.float32), a + b)

    cases = [
        ({"a": a.tolist()}, "missing input(s) b"),
        ({"a": a.tolist(), "b": b.tolist(), "c": a.tolist()}, "unknown input(s) c"),
        ({"a": a.tolist(), "b": b[:1].tolist()}, "different numbers of rows"),
        (a.tolist(), "feed each by name"),
        ({"a": a.tolist(), "b": [["x", "y", "z"]] * 2}, "numbers"),
    ]
    for inputs, words in cases:
        code, doc = _post(agent, {"inputs": inputs})
        assert code == 422, (inputs, doc)
        assert words in doc["detail"], (words, doc)

    # the MQTT infer topic: the same answer, with the raw outputs when asked
    request = InferRequest(
        request_id="two-1", inputs={"a": a.tolist(), "b": b.tolist()}, outputs=True
    )
    hub.client.publish(hub.t("infer"), request.dumps())

    def answered(request_id: str) -> InferResult | None:
        with hub.lock:
            return next((r for r in hub.results if r.request_id == request_id), None)

    result = wait_until(lambda: answered("two-1"), 10, "the MQTT result")
    assert result.ok and result.model_version == 1, result
    assert result.outputs is not None
    _same(result.outputs, expected)
    assert np.array_equal(np.asarray([p["values"] for p in result.predictions], np.float32), a + b)
    bad = InferRequest(request_id="two-2", inputs={"a": a.tolist()})
    hub.client.publish(hub.t("infer"), bad.dumps())
    refused = wait_until(lambda: answered("two-2"), 10, "the refused MQTT result")
    assert not refused.ok and refused.error and "missing input(s) b" in refused.error


def test_a_png_posted_to_a_detection_model_gets_boxes_in_its_pixels(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, tmp_path: Path
) -> None:
    data = fixed_box_detector()
    spec = {
        "input_kind": "image",
        "size": [64, 64],
        "color": "rgb",
        "scale": 1 / 255,
        "resize": "letterbox",
    }
    head = {
        "task": "detection",
        "boxes": "boxes",
        "scores": "scores",
        "box_format": "xyxy",
        "normalized": True,
        "score_threshold": 0.5,
        "labels": ["hand"],
    }
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    _deploy(hub, _ref(hub, data, 1, preprocessing=spec, head=head), data, 1)
    png = _png(np.full((100, 200, 3), 90, np.uint8))  # 200 wide, 100 high: padded top and bottom
    code, doc = agent.request("POST", "/v1/predict", png, PNG)
    assert code == 200, doc
    (prediction,) = doc["predictions"]
    assert prediction["task"] == "detection"
    (box,) = prediction["detections"]  # the second box scores 0.2, under the threshold
    # 200x100 letterboxed into 64x64: scale 0.32, 16 pixels of padding above. The box
    # [0.25, 0.5, 0.75, 0.75] of the input is [16, 32, 48, 48] there, [50, 50, 150, 100] here.
    np.testing.assert_allclose(box["box"], [50.0, 50.0, 150.0, 100.0], atol=1e-3)
    assert box["score"] == np.float32(0.9) and box["label"] == "hand"


def test_a_segmentation_model_counts_classes_and_gives_its_mask_on_request(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str
) -> None:
    zoo = segmentation_model()  # NCHW logits of a fixed 1x1 convolution, 3 classes
    assert zoo.head is not None and zoo.preprocessing is not None
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    ref = _ref(hub, zoo.data, 1, head=zoo.head, preprocessing=zoo.preprocessing)
    _deploy(hub, ref, zoo.data, 1)
    image = np.zeros((16, 16, 3), np.uint8)  # BGR: a red left half, a green right half
    image[:, :8, 2] = 255
    image[:, 8:, 1] = 255
    png = _png(image)
    x, _ = prepare_image(decode_image(png, zoo.preprocessing), zoo.preprocessing)
    expected = zoo.reference({"image": x})["logits"][0].argmax(axis=0)  # [16, 16] class ids

    code, doc = agent.request("POST", "/v1/predict", png, PNG)
    assert code == 200, doc
    (plain,) = doc["predictions"]
    assert plain["task"] == "segmentation" and "mask_png" not in plain
    counts = {c["label"]: c["pixels"] for c in plain["classes"]}
    labels = zoo.head["labels"]
    want = {
        labels[c]: int(n) for c, n in zip(*np.unique(expected, return_counts=True), strict=True)
    }
    assert {k: v for k, v in counts.items() if v} == want
    code, doc = agent.request("POST", "/v1/predict?mask=png", png, PNG)
    assert code == 200, doc
    mask_png = base64.b64decode(doc["predictions"][0]["mask_png"])
    mask = cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.shape == (16, 16) and np.array_equal(mask, expected)
