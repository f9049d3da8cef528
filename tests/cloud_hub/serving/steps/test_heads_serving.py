"""The hub's serving engine on real models of every kind: a fixed batch, several inputs, a
detector with its head (in the model step and as a `detect` step), embeddings; raw tensors
compared with a direct run of the runtime, heads with a decoding done here; what is refused at
create time and per request; and the prediction log's records of head results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import version_labels
from cloud_hub.registry.uploads import register_upload
from edge_agent.core.digests import outputs_digest
from edge_agent.core.runtimes import load_runtime
from tests.conftest import admin_headers
from tests.model_zoo import box_detector, embedding_model, multi_input_model
from tests.third_party import onnxruntime_model
from tests.waiting import wait_until

API = "/api/v1/endpoints"


@pytest.fixture(scope="module")
def zoo_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = Hub.open(
        HubSettings(
            data_dir=tmp_path_factory.mktemp("heads-hub"),
            run_scheduler=False,
            data_roots=[tmp_path_factory.getbasetemp()],  # a batch's CSV file
        )
    )
    reg = hub.registry
    mul = onnxruntime_model("mul_1.onnx").read_bytes()
    register_upload(reg, project="zoo", model="mul", data=mul, filename="mul_1.onnx")
    for zoo in (box_detector(), embedding_model(), multi_input_model()):
        register_upload(
            reg,
            project="zoo",
            model=zoo.name,
            data=zoo.data,
            filename=f"{zoo.name}.onnx",
            head=zoo.head,
        )
    # the embedding model read as a classifier of 8 "classes": a step that gives class scores
    register_upload(
        reg,
        project="zoo",
        model="scorer",
        data=embedding_model().data,
        filename="s.onnx",
        task="classification",
    )
    yield hub
    hub.close()


@pytest.fixture
def client(zoo_hub: Hub) -> Iterator[TestClient]:
    app = create_app(zoo_hub, scheduler=False, fleet=False)
    with TestClient(app, headers=admin_headers(zoo_hub)) as c:
        yield c
        for endpoint in c.get(API).json():
            c.delete(f"{API}/{endpoint['name']}")


def _create(
    client: TestClient, name: str, models: dict[str, str], steps: list[dict[str, Any]], **extra: Any
) -> None:
    resp = client.post(API, json={"name": name, "models": models, "steps": steps, **extra})
    assert resp.status_code == 201, resp.text


def _direct(hub: Hub, ref: str, feeds: Any) -> dict[str, np.ndarray]:
    version = hub.registry.resolve_version(ref)
    blob = hub.registry.artifact_blob(version.artifacts[0].sha256)
    return load_runtime(blob, "onnx").run(feeds)


def _tensor(out: dict[str, Any]) -> np.ndarray:
    return np.asarray(out["data"], dtype=out["dtype"]).reshape(out["shape"])


# -- a fixed batch of 3 ------------------------------------------------------------------------
@pytest.mark.parametrize("batching", [True, False])
def test_a_fixed_batch_model_answers_one_row_and_refuses_a_wrong_shape(
    client: TestClient, zoo_hub: Hub, batching: bool
) -> None:
    """onnxruntime's mul_1.onnx takes exactly [3, 2]: 1 row (padded and trimmed by the
    runtime, through the micro-batcher or not) is 200 with X*X; a row of 3 values is 422
    naming the shape it takes, never 500."""
    name = f"mul-{batching}"
    _create(
        client,
        name,
        {"m": "zoo/mul:1"},
        [{"name": "m", "kind": "model", "params": {"model": "m"}}],
        batching={"enabled": batching},
    )
    resp = client.post(f"{API}/{name}/predict?outputs=all", json={"inputs": [[1.5, -2.0]]})
    assert resp.status_code == 200, resp.text
    (pred,) = resp.json()["predictions"]
    # Y = X * [[1, 2], [3, 4], [5, 6]] (row by row): row 0 of a direct run on 3 rows
    direct = _direct(zoo_hub, "zoo/mul:1", np.asarray([[1.5, -2.0]] * 3, np.float32))["Y"]
    assert direct[0].tolist() == [1.5, -4.0]
    # one rank-2 float output: read as class scores by default, its tensor on request
    assert pred["scores"] == [1.5, -4.0] and pred["label"] == "0"
    assert np.array_equal(_tensor(pred["outputs"]["Y"]), direct[0])
    # 4 rows: two chunks of 3, the last padded; every row as a direct run on it gives
    x = np.arange(8, dtype=np.float32).reshape(4, 2) - 3.5
    resp = client.post(f"{API}/{name}/predict", json={"inputs": x.tolist(), "outputs": True})
    assert resp.status_code == 200, resp.text
    direct = _direct(zoo_hub, "zoo/mul:1", np.concatenate([x, x[:2]]))["Y"][:4]
    got = np.stack([_tensor(p["outputs"]["Y"]) for p in resp.json()["predictions"]])
    assert np.array_equal(got, direct)
    bad = client.post(f"{API}/{name}/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
    assert bad.status_code == 422, bad.text
    assert "[3, 2]" in bad.json()["detail"] and bad.json()["step"] == "m"


# -- several inputs ----------------------------------------------------------------------------
def test_a_multi_input_model_is_fed_by_name(client: TestClient, zoo_hub: Hub) -> None:
    _create(
        client,
        "multi",
        {"m": "zoo/multi_input_model:1"},
        [{"name": "m", "kind": "model", "params": {"model": "m"}}],
    )
    a = [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]
    b = [[4.0, 5.0, 6.0], [2.0, 2.0, 0.25]]
    resp = client.post(f"{API}/multi/predict", json={"inputs": {"a": a, "b": b}})
    assert resp.status_code == 200, resp.text
    direct = _direct(
        zoo_hub,
        "zoo/multi_input_model:1",
        {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float32)},
    )
    for i, pred in enumerate(resp.json()["predictions"]):
        assert np.array_equal(_tensor(pred["outputs"]["sum"]), direct["sum"][i])
        assert np.array_equal(_tensor(pred["outputs"]["product"]), direct["product"][i])
    # rows without names, a missing input, rows that do not line up: 422 saying which
    for body, words in (
        ({"inputs": a}, 'send "inputs" as rows by input name'),
        ({"inputs": {"a": a}}, "missing input(s) b"),
        ({"inputs": {"a": a, "b": b[:1]}}, "different numbers of rows"),
    ):
        bad = client.post(f"{API}/multi/predict", json=body)
        assert bad.status_code == 422 and words in bad.json()["detail"], bad.text


# -- detection ---------------------------------------------------------------------------------
def _detector_input() -> np.ndarray:
    """Two rows for box_detector: 4 boxes (xyxy fractions, apart) and 2 class scores each."""
    boxes = [[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.8], [0.1, 0.6, 0.3, 0.9], [0.6, 0.0, 0.9, 0.3]]
    rows = []
    for scores in (
        [[0.9, 0.1], [0.2, 0.7], [0.25, 0.1], [0.4, 0.45]],
        [[0.1, 0.2], [0.35, 0.3], [0.05, 0.95], [0.6, 0.1]],
    ):
        rows.append(np.concatenate([np.ravel(boxes), np.ravel(scores)]))
    return np.asarray(rows, dtype=np.float32)


def _decode_by_hand(x: np.ndarray, threshold: float) -> list[list[tuple[list[float], float, str]]]:
    """The boxes a detection head should give: best class per box, at or over the threshold,
    best first (the boxes do not overlap: NMS keeps them all). No geometry: fractions."""
    labels = ["cat", "dog"]
    out = []
    for row in x:
        boxes, scores = row[:16].reshape(4, 4), row[16:24].reshape(4, 2)
        found = [
            (boxes[k].tolist(), float(scores[k].max()), labels[int(scores[k].argmax())])
            for k in range(4)
            if scores[k].max() >= threshold
        ]
        out.append(sorted(found, key=lambda d: -d[1]))
    return out


def _detections(pred: dict[str, Any]) -> list[tuple[list[float], float, str]]:
    assert pred["task"] == "detection"
    return [(d["box"], d["score"], d["label"]) for d in pred["detections"]]


def _same(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want), (got, want)
    for (gb, gs, gl), (wb, ws, wl) in zip(got, want, strict=True):
        assert gl == wl and gs == pytest.approx(ws, abs=1e-6)
        assert np.allclose(gb, wb, atol=1e-6)


def test_a_detector_answers_boxes_and_its_raw_tensors_exactly(
    client: TestClient, zoo_hub: Hub
) -> None:
    _create(
        client,
        "boxes",
        {"d": "zoo/box_detector:1"},
        [{"name": "d", "kind": "model", "params": {"model": "d"}}],
    )
    x = _detector_input()
    resp = client.post(f"{API}/boxes/predict?outputs=all", json={"inputs": x.tolist()})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    direct = _direct(zoo_hub, "zoo/box_detector:1", x)
    for i, pred in enumerate(preds):
        for name in ("boxes", "scores"):
            assert np.array_equal(_tensor(pred["outputs"][name]), direct[name][i]), name
    want = _decode_by_hand(x, 0.3)  # the head's score_threshold
    for pred, expected in zip(preds, want, strict=True):
        _same(_detections(pred), expected)
        assert pred["model_version"] == zoo_hub.registry.resolve_version("zoo/box_detector:1").id
    # without asking, no tensors
    plain = client.post(f"{API}/boxes/predict", json={"inputs": x.tolist()}).json()
    assert "outputs" not in plain["predictions"][0]


def test_a_detect_step_after_a_model_step_without_head(client: TestClient) -> None:
    """`head: none` gives the tensors; `detect` decodes them with the version's head, its own
    options over it; a threshold after it drops the boxes below its bar."""
    steps = [
        {"name": "d", "kind": "model", "params": {"model": "d", "head": "none"}},
        {"name": "det", "kind": "detect", "inputs": ["d"], "params": {"score_threshold": 0.5}},
        {
            "name": "gate",
            "kind": "threshold",
            "inputs": ["det"],
            "params": {"min_score": 0.8, "per_class": {"dog": 0.65}},
        },
    ]
    _create(client, "detect", {"d": "zoo/box_detector:1"}, steps[:2])
    x = _detector_input()
    preds = client.post(f"{API}/detect/predict", json={"inputs": x.tolist()}).json()["predictions"]
    for pred, expected in zip(preds, _decode_by_hand(x, 0.5), strict=True):
        _same(_detections(pred), expected)
    _create(client, "gated", {"d": "zoo/box_detector:1"}, steps)
    resp = client.post(f"{API}/gated/predict", json={"inputs": x.tolist()}).json()
    kept = [
        [d for d in row if d[1] >= (0.65 if d[2] == "dog" else 0.8)]
        for row in _decode_by_hand(x, 0.5)
    ]
    for pred, expected in zip(resp["predictions"], kept, strict=True):
        _same(_detections(pred), expected)
    assert resp["tags"]["thresholded"] == "1"  # row 1's "cat" at 0.6


def test_a_head_step_is_refused_when_what_feeds_it_does_not_fit(client: TestClient) -> None:
    def refused(steps: list[dict[str, Any]], models: dict[str, str]) -> dict[str, Any]:
        resp = client.post(API, json={"name": "bad", "models": models, "steps": steps})
        assert resp.status_code == 422, resp.text
        return dict(resp.json())

    # a head step fed by class scores (a model step with its classification head)
    body = refused(
        [
            {"name": "m", "kind": "model", "params": {"model": "s"}},
            {"name": "det", "kind": "detect", "inputs": ["m"], "params": {"boxes": "embedding"}},
        ],
        {"s": "zoo/scorer:1"},
    )
    assert body["step"] == "det" and "not a model's tensors" in body["detail"], body
    # a head naming an output the model does not have
    body = refused(
        [
            {"name": "m", "kind": "model", "params": {"model": "d", "head": "none"}},
            {"name": "det", "kind": "detect", "inputs": ["m"], "params": {"boxes": "nope"}},
        ],
        {"d": "zoo/box_detector:1"},
    )
    assert body["step"] == "det" and "head.boxes" in body["detail"] and "nope" in body["detail"]
    # a step that needs class scores fed detections
    body = refused(
        [
            {"name": "m", "kind": "model", "params": {"model": "d"}},
            {
                "name": "t",
                "kind": "threshold",
                "inputs": ["m"],
                "params": {"min_score": 0.5, "default_label": "x"},
            },
            {"name": "s", "kind": "select", "inputs": ["t"], "params": {"default": "m"}},
        ],
        {"d": "zoo/box_detector:1"},
    )
    assert body["step"] == "s" and "class scores" in body["detail"], body


# -- routers and guards on head results --------------------------------------------------------
def test_cache_and_shadow_work_on_embeddings(client: TestClient, zoo_hub: Hub) -> None:
    steps = [
        {"name": "e", "kind": "model", "params": {"model": "e"}},
        {"name": "e2", "kind": "model", "params": {"model": "e", "head": "none"}},
        {"name": "emb", "kind": "embed", "inputs": ["e2"], "params": {"normalize": True}},
        {"name": "cache", "kind": "prediction_cache", "params": {"target": "e"}},
        {"name": "shadow", "kind": "shadow", "params": {"primary": "cache", "candidates": ["emb"]}},
    ]
    _create(client, "emb", {"e": "zoo/embedding_model:1"}, steps)
    x = np.asarray([[1.0, 0.0, -2.0, 0.5], [0.0, 3.0, 1.0, -1.0]], dtype=np.float32)
    first = client.post(f"{API}/emb/predict", json={"inputs": x.tolist()}).json()
    direct = _direct(zoo_hub, "zoo/embedding_model:1", x)["embedding"]
    for pred, want in zip(first["predictions"], direct, strict=True):
        assert pred["task"] == "embedding"
        assert np.allclose(pred["embedding"], want, atol=1e-6)
        assert pred["norm"] == pytest.approx(float(np.linalg.norm(want)), rel=1e-6)
    # one row again, one new: the cached row answers as before, in its place
    again = client.post(f"{API}/emb/predict", json={"inputs": [x[1].tolist(), [0.0] * 4]}).json()
    assert again["cache"]["hits"] == 1 and again["cache"]["misses"] == 1
    assert again["predictions"][0]["embedding"] == first["predictions"][1]["embedding"]
    # the shadow (the same vectors, normalised) agrees by cosine similarity
    stats = client.get(f"{API}/emb/stats").json()
    shadow = _poll_shadow(client)
    assert shadow["agreement"] == 1.0 and shadow["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert stats["endpoint"] == "emb"
    # and the report from the log compares the logged vectors the same way
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]
    report = client.get(f"{API}/emb/reports/shadow").json()
    (cand,) = report["candidates"]
    assert cand["candidate"] == "emb" and cand["rows_compared"] == 4
    assert cand["agreement"] == 1.0
    # monitoring describes the endpoint's answers by their norms (no baseline: no shift)
    from cloud_hub.monitoring.windows import WindowReader

    window = WindowReader(zoo_hub.db).window("endpoint", "emb", window_s=3600)
    norms = [p["norm"] for p in first["predictions"] + again["predictions"]]
    assert window.task == "embedding" and window.output_shift is None
    assert window.answers["norm"]["mean"] == pytest.approx(float(np.mean(norms)), rel=1e-5)
    assert "no training baseline for the versions in this window" in window.notes


def _poll_shadow(client: TestClient) -> dict[str, Any]:
    """The shadow's candidate stats once both requests' mirrors are done."""

    def candidate() -> dict[str, Any]:
        got: dict[str, Any] = client.get(f"{API}/emb/stats").json()["steps"]["shadow"]
        return dict(got["candidates"]["emb"])

    wait_until(lambda: candidate()["requests"] >= 2, what="the shadow's two mirrored calls")
    return candidate()


# -- the prediction log ------------------------------------------------------------------------
def test_the_log_keeps_the_head_result_and_a_digest_of_the_tensors(
    client: TestClient, zoo_hub: Hub, tmp_path: Path
) -> None:
    _create(
        client,
        "logged",
        {"d": "zoo/box_detector:1"},
        [{"name": "d", "kind": "model", "params": {"model": "d"}}],
    )
    x = _detector_input()
    resp = client.post(f"{API}/logged/predict", json={"inputs": x.tolist(), "request_id": "r-1"})
    assert resp.status_code == 200
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]
    records = client.get("/api/v1/logs", params={"request_id": "r-1"}).json()["records"]
    assert [r["row"] for r in records] == [0, 1]
    direct = _direct(zoo_hub, "zoo/box_detector:1", x)
    for rec, pred in zip(records, resp.json()["predictions"], strict=True):
        assert rec["output"]["task"] == "detection"
        assert rec["output"]["detections"] == pred["detections"]
        # the raw tensors are not kept: only their digest, the one the agent computes
        digest = outputs_digest(direct, rec["row"], 2)
        assert "boxes" not in rec["output"]
        assert rec["outputs_digest"] == digest


# -- monitoring per task -----------------------------------------------------------------------
def test_monitoring_measures_the_output_shift_of_detections(
    client: TestClient, zoo_hub: Hub
) -> None:
    """A detector's window: detections per frame and their scores, against the baseline of its
    answers on the training inputs; a raw model's window says it has no output shift."""
    from cloud_hub.monitoring.baseline import BaselineStore, compute_baseline
    from cloud_hub.monitoring.windows import WindowReader

    version = zoo_hub.registry.resolve_version("zoo/box_detector:1")
    x = _detector_input()
    # training answers: every frame with 2 boxes of score 0.9
    train = [{"task": "detection", "detections": [{"score": 0.9}, {"score": 0.9}]}] * 50
    BaselineStore(zoo_hub.db).save(
        compute_baseline(version.id, x, source="test", labels=[], task="detection", results=train)
    )
    _create(
        client,
        "mon",
        {"d": "zoo/box_detector:1"},
        [{"name": "d", "kind": "model", "params": {"model": "d"}}],
    )
    for _ in range(5):
        assert client.post(f"{API}/mon/predict", json={"inputs": x.tolist()}).status_code == 200
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]
    window = WindowReader(zoo_hub.db).window("endpoint", "mon", window_s=3600)
    assert window.task == "detection" and window.baseline_version == version.id
    # each row finds 3 boxes, half of them cats: as decoded by hand
    by_hand = _decode_by_hand(x, 0.3)
    assert [len(d) for d in by_hand] == [3, 3]
    assert window.answers["detections_per_frame"]["mean"] == pytest.approx(3.0)
    assert window.answers["labels"] == {"cat": 0.5, "dog": 0.5}
    scores = sorted(d[1] for row in by_hand for d in row)
    assert window.answers["score"]["p50"] == pytest.approx(scores[2], abs=1e-3)
    # frames of 3 boxes and scores under 0.9 were never seen in training: a large shift
    assert window.output_shift is not None and window.output_shift >= 0.5
    _create(
        client,
        "mon-raw",
        {"m": "zoo/multi_input_model:1"},
        [{"name": "m", "kind": "model", "params": {"model": "m"}}],
    )
    body = {"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1.0, 1.0, 1.0]]}}
    assert client.post(f"{API}/mon-raw/predict", json=body).status_code == 200
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]
    raw = WindowReader(zoo_hub.db).window("endpoint", "mon-raw", window_s=3600)
    assert raw.task == "raw" and raw.output_shift is None
    assert "no output shift for raw answers: it is not measured" in raw.notes


def test_device_logs_with_head_results_and_old_score_lists_are_both_read(zoo_hub: Hub) -> None:
    """Agents log `output` as a head result; older ones as a list of scores. The log's reader
    and the device's window read both: a classifier's label either way, a detector's task."""
    import time

    from cloud_hub.fleet.ingest import Ingest
    from cloud_hub.monitoring.windows import WindowReader
    from cloud_hub.predlog.query import LogFilter, LogReader
    from edge_agent.core.wire import LogBatch, LogRecord

    scorer = zoo_hub.registry.resolve_version("zoo/scorer:1")
    now = time.time()
    old = [0.1, 0.7, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    new: dict[str, Any] = {
        "task": "classification",
        "class": 2,
        "label": "2",
        "score": 0.8,
        "scores": old,
    }
    boxes: dict[str, Any] = {
        "task": "detection",
        "detections": [{"box": [0, 0, 1, 1], "score": 0.9}] * 2,
    }
    outputs: list[list[float] | dict[str, Any]] = [old, new, new, boxes]
    records = [
        LogRecord(
            seq=i + 1,
            request_id=f"q{i}",
            model_version=scorer.id,
            input_digest="ab",
            output=out,
            outputs_digest="d" * 64 if i else None,
            latency_ms=1.0,
            ts=now - 1 + i / 100,
        )
        for i, out in enumerate(outputs)
    ]
    Ingest(zoo_hub.db).store_logs("cam-1", LogBatch(device_id="cam-1", floor=1, records=records))
    got = (
        LogReader(zoo_hub.db, lambda v: version_labels(zoo_hub.db.conn, v))
        .page(LogFilter(device_id="cam-1"))
        .records
    )
    assert [r["label"] for r in got] == ["1", "2", "2", None]
    assert got[3]["output"]["task"] == "detection"
    window = WindowReader(zoo_hub.db).window("device", "cam-1", window_s=600)
    assert window.output == {"2": 0.666667, "1": 0.333333}
    assert window.task == "classification"  # three of the four answers


# -- images through a head: keypoints in the caller's pixels, a class map ----------------------
def _png(width: int, rgb: tuple[int, int, int]) -> str:
    import base64

    import cv2

    image = np.zeros((width, width, 3), np.uint8)
    image[:] = rgb[::-1]  # OpenCV's BGR
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def test_keypoints_and_segmentation_answer_an_image(zoo_hub: Hub, client: TestClient) -> None:
    """A 64x64 image of one colour (r, g, b): the keypoint model's points are (r, g, b) / 255 x
    32 in its 32x32 input, so (2x, 2y) in the image; the segmentation's class map is one class
    everywhere, the argmax of the 1x1 convolution of the colour."""
    from tests.model_zoo import SEG_BIAS, SEG_WEIGHTS, keypoint_model, segmentation_model

    for zoo in (keypoint_model(), segmentation_model()):
        register_upload(
            zoo_hub.registry,
            project="zoo",
            model=zoo.name,
            data=zoo.data,
            filename=f"{zoo.name}.onnx",
            head=zoo.head,
            preprocessing=zoo.preprocessing,
        )
    r, g, b = 64, 128, 192
    _create(
        client,
        "points",
        {"k": "zoo/keypoint_model:1"},
        [
            {"name": "pre", "kind": "preprocess", "params": {"model": "k"}},
            {"name": "k", "kind": "model", "inputs": ["pre"], "params": {"model": "k"}},
        ],
    )
    resp = client.post(f"{API}/points/predict", json={"image_b64": _png(64, (r, g, b))})
    assert resp.status_code == 200, resp.text
    (pred,) = resp.json()["predictions"]
    assert pred["task"] == "keypoints"
    (instance,) = pred["instances"]
    x, y = r / 255 * 32, g / 255 * 32
    for point in instance["points"]:
        assert point[0] == pytest.approx(2 * x, abs=1e-3)
        assert point[1] == pytest.approx(2 * y, abs=1e-3)
    # the presence logit is the 16th value (a red one): sigmoid(r / 255)
    assert instance["score"] == pytest.approx(1 / (1 + np.exp(-r / 255)), abs=1e-5)

    _create(
        client,
        "seg",
        {"s": "zoo/segmentation_model:1"},
        [
            {"name": "pre", "kind": "preprocess", "params": {"model": "s"}},
            {
                "name": "s",
                "kind": "model",
                "inputs": ["pre"],
                "params": {"model": "s", "head": "none"},
            },
            {"name": "seg", "kind": "segment", "inputs": ["s"], "params": {"include_mask": True}},
        ],
    )
    resp = client.post(f"{API}/seg/predict", json={"image_b64": _png(16, (r, g, b))})
    assert resp.status_code == 200, resp.text
    (pred,) = resp.json()["predictions"]
    logits = SEG_WEIGHTS @ (np.array([r, g, b], np.float32) / 255) + SEG_BIAS
    winner = int(logits.argmax())
    assert pred["task"] == "segmentation" and pred["shape"] == [16, 16]
    found = {c["class"]: c for c in pred["classes"] if c["pixels"]}
    assert list(found) == [winner] and found[winner]["fraction"] == 1.0
    assert found[winner]["label"] == ["red", "green", "dark"][winner]
    assert isinstance(pred["mask_png"], str) and pred["mask_png"]


def test_concurrent_rows_of_a_fixed_batch_model_are_batched_and_split_back(
    client: TestClient, zoo_hub: Hub
) -> None:
    """Single rows from concurrent callers join one micro-batch of a [3, 2] model (y = 2x + 1,
    chunked and padded by the runtime); each caller gets its own row back, exactly."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.model_zoo import fixed_batch_model

    zoo = fixed_batch_model()
    register_upload(
        zoo_hub.registry,
        project="zoo",
        model="fixed",
        data=zoo.data,
        filename="fixed.onnx",
        task="raw",
    )
    _create(
        client,
        "fixed",
        {"f": "zoo/fixed:1"},
        [{"name": "f", "kind": "model", "params": {"model": "f"}}],
        batching={"enabled": True, "max_wait_ms": 50},
    )
    rows = np.arange(16, dtype=np.float32).reshape(8, 2) / 4

    def call(i: int) -> Any:
        return client.post(f"{API}/fixed/predict", json={"inputs": [rows[i].tolist()]})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    want = zoo.reference({"x": rows})["y"]
    for i, resp in enumerate(answers):
        assert resp.status_code == 200, resp.text
        (pred,) = resp.json()["predictions"]
        assert np.array_equal(_tensor(pred["outputs"]["y"]), want[i])
    stats = client.get(f"{API}/fixed/stats").json()["batching"]["f"]
    assert stats["rows"] == 8


def test_a_batch_over_a_detector_stores_each_rows_detections(
    client: TestClient, tmp_path: Path
) -> None:
    import csv

    from tests.waiting import wait_for

    _create(
        client,
        "boxes-batch",
        {"d": "zoo/box_detector:1"},
        [{"name": "d", "kind": "model", "params": {"model": "d"}}],
    )
    x = _detector_input()
    table = tmp_path / "frames.csv"
    with table.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", *(f"v{i}" for i in range(24))])
        for i, row in enumerate(x):
            out.writerow([f"f{i}", *row.tolist()])
    resp = client.post(
        f"{API}/boxes-batch/batches", json={"source": {"kind": "csv", "path": str(table)}}
    )
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["id"]
    done = wait_for(
        lambda: client.get(f"/api/v1/batches/{batch_id}").json(),
        lambda b: b["state"] in ("succeeded", "failed", "cancelled"),
        30,
        what="the batch",
    )
    assert done["state"] == "succeeded", done
    stored = client.get(f"/api/v1/batches/{batch_id}/predictions").json()
    assert [p["row_id"] for p in stored] == ["f0", "f1"]
    for p, want in zip(stored, _decode_by_hand(x, 0.3), strict=True):
        assert p["result"]["task"] == "detection" and p["label"] == ""
        got = [(d["box"], d["score"], d["label"]) for d in p["result"]["detections"]]
        _same(got, want)
