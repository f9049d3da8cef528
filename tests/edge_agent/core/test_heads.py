"""Task heads on real runtimes: the zoo's models and MediaPipe's, decoded by the heads and checked
against decodings this file computes itself (plain numpy loops, a greedy IoU NMS)."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import sklearn.datasets

from edge_agent.core.heads import HeadError, check_head, decode, parse_head
from edge_agent.core.heads.detection import generate_anchors
from edge_agent.core.preprocess import Geometry, PreprocessingSpec, prepare_image
from edge_agent.core.runtimes import Runtime, load_runtime
from tests import model_zoo
from tests.third_party import mediapipe_model

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "heads"
PHOTO = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"  # a photo sklearn ships

# image 128 x 96 letterboxed into a 64 x 64 input: scale 0.5, 8 rows of padding top and bottom
LETTERBOX = Geometry(128, 96, 64, 64, 0.5, 0.5, 0.0, 8.0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _greedy_nms(cands: list[dict[str, Any]], iou: float) -> list[dict[str, Any]]:
    """Best first; a candidate goes when it overlaps a kept one of its class by more than iou."""
    kept: list[dict[str, Any]] = []
    for c in sorted(cands, key=lambda d: -d["score"]):
        if all(k["class"] != c["class"] or _iou(k["box"], c["box"]) <= iou for k in kept):
            kept.append(c)
    return kept


def _to_image(g: Geometry, x: float, y: float) -> tuple[float, float]:
    return (x - g.pad_x) / g.scale_x, (y - g.pad_y) / g.scale_y


def _map_box(g: Geometry, box: list[float]) -> list[float]:
    x1, y1 = _to_image(g, box[0], box[1])
    x2, y2 = _to_image(g, box[2], box[3])
    w, h = g.image_width, g.image_height
    return [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]


def _same_detections(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert g["class"] == w["class"] and g["label"] == w["label"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-6)
        assert g["box"] == pytest.approx(w["box"], abs=1e-3)
        if "keypoints" in w:
            assert np.asarray(g["keypoints"]) == pytest.approx(np.asarray(w["keypoints"]), abs=1e-3)


def _run(model: bytes | Path, fmt: str, feeds: Any) -> tuple[Runtime, dict[str, np.ndarray]]:
    runtime = load_runtime(model, fmt)  # type: ignore[arg-type]
    raw = runtime.run(feeds)
    return runtime, {k: runtime.dequantize(k, v) for k, v in raw.items()}


# -- detection ----------------------------------------------------------------------------------
def test_ssd_anchors_decoder_matches_a_decoding_by_hand() -> None:
    zoo = model_zoo.ssd_detector()
    rng = np.random.default_rng(7)
    raw = np.zeros((16, 6), np.float32)
    raw[:, :2] = rng.uniform(-10, 10, (16, 2))  # centre offsets, input pixels
    raw[:, 2:4] = rng.uniform(10, 40, (16, 2))  # sizes: neighbours overlap
    raw[:, 4:6] = rng.uniform(-8, 8, (16, 2))  # one keypoint
    logits = rng.uniform(-3, 3, 16).astype(np.float32)
    x = np.zeros((1, 64, 64, 3), np.float32)
    flat = x.reshape(-1)
    flat[:96] = raw.reshape(-1)
    flat[96:112] = logits
    runtime, outputs = _run(zoo.data, "onnx", x)
    assert outputs["regressors"].tolist() == zoo.reference({"image": x})["regressors"].tolist()
    head = check_head(parse_head(zoo.head or {}), runtime.outputs)

    cands = []
    for i in range(16):
        gy, gx = divmod(i, 4)  # one anchor per cell of a 4 x 4 grid, row by row
        ax, ay = (gx + 0.5) / 4, (gy + 0.5) / 4
        cx, cy = raw[i, 0] / 64 + ax, raw[i, 1] / 64 + ay
        w, h = raw[i, 2] / 64, raw[i, 3] / 64
        score = _sigmoid(float(logits[i]))
        if score < 0.5:
            continue
        box = [(cx - w / 2) * 64, (cy - h / 2) * 64, (cx + w / 2) * 64, (cy + h / 2) * 64]
        kp = ((raw[i, 4] / 64 + ax) * 64, (raw[i, 5] / 64 + ay) * 64)
        cands.append({"box": box, "score": score, "class": 0, "label": "thing", "kp": kp})
    kept = _greedy_nms(cands, 0.3)
    assert 1 < len(kept) < len(cands)  # the case exercises both the threshold and the NMS
    want = [
        {**k, "box": _map_box(LETTERBOX, k["box"]), "keypoints": [_to_image(LETTERBOX, *k["kp"])]}
        for k in kept
    ]
    (result,) = decode(head, outputs, 1, [LETTERBOX])
    assert result["task"] == "detection"
    _same_detections(result["detections"], want)
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 96

    # without a geometry, boxes stay in the model's input pixels (the anchors' input size)
    (plain,) = decode(head, outputs, 1)
    _same_detections(
        plain["detections"],
        [
            {**k, "box": [min(max(v, 0.0), 64.0) for v in k["box"]], "keypoints": [k["kp"]]}
            for k in kept
        ],
    )


def test_boxes_decoder_scores_classes_and_per_class_nms() -> None:
    zoo = model_zoo.box_detector()
    row0 = [
        [0.1, 0.1, 0.5, 0.5],  # cat 0.9
        [0.12, 0.1, 0.5, 0.52],  # cat 0.8: overlaps the first by IoU 0.91, suppressed
        [0.12, 0.1, 0.5, 0.52],  # dog 0.7: same place, another class, kept
        [0.6, 0.6, 0.9, 0.9],  # 0.2: below the threshold
    ]
    scores0 = [[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.2, 0.1]]
    rng = np.random.default_rng(3)
    lo = rng.uniform(0, 0.5, (4, 2))
    row1 = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, (4, 2))], axis=1)
    scores1 = rng.uniform(0, 1, (4, 2))
    x = np.array(
        [
            np.concatenate([np.ravel(row0), np.ravel(scores0)]),
            np.concatenate([row1.ravel(), scores1.ravel()]),
        ],
        np.float32,
    )
    runtime, outputs = _run(zoo.data, "onnx", x)
    head = check_head(parse_head(zoo.head or {}), runtime.outputs)
    g = Geometry(200, 100, 200, 100)  # fractions become input pixels, here image pixels
    results = decode(head, outputs, 2, [g, None])
    scale = np.array([200, 100, 200, 100], np.float64)

    def pixels(box: list[float]) -> list[float]:
        return list(np.asarray(box, np.float32) * scale)

    _same_detections(
        results[0]["detections"],
        [
            {"box": pixels(row0[0]), "score": np.float32(0.9), "class": 0, "label": "cat"},
            {"box": pixels(row0[2]), "score": np.float32(0.7), "class": 1, "label": "dog"},
        ],
    )
    # no geometry and no input size: the boxes stay fractions (times 1)
    b1, s1 = outputs["boxes"][1].astype(float), outputs["scores"][1].astype(float)
    cands = [
        {"box": list(b1[i]), "score": float(s1[i].max()), "class": int(s1[i].argmax())}
        for i in range(4)
        if s1[i].max() >= 0.3
    ]
    want = [{**c, "label": ["cat", "dog"][c["class"]]} for c in _greedy_nms(cands, 0.5)]
    _same_detections(results[1]["detections"], want)


def test_boxes_decoder_count_and_classes_outputs_like_a_tf_ssd() -> None:
    head = parse_head(
        {
            "task": "detection",
            "boxes": "boxes",
            "scores": "scores",
            "classes": "classes",
            "count": "count",
            "box_format": "yxyx",
            "score_threshold": 0.1,
            "labels": ["a", "b", "c"],
        }
    )
    outputs = {
        "boxes": np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1]]], np.float32),
        "scores": np.array([[0.6, 0.8, 0.99]], np.float32),
        "classes": np.array([[2.0, 1.0, 0.0]], np.float32),
        "count": np.array([2.0], np.float32),  # the third box is padding
    }
    (result,) = decode(head, outputs, 1, [Geometry(10, 10, 10, 10)])
    _same_detections(
        result["detections"],
        [
            {"box": [5.0, 5.0, 9.0, 9.0], "score": 0.8, "class": 1, "label": "b"},
            {"box": [2.0, 1.0, 4.0, 3.0], "score": 0.6, "class": 2, "label": "c"},
        ],
    )


def test_yolo_v8_decoder_matches_a_decoding_by_hand() -> None:
    zoo = model_zoo.yolo_detector()
    cand = np.array(
        [
            [20, 30, 16, 12, 0.9, 0.1],  # person 0.9
            [22, 30, 16, 12, 0.8, 0.3],  # person 0.8, overlapping: suppressed
            [50, 40, 20, 40, 0.2, 0.6],  # car 0.6, reaching past the input: clipped
            [10, 10, 4, 4, 0.1, 0.2],  # below 0.25
        ],
        np.float32,
    )
    runtime, outputs = _run(zoo.data, "onnx", cand[None])
    assert outputs["output0"].shape == (1, 6, 4)
    head = check_head(parse_head(zoo.head or {}), runtime.outputs)
    cands = []
    for cx, cy, w, h, *scores in cand.astype(float):
        c = int(np.argmax(scores))
        if scores[c] >= 0.25:
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            cands.append({"box": box, "score": scores[c], "class": c})
    kept = _greedy_nms(cands, 0.45)
    assert [k["score"] for k in kept] == pytest.approx([0.9, 0.6])
    want = [
        {**k, "box": _map_box(LETTERBOX, k["box"]), "label": ["person", "car"][k["class"]]}
        for k in kept
    ]
    (result,) = decode(head, outputs, 1, [LETTERBOX])
    _same_detections(result["detections"], want)
    assert result["detections"][1]["box"][3] == 96.0  # clipped to the image


# -- keypoints and segmentation -----------------------------------------------------------------
def test_keypoints_decoder_maps_points_through_the_letterbox() -> None:
    zoo = model_zoo.keypoint_model()
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    runtime, outputs = _run(zoo.data, "onnx", x)
    head = check_head(parse_head(zoo.head or {}), runtime.outputs)
    assert head.points == 5  # filled from the output's 15 values, 3 per point
    g = Geometry(64, 32, 32, 32, 0.5, 0.5, 0.0, 8.0)
    results = decode(head, outputs, 2, [g, None])
    for r, result in enumerate(results):
        (inst,) = result["instances"]
        flat = x[r].reshape(-1).astype(np.float64)
        want = []
        for p in range(5):
            px, py, pz = (float(np.float32(flat[3 * p + k]) * np.float32(32)) for k in range(3))
            if r == 0:
                px, py = (px - 0.0) / 0.5, (py - 8.0) / 0.5
            want.append([px, py, pz])
        assert np.asarray(inst["points"]) == pytest.approx(np.asarray(want), abs=1e-4)
        assert inst["score"] == pytest.approx(_sigmoid(float(flat[15])), abs=1e-6)


def test_segmentation_decoder_counts_pixels_and_encodes_the_class_map() -> None:
    zoo = model_zoo.segmentation_model()
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    runtime, outputs = _run(zoo.data, "onnx", x)
    head = check_head(parse_head(zoo.head or {}), runtime.outputs)
    results = decode(head, outputs, 2, include_mask=True)
    for r, result in enumerate(results):
        want = np.zeros((16, 16), np.int64)
        for i in range(16):
            for j in range(16):
                logits = [
                    sum(model_zoo.SEG_WEIGHTS[o, c] * x[r, c, i, j] for c in range(3))
                    + model_zoo.SEG_BIAS[o]
                    for o in range(3)
                ]
                want[i, j] = int(np.argmax(logits))
        assert result["shape"] == [16, 16]
        assert [c["pixels"] for c in result["classes"]] == [
            int((want == k).sum()) for k in range(3)
        ]
        assert [c["label"] for c in result["classes"]] == ["red", "green", "dark"]
        assert sum(c["fraction"] for c in result["classes"]) == pytest.approx(1.0)
        png = np.frombuffer(base64.b64decode(result["mask_png"]), np.uint8)
        mask = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.dtype == np.uint8 and mask.tolist() == want.tolist()
    assert "mask_png" not in decode(head, outputs, 1)[0]


def test_embedding_multi_input_and_fixed_batch_zoo_models_run() -> None:
    emb = model_zoo.embedding_model()
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    runtime, outputs = _run(emb.data, "onnx", x)
    head = check_head(parse_head(emb.head or {}), runtime.outputs)
    results = decode(head, outputs, 3)
    for row, result in zip(x, results, strict=True):
        want = [
            sum(float(row[i]) * float(model_zoo.EMB_WEIGHTS[i, j]) for i in range(4))
            + float(model_zoo.EMB_BIAS[j])
            for j in range(8)
        ]
        assert result["embedding"] == pytest.approx(want, abs=1e-5)

    multi = model_zoo.multi_input_model()
    a, b = np.ones((2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    _, out = _run(multi.data, "onnx", {"a": a, "b": b})
    assert out["sum"].tolist() == (a + b).tolist() and out["product"].tolist() == b.tolist()

    fixed = model_zoo.fixed_batch_model()
    runtime, out = _run(fixed.data, "onnx", np.arange(8, dtype=np.float32).reshape(4, 2))
    assert runtime.inputs[0].shape == [3, 2]
    assert out["y"].tolist() == [[1, 3], [5, 7], [9, 11], [13, 15]]  # two padded chunks of 3


# -- refusals -----------------------------------------------------------------------------------
def test_check_head_refuses_heads_that_do_not_fit_naming_the_field() -> None:
    box_runtime = load_runtime(model_zoo.box_detector().data, "onnx")
    with pytest.raises(HeadError) as missing:
        check_head(
            parse_head({"task": "detection", "boxes": "bbox", "scores": "scores"}),
            box_runtime.outputs,
        )
    assert missing.value.field == "boxes"
    assert "bbox" in str(missing.value) and "boxes [None, 4, 4]" in str(missing.value)

    with pytest.raises(HeadError) as rank:
        check_head(
            parse_head({"task": "detection", "boxes": "scores", "scores": "boxes"}),
            box_runtime.outputs,
        )
    # scores [None, 4, 2] has rank 3 but 2 values per box
    assert rank.value.field == "boxes" and "4 values per box" in str(rank.value)

    kp_runtime = load_runtime(model_zoo.keypoint_model().data, "onnx")
    with pytest.raises(HeadError) as wrong_rank:
        check_head(
            parse_head({"task": "detection", "boxes": "points", "scores": "presence"}),
            kp_runtime.outputs,
        )
    assert wrong_rank.value.field == "boxes" and "rank 3" in str(wrong_rank.value)
    assert "[None, 15]" in str(wrong_rank.value)

    with pytest.raises(HeadError) as points:
        check_head(
            parse_head({"task": "keypoints", "output": "points", "points": 4}), kp_runtime.outputs
        )
    assert points.value.field == "points"

    seg_runtime = load_runtime(model_zoo.segmentation_model().data, "onnx")
    with pytest.raises(HeadError) as labels:
        check_head(
            parse_head({"task": "segmentation", "output": "logits", "labels": ["a", "b"]}),
            seg_runtime.outputs,
        )
    assert labels.value.field == "labels" and "3 classes" in str(labels.value)

    ssd = model_zoo.ssd_detector()
    ssd_runtime = load_runtime(ssd.data, "onnx")
    wrong = dict(ssd.head or {}, anchors=dict(model_zoo.SSD_ANCHORS, strides=[8]))
    with pytest.raises(HeadError) as anchors:
        check_head(parse_head(wrong), ssd_runtime.outputs)
    assert anchors.value.field == "anchors" and "64 anchors" in str(anchors.value)


# -- MediaPipe's models -------------------------------------------------------------------------
def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return doc


def _photo(size: int, low: float) -> tuple[np.ndarray, Geometry]:
    """A real photo (scikit-learn ships it), letterboxed as MediaPipe does, values low..1."""
    image = cv2.imread(str(PHOTO))
    assert image is not None, f"{PHOTO} is missing"
    if low < 0:
        spec = PreprocessingSpec(
            input_kind="image",
            size=(size, size),
            color="rgb",
            resize="letterbox",
            scale=1 / 127.5,
            mean=[1.0] * 3,
            std=[1.0] * 3,
        )
    else:
        spec = PreprocessingSpec(
            input_kind="image", size=(size, size), color="rgb", resize="letterbox", scale=1 / 255
        )
    return prepare_image(image, spec)


def _fixed_anchor_centres(size: int, strides: list[int]) -> list[tuple[float, float]]:
    """Anchor centres of MediaPipe's fixed-size SSD anchors: layers with the same stride share a
    grid; each layer gives 2 anchors per cell (aspect ratio 1 and the interpolated scale)."""
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        n = math.ceil(size / strides[i])
        for y in range(n):
            for x in range(n):
                out += [((x + 0.5) / n, (y + 0.5) / n)] * (2 * (j - i))
        i = j
    return out


@pytest.mark.parametrize(
    ("name", "size", "low", "anchors", "keypoints"),
    [
        ("face_detection_short_range", 128, -1.0, 896, 6),
        ("palm_detection_full", 192, 0.0, 2016, 7),
        ("pose_detection", 224, -1.0, 2254, 4),
    ],
)
def test_mediapipe_detectors_decode_a_real_photo(
    name: str, size: int, low: float, anchors: int, keypoints: int
) -> None:
    x, geometry = _photo(size, low)
    runtime, outputs = _run(mediapipe_model(f"{name}.tflite"), "tflite", x)
    head = check_head(parse_head(_example(name)), runtime.outputs)
    assert head.anchors is not None and len(generate_anchors(head.anchors)) == anchors
    assert runtime.spec(head.boxes).shape[1] == anchors
    # every candidate scored: NMS leaves a spread of boxes
    loose = head.model_copy(update={"score_threshold": 0.0, "max_detections": 25})
    (result,) = decode(loose, outputs, 1, [geometry])
    dets = result["detections"]
    assert 1 < len(dets) <= 25
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for det in dets:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 427
        assert len(det["keypoints"]) == keypoints and det["label"] == head.labels[0]

    # the best one, decoded by hand from its anchor
    best = int(np.argmax(outputs[head.scores or ""][0, :, 0]))
    ax, ay = _fixed_anchor_centres(size, head.anchors.strides)[best]
    rx, ry, rw, rh = (float(v) / size for v in outputs[head.boxes][0, best, :4])
    cx, cy = (rx + ax) * size, (ry + ay) * size
    box = [cx - rw * size / 2, cy - rh * size / 2, cx + rw * size / 2, cy + rh * size / 2]
    assert dets[0]["box"] == pytest.approx(_map_box(geometry, box), abs=1e-3)
    raw = float(outputs[head.scores or ""][0, best, 0])
    assert dets[0]["score"] == pytest.approx(_sigmoid(raw), abs=1e-6)
    # at the example's own threshold, a photo of buildings holds no face, palm or pose
    strict = decode(head, outputs, 1, [geometry])[0]["detections"]
    assert all(d["score"] >= head.score_threshold for d in strict)


@pytest.mark.parametrize(
    ("name", "size", "points", "values"),
    [
        ("hand_landmark_full", 224, 21, 3),
        ("pose_landmark_full", 256, 39, 5),
        ("face_landmark", 192, 468, 3),
    ],
)
def test_mediapipe_landmark_models_decode_a_real_photo(
    name: str, size: int, points: int, values: int
) -> None:
    x, geometry = _photo(size, 0.0)
    runtime, outputs = _run(mediapipe_model(f"{name}.tflite"), "tflite", x)
    head = check_head(parse_head(_example(name)), runtime.outputs)
    assert head.points == points and head.values_per_point == values
    (result,) = decode(head, outputs, 1, [geometry])
    (inst,) = result["instances"]
    assert len(inst["points"]) == points and all(len(p) == 3 for p in inst["points"])
    assert 0.0 <= inst["score"] <= 1.0
    raw = outputs[head.output].reshape(points, values).astype(np.float64)
    for p in (0, points // 2, points - 1):
        want = [*_to_image(geometry, raw[p, 0], raw[p, 1]), raw[p, 2]]
        assert inst["points"][p] == pytest.approx(want, abs=1e-3)
    if values == 5:
        assert inst["visibility"][0] == pytest.approx(_sigmoid(raw[0, 3]), abs=1e-6)
        assert all(0 <= v <= 1 for v in inst["visibility"] + inst["presence"])


def test_mediapipe_selfie_segmentation_decodes_a_real_photo() -> None:
    image = cv2.imread(str(PHOTO))
    assert image is not None, f"{PHOTO} is missing"
    spec = PreprocessingSpec(input_kind="image", size=(256, 256), color="rgb", scale=1 / 255)
    x, _ = prepare_image(image, spec)
    runtime, outputs = _run(mediapipe_model("selfie_segmentation.tflite"), "tflite", x)
    head = check_head(parse_head(_example("selfie_segmentation")), runtime.outputs)
    (result,) = decode(head, outputs, 1, include_mask=True)
    person = outputs["activation_10"][0, :, :, 0] >= 0.5
    assert result["shape"] == [256, 256]
    assert [(c["label"], c["pixels"]) for c in result["classes"]] == [
        ("background", int((~person).sum())),
        ("person", int(person.sum())),
    ]
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(result["mask_png"]), np.uint8), -1)
    assert mask is not None and mask.shape == (256, 256)
    assert mask.tolist() == person.astype(np.uint8).tolist()


def test_every_example_head_fits_its_mediapipe_model() -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    assert len(files) >= 7
    for path in files:
        runtime = load_runtime(mediapipe_model(f"{path.stem}.tflite"), "tflite")
        head = check_head(parse_head(json.loads(path.read_text())), runtime.outputs)
        assert head.task in ("detection", "keypoints", "segmentation"), path.name
