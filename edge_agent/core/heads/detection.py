"""The detection head: output tensors to boxes in image pixels, best first.

Three decoders (`DetectionHead.decoder`):

- `boxes`: the model gives decoded boxes [N, K, 4] (in `box_format`) and scores [N, K] or
  [N, K, C] (the best class wins), optionally class ids [N, K] and a box count [N] or [N, 1]
  (e.g. a TF SSD with its postprocess op: boxes yxyx, classes, scores, count).
- `anchors`: SSD offsets [N, A, 4 + 2 * keypoints] against anchors generated as MediaPipe's
  SsdAnchorsCalculator does (`AnchorSpec`), decoded as its TensorsToDetectionsCalculator does:
  x_center = x / x_scale * anchor_w + anchor_x, w = w / w_scale * anchor_w (or
  exp(w / w_scale) * anchor_w with `box_exp`), keypoints after the 4 box values. `box_format`
  is the order of the 4 offsets: `cxcywh`/`xywh` x, y, w, h (MediaPipe's models,
  reverse_output_order); `yxyx` y, x, h, w; `xyxy` MediaPipe's XYXY.
- `yolo`: one output of candidates, [N, K, 4 + 1 + C] (box, objectness, class scores; score =
  objectness x class score) or, `yolo.transposed`, YOLOv8's [N, 4 + C, K] with no objectness.

Then: boxes of a negative or NaN size and scores below `score_threshold` go, OpenCV's
`cv2.dnn.NMSBoxes` suppresses overlaps at `iou_threshold` (per class when there are several),
the best `max_detections` stay.

Coordinates: normalized ones are fractions of the model's input size, taken from the row's
`Geometry` (input_width/height) or, without one, from the anchors spec; when neither gives it
(decoder `boxes` or `yolo` with no geometry) they stay fractions (times 1). NMS runs in model-input
coordinates; then `Geometry.to_image` maps boxes and keypoints to image pixels and boxes are
clipped to the image (without a geometry: to the input size when it is known).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.core.heads.outputs import check_rank, find_output
from edge_agent.core.heads.spec import (
    AnchorSpec,
    DetectionHead,
    HeadError,
    YoloSpec,
)
from edge_agent.core.preprocess import Geometry
from edge_agent.core.runtimes import TensorSpec, dims

__all__ = ["check", "decode_detection", "generate_anchors"]

_CLIP = 100.0  # MediaPipe's score_clipping_thresh: raw scores are clipped before the sigmoid


# -- anchors ------------------------------------------------------------------------------------
def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def generate_anchors(spec: AnchorSpec) -> np.ndarray:
    """SSD anchors (A, 4) as (x_center, y_center, w, h), fractions of the input, in the order of
    MediaPipe's SsdAnchorsCalculator (layers with the same stride share one grid). Cached per
    spec: a copy is returned."""
    return _anchors(spec.model_dump_json()).copy()


@functools.lru_cache(maxsize=32)
def _anchors(doc: str) -> np.ndarray:
    spec = AnchorSpec.model_validate_json(doc)
    strides = spec.strides
    if len(strides) != spec.num_layers:
        raise HeadError(
            "anchors.strides",
            f"{len(strides)} strides for num_layers {spec.num_layers}: give one stride per layer",
        )
    out: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < spec.num_layers:
        heights: list[float] = []
        widths: list[float] = []
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _scale(spec.min_scale, spec.max_scale, last, len(strides))
            ratios: list[float] = []
            scales: list[float] = []
            if last == 0 and spec.reduce_boxes_in_lowest_layer:
                ratios, scales = [1.0, 2.0, 0.5], [0.1, scale, scale]
            else:
                for ratio in spec.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if spec.interpolated_scale_aspect_ratio > 0.0:
                    following = (
                        1.0
                        if last == len(strides) - 1
                        else _scale(spec.min_scale, spec.max_scale, last + 1, len(strides))
                    )
                    scales.append(math.sqrt(scale * following))
                    ratios.append(spec.interpolated_scale_aspect_ratio)
            for ratio, s in zip(ratios, scales, strict=True):
                root = math.sqrt(ratio)
                heights.append(s / root)
                widths.append(s * root)
            last += 1
        stride = strides[layer]
        rows = math.ceil(spec.input_size_height / stride)
        cols = math.ceil(spec.input_size_width / stride)
        for y in range(rows):
            for x in range(cols):
                cx = (x + spec.anchor_offset_x) / cols
                cy = (y + spec.anchor_offset_y) / rows
                for w, h in zip(widths, heights, strict=True):
                    if spec.fixed_anchor_size:
                        out.append((cx, cy, 1.0, 1.0))
                    else:
                        out.append((cx, cy, w, h))
        layer = last
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


# -- checking -----------------------------------------------------------------------------------
def _same_count(a: TensorSpec, b: TensorSpec, field: str) -> None:
    if len(a.shape) >= 2 and len(b.shape) >= 2:
        ka, kb = a.shape[1], b.shape[1]
        if ka is not None and kb is not None and ka != kb:
            raise HeadError(
                field,
                f"output {b.name} {dims(b.shape)} has {kb} entries per row, "
                f"but the boxes output {a.name} {dims(a.shape)} has {ka}",
            )


def _scores_spec(head: DetectionHead, outputs: Sequence[TensorSpec]) -> TensorSpec:
    if head.scores is None:
        have = ", ".join(f"{s.name} {dims(s.shape)}" for s in outputs)
        raise HeadError(
            "scores", f"decoder {head.decoder!r} needs a scores output ({have}): name it"
        )
    spec = find_output(outputs, head.scores, "scores")
    check_rank(spec, "scores", (2, 3), "a scores")
    return spec


def check(head: Any, outputs: Sequence[TensorSpec]) -> Any:
    """The head with its defaults filled from the signature; HeadError naming the field when an
    output is missing or has the wrong rank or size."""
    given = head.model_fields_set
    update: dict[str, Any] = {}
    boxes = find_output(outputs, head.boxes, "boxes")
    classes_count: int | None = None
    if head.decoder == "boxes":
        check_rank(boxes, "boxes", (3,), "a boxes")
        if boxes.shape[2] is not None and boxes.shape[2] != 4:
            raise HeadError(
                "boxes",
                f"boxes output {boxes.name} must hold 4 values per box, "
                f"it has shape {dims(boxes.shape)}",
            )
        scores = _scores_spec(head, outputs)
        _same_count(boxes, scores, "scores")
        if len(scores.shape) == 3:
            classes_count = scores.shape[2]
        if head.classes:
            spec = find_output(outputs, head.classes, "classes")
            check_rank(spec, "classes", (2,), "a classes")
            _same_count(boxes, spec, "classes")
        if head.count:
            check_rank(find_output(outputs, head.count, "count"), "count", (1, 2), "a count")
    elif head.decoder == "anchors":
        if head.anchors is None:
            raise HeadError(
                "anchors",
                "decoder 'anchors' needs an anchors spec (num_layers, strides, input size: "
                "MediaPipe's SsdAnchorsCalculator options)",
            )
        check_rank(boxes, "boxes", (3,), "an anchor offsets")
        count = len(generate_anchors(head.anchors))
        if boxes.shape[1] is not None and boxes.shape[1] != count:
            raise HeadError(
                "anchors",
                f"the anchors spec makes {count} anchors, but output {boxes.name} "
                f"{dims(boxes.shape)} has {boxes.shape[1]} boxes",
            )
        values = boxes.shape[2]
        keypoints = head.keypoints
        if "keypoints" not in given and values is not None and values > 4:
            keypoints = (values - 4) // 2
            update["keypoints"] = keypoints
        if values is not None and values < 4 + 2 * keypoints:
            raise HeadError(
                "keypoints",
                f"{keypoints} keypoints need {4 + 2 * keypoints} values per box; output "
                f"{boxes.name} {dims(boxes.shape)} has {values}",
            )
        scores = _scores_spec(head, outputs)
        _same_count(boxes, scores, "scores")
        classes_count = scores.shape[2] if len(scores.shape) == 3 else 1
        if "box_format" not in given:
            update["box_format"] = "cxcywh"
        if head.box_scale is None:
            w, h = float(head.anchors.input_size_width), float(head.anchors.input_size_height)
            update["box_scale"] = [w, h, w, h]
    else:
        check_rank(boxes, "boxes", (3,), "a YOLO candidates")
        yolo = head.yolo or YoloSpec()
        update["yolo"] = yolo
        values = boxes.shape[1] if yolo.transposed else boxes.shape[2]
        need = 4 + (1 if yolo.objectness else 0) + 1
        if values is not None and values < need:
            raise HeadError(
                "boxes",
                f"YOLO output {boxes.name} {dims(boxes.shape)} has {values} values per "
                f"candidate; it needs at least {need} (box, "
                f"{'objectness, ' if yolo.objectness else ''}class scores)",
            )
        if values is not None:
            classes_count = values - need + 1
        if "box_format" not in given:
            update["box_format"] = "cxcywh"
        if "normalized" not in given:
            update["normalized"] = False
    if head.labels and classes_count is not None and len(head.labels) != classes_count:
        raise HeadError(
            "labels", f"{len(head.labels)} labels for {classes_count} classes of the model"
        )
    return head.model_copy(update=update)


# -- decoding -----------------------------------------------------------------------------------
@dataclass
class _Candidates:
    boxes: np.ndarray  # (K, 4) xyxy, model-input coordinates (fractions when `normalized`)
    scores: np.ndarray  # (K,)
    classes: np.ndarray  # (K,) int
    keypoints: np.ndarray | None  # (K, P, 2) x, y
    normalized: bool


def _sigmoid(x: np.ndarray) -> np.ndarray:
    clipped = np.clip(x, -_CLIP, _CLIP)
    out: np.ndarray = 1.0 / (1.0 + np.exp(-clipped))
    return out


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return _sigmoid(x)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
        return out
    return x


def _best_class(scores: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores (K,) or (K, C) to the best score and its class per entry."""
    scores = _activate(scores, activation)
    if scores.ndim == 1:
        return scores, np.zeros(len(scores), dtype=np.int64)
    return scores.max(axis=1), scores.argmax(axis=1).astype(np.int64)


def _to_xyxy(raw: np.ndarray, box_format: str) -> np.ndarray:
    a, b, c, d = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    if box_format == "xyxy":
        cols = (a, b, c, d)
    elif box_format == "yxyx":
        cols = (b, a, d, c)
    elif box_format == "xywh":
        cols = (a, b, a + c, b + d)
    else:  # cxcywh
        cols = (a - c / 2, b - d / 2, a + c / 2, b + d / 2)
    return np.stack(cols, axis=1)


def _row(outputs: Mapping[str, np.ndarray], name: str, r: int) -> np.ndarray:
    return np.asarray(outputs[name][r], dtype=np.float64)


def _from_boxes(head: DetectionHead, outputs: Mapping[str, np.ndarray], r: int) -> _Candidates:
    assert head.scores is not None
    raw = _row(outputs, head.boxes, r).reshape(-1, 4)
    scores, classes = _best_class(_row(outputs, head.scores, r), head.score_activation)
    if head.classes:
        classes = np.rint(_row(outputs, head.classes, r).reshape(-1)).astype(np.int64)
    k = len(raw)
    if head.count:
        k = max(0, min(k, int(_row(outputs, head.count, r).reshape(-1)[0])))
    return _Candidates(
        _to_xyxy(raw[:k], head.box_format), scores[:k], classes[:k], None, head.normalized
    )


def _anchor_offsets(raw: np.ndarray, box_format: str) -> tuple[np.ndarray, ...]:
    """MediaPipe's three offset orders to (x_center, y_center, w, h)."""
    a, b, c, d = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    if box_format == "yxyx":  # MediaPipe YXHW
        return b, a, d, c
    if box_format == "xyxy":  # MediaPipe XYXY: distances to the edges
        return (c - a) / 2, (d - b) / 2, c + a, d + b
    return a, b, c, d  # XYWH


def _from_anchors(
    head: DetectionHead, outputs: Mapping[str, np.ndarray], r: int, anchors: np.ndarray
) -> _Candidates:
    assert head.scores is not None and head.box_scale is not None
    raw_scores = np.asarray(outputs[head.scores][r]).reshape(len(anchors), -1)
    if raw_scores.shape[1] == 1 and head.score_activation == "sigmoid":
        # one class through a sigmoid: threshold the logits, activate only what passes
        logits = raw_scores[:, 0]
        t = head.score_threshold
        bar = -np.inf if t <= 0 else np.inf if t >= 1 else math.log(t / (1 - t))
        keep = np.flatnonzero(np.clip(logits, -_CLIP, _CLIP) >= bar)
        scores = _sigmoid(logits[keep].astype(np.float64))
        passed = scores >= t  # at the bar, rounding: the threshold itself decides
        keep, scores = keep[passed], scores[passed]
        classes = np.zeros(len(keep), dtype=np.int64)
    else:
        scores, classes = _best_class(
            raw_scores[:, 0].astype(np.float64)
            if raw_scores.shape[1] == 1
            else raw_scores.astype(np.float64),
            head.score_activation,
        )
        keep = np.flatnonzero(scores >= head.score_threshold)
        scores, classes = scores[keep], classes[keep]
    # only the anchors that pass the score threshold are decoded (as MediaPipe does)
    anchors = anchors[keep]
    boxes_out = np.asarray(outputs[head.boxes][r])
    raw = boxes_out.reshape(len(raw_scores), -1)[keep].astype(np.float64)
    x_scale, y_scale, w_scale, h_scale = head.box_scale
    ax, ay, aw, ah = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    x, y, w, h = _anchor_offsets(raw[:, :4], head.box_format)
    cx = x / x_scale * aw + ax
    cy = y / y_scale * ah + ay
    if head.box_exp:
        w, h = np.exp(w / w_scale) * aw, np.exp(h / h_scale) * ah
    else:
        w, h = w / w_scale * aw, h / h_scale * ah
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keypoints = None
    if head.keypoints:
        kp = raw[:, 4 : 4 + 2 * head.keypoints].reshape(len(anchors), head.keypoints, 2)
        if head.box_format == "yxyx":
            kp = kp[:, :, ::-1]
        kx = kp[:, :, 0] / x_scale * aw[:, None] + ax[:, None]
        ky = kp[:, :, 1] / y_scale * ah[:, None] + ay[:, None]
        keypoints = np.stack([kx, ky], axis=2)
    return _Candidates(boxes, scores, classes, keypoints, True)


def _from_yolo(head: DetectionHead, outputs: Mapping[str, np.ndarray], r: int) -> _Candidates:
    yolo = head.yolo or YoloSpec()
    raw = _row(outputs, head.boxes, r)
    if yolo.transposed:
        raw = raw.T
    boxes = _to_xyxy(raw[:, :4], head.box_format)
    start = 5 if yolo.objectness else 4
    cls = _activate(raw[:, start:], head.score_activation)
    if yolo.objectness:
        cls = cls * _activate(raw[:, 4:5], head.score_activation)
    scores, classes = cls.max(axis=1), cls.argmax(axis=1).astype(np.int64)
    return _Candidates(boxes, scores, classes, None, head.normalized)


def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by OpenCV's NMS (per class), best score first."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1
    )
    # scores are already filtered: shifted to >= 1 (same order), OpenCV's threshold keeps all
    ranked = (scores - scores.min() + 1.0).astype(np.float32)
    kept: list[np.ndarray] = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        picked = cv2.dnn.NMSBoxes(xywh[idx].tolist(), ranked[idx].tolist(), 0.0, iou)
        kept.append(idx[np.asarray(picked, dtype=np.int64).reshape(-1)])
    order = np.concatenate(kept)
    result: np.ndarray = order[np.argsort(-scores[order], kind="stable")]
    return result


def _input_size(head: DetectionHead, geometry: Geometry | None) -> tuple[float, float] | None:
    if geometry is not None:
        return float(geometry.input_width), float(geometry.input_height)
    if head.anchors is not None:
        return float(head.anchors.input_size_width), float(head.anchors.input_size_height)
    return None


def _label(head: DetectionHead, c: int) -> str | None:
    return head.labels[c] if 0 <= c < len(head.labels) else None


def _finish(
    head: DetectionHead, cand: _Candidates, geometry: Geometry | None
) -> list[dict[str, Any]]:
    # as MediaPipe does (b/171391719), boxes of a negative or NaN size go
    w, h = cand.boxes[:, 2] - cand.boxes[:, 0], cand.boxes[:, 3] - cand.boxes[:, 1]
    sized = (w >= 0) & (h >= 0) & ~np.isnan(w) & ~np.isnan(h)
    keep = np.flatnonzero(sized & (cand.scores >= head.score_threshold))
    boxes, scores, classes = cand.boxes[keep], cand.scores[keep], cand.classes[keep]
    keypoints = cand.keypoints[keep] if cand.keypoints is not None else None
    size = _input_size(head, geometry)
    if cand.normalized:
        sx, sy = size if size is not None else (1.0, 1.0)
        boxes = boxes * np.array([sx, sy, sx, sy])
        if keypoints is not None:
            keypoints = keypoints * np.array([sx, sy])
        bound: tuple[float, float] | None = (sx, sy)
    else:
        bound = size
    order = _nms(boxes, scores, classes, head.iou_threshold)[: head.max_detections]
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    keypoints = keypoints[order] if keypoints is not None else None
    if geometry is not None:
        x1, y1 = geometry.to_image(boxes[:, 0], boxes[:, 1])
        x2, y2 = geometry.to_image(boxes[:, 2], boxes[:, 3])
        boxes = np.stack([x1, y1, x2, y2], axis=1)
        if keypoints is not None:
            kx, ky = geometry.to_image(keypoints[:, :, 0], keypoints[:, :, 1])
            keypoints = np.stack([kx, ky], axis=2)
        bound = (float(geometry.image_width), float(geometry.image_height))
    if bound is not None:
        boxes = np.clip(boxes, 0.0, np.array([bound[0], bound[1], bound[0], bound[1]]))
    out: list[dict[str, Any]] = []
    for i in range(len(boxes)):
        c = int(classes[i])
        det: dict[str, Any] = {
            "box": [float(v) for v in boxes[i]],
            "score": float(scores[i]),
            "class": c,
            "label": _label(head, c),
        }
        if keypoints is not None:
            det["keypoints"] = [[float(x), float(y)] for x, y in keypoints[i]]
        out.append(det)
    return out


def decode_detection(
    head: DetectionHead,
    outputs: Mapping[str, np.ndarray],
    rows: int,
    geometry: Sequence[Geometry | None] | None = None,
) -> list[dict[str, Any]]:
    """One `{"task": "detection", "detections": [...]}` per row (see the module's docstring)."""
    geo = list(geometry) if geometry is not None else [None] * rows
    anchors = generate_anchors(head.anchors) if head.decoder == "anchors" and head.anchors else None
    if head.decoder == "anchors" and head.box_scale is None and head.anchors is not None:
        w, h = float(head.anchors.input_size_width), float(head.anchors.input_size_height)
        head = head.model_copy(update={"box_scale": [w, h, w, h]})
    results = []
    for r in range(rows):
        if head.decoder == "anchors":
            if anchors is None:
                raise HeadError("anchors", "decoder 'anchors' needs an anchors spec")
            cand = _from_anchors(head, outputs, r, anchors)
        elif head.decoder == "yolo":
            cand = _from_yolo(head, outputs, r)
        else:
            cand = _from_boxes(head, outputs, r)
        results.append({"task": "detection", "detections": _finish(head, cand, geo[r])})
    return results
