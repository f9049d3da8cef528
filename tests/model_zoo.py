"""Small ONNX models built in code, for tests: each output a simple function of the input.

Every builder returns a `ZooModel`: the serialised model (`data`), its head JSON (or None), a
preprocessing spec for the image models, a one-line description, and `reference(feeds)`, the
same outputs computed in numpy, so a test can check a runtime's tensors (exactly for slices,
reshapes, transposes and element-wise ops; MatMul and Conv to float32 rounding, np.allclose) and
then decode them itself.

- `ssd_detector()`: [1, 64, 64, 3] -> regressors [1, 16, 6] and classificators [1, 16, 1], the
  first 96 and next 16 values of the flattened input; anchors: one layer, stride 16 (a 4 x 4
  grid of fixed-size anchors), one keypoint per box, scale 64 (offsets are input pixels).
- `box_detector()`: [None, 24] -> boxes [None, 4, 4] (xyxy fractions, values 0..15) and
  scores [None, 4, 2] (values 16..23), two classes.
- `yolo_detector()`: [None, 4, 6] -> output0 [None, 6, 4], YOLOv8's layout (the input
  transposed: cx, cy, w, h in input pixels, then 2 class scores, per candidate).
- `keypoint_model()`: [None, 32, 32, 3] -> points [None, 15] (5 points x, y, z: the first 15
  flattened values times 32) and presence [None, 1] (value 15, a logit).
- `segmentation_model()`: [None, 3, 16, 16] NCHW -> logits [None, 3, 16, 16], a 1x1
  convolution with the fixed `SEG_WEIGHTS` and `SEG_BIAS`.
- `embedding_model()`: [None, 4] -> embedding [None, 8] = x @ EMB_WEIGHTS + EMB_BIAS.
- `multi_input_model()`: inputs a [None, 3] and b [None, 3] -> sum a + b and product a * b.
- `fixed_batch_model()`: x [3, 2] (a fixed batch of 3) -> y = 2 x + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "EMB_BIAS",
    "EMB_WEIGHTS",
    "SEG_BIAS",
    "SEG_WEIGHTS",
    "ZooModel",
    "all_zoo_models",
    "box_detector",
    "embedding_model",
    "fixed_batch_model",
    "keypoint_model",
    "multi_input_model",
    "segmentation_model",
    "ssd_detector",
    "yolo_detector",
]

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    """A test model: ONNX bytes, its head and preprocessing (or None), and its numpy twin."""

    name: str
    data: bytes
    head: dict[str, Any] | None
    description: str
    reference: Callable[[Feeds], Feeds]
    preprocessing: dict[str, Any] | None = None


SEG_WEIGHTS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, -1.0]], dtype=np.float32)
SEG_BIAS = np.array([0.0, 0.0, 0.25], dtype=np.float32)
EMB_WEIGHTS = (np.arange(32, dtype=np.float32).reshape(4, 8) - 16.0) / 8.0
EMB_BIAS = np.linspace(-1.0, 1.0, 8, dtype=np.float32)


def _value(name: str, shape: Sequence[int | None]) -> onnx.ValueInfoProto:
    dims: list[int | str | None] = [d if d is not None else "N" for d in shape]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgepilot-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _slice(src: str, dst: str, start: int, end: int, axis: int = 1) -> tuple[list[Any], list[Any]]:
    """Nodes and constants for dst = src[:, start:end] (along `axis`)."""
    names = [f"{dst}_starts", f"{dst}_ends", f"{dst}_axes"]
    consts = [
        _const(names[0], np.array([start], np.int64)),
        _const(names[1], np.array([end], np.int64)),
        _const(names[2], np.array([axis], np.int64)),
    ]
    return [helper.make_node("Slice", [src, *names], [dst])], consts


def _reshape(src: str, dst: str, shape: Sequence[int]) -> tuple[list[Any], list[Any]]:
    const = _const(f"{dst}_shape", np.array(list(shape), np.int64))
    return [helper.make_node("Reshape", [src, f"{dst}_shape"], [dst])], [const]


# -- detectors ----------------------------------------------------------------------------------
SSD_ANCHORS = {
    "num_layers": 1,
    "strides": [16],
    "input_size_height": 64,
    "input_size_width": 64,
    "aspect_ratios": [1.0],
    "interpolated_scale_aspect_ratio": 0.0,
    "fixed_anchor_size": True,
}


def ssd_detector() -> ZooModel:
    nodes: list[Any] = [helper.make_node("Flatten", ["image"], ["flat"], axis=1)]
    inits: list[Any] = []
    for part in (
        _slice("flat", "raw_boxes", 0, 96),
        _reshape("raw_boxes", "regressors", [1, 16, 6]),
        _slice("flat", "raw_scores", 96, 112),
        _reshape("raw_scores", "classificators", [1, 16, 1]),
    ):
        nodes += part[0]
        inits += part[1]
    data = _model(
        "ssd",
        nodes,
        [_value("image", [1, 64, 64, 3])],
        [_value("regressors", [1, 16, 6]), _value("classificators", [1, 16, 1])],
        inits,
    )

    def reference(feeds: Feeds) -> Feeds:
        flat = feeds["image"].reshape(1, -1)
        return {
            "regressors": flat[:, :96].reshape(1, 16, 6),
            "classificators": flat[:, 96:112].reshape(1, 16, 1),
        }

    head = {
        "task": "detection",
        "decoder": "anchors",
        "boxes": "regressors",
        "scores": "classificators",
        "box_format": "cxcywh",
        "score_activation": "sigmoid",
        "score_threshold": 0.5,
        "iou_threshold": 0.3,
        "labels": ["thing"],
        "keypoints": 1,
        "box_scale": [64.0, 64.0, 64.0, 64.0],
        "anchors": dict(SSD_ANCHORS),
    }
    return ZooModel(
        "ssd_detector",
        data,
        head,
        "SSD-style: 16 anchors (4x4 grid, stride 16), offsets and score logits sliced from the "
        "input",
        reference,
        {"input_kind": "image", "size": [64, 64], "color": "rgb", "resize": "letterbox"},
    )


def box_detector() -> ZooModel:
    nodes: list[Any] = []
    inits: list[Any] = []
    for part in (
        _slice("x", "raw_boxes", 0, 16),
        _reshape("raw_boxes", "boxes", [-1, 4, 4]),
        _slice("x", "raw_scores", 16, 24),
        _reshape("raw_scores", "scores", [-1, 4, 2]),
    ):
        nodes += part[0]
        inits += part[1]
    data = _model(
        "boxes",
        nodes,
        [_value("x", [None, 24])],
        [_value("boxes", [None, 4, 4]), _value("scores", [None, 4, 2])],
        inits,
    )

    def reference(feeds: Feeds) -> Feeds:
        x = feeds["x"]
        return {"boxes": x[:, :16].reshape(-1, 4, 4), "scores": x[:, 16:24].reshape(-1, 4, 2)}

    head = {
        "task": "detection",
        "decoder": "boxes",
        "boxes": "boxes",
        "scores": "scores",
        "box_format": "xyxy",
        "normalized": True,
        "score_threshold": 0.3,
        "iou_threshold": 0.5,
        "labels": ["cat", "dog"],
    }
    return ZooModel(
        "box_detector",
        data,
        head,
        "decoded boxes (xyxy fractions) and two-class scores, sliced from a [None, 24] input",
        reference,
    )


def yolo_detector() -> ZooModel:
    nodes = [helper.make_node("Transpose", ["x"], ["output0"], perm=[0, 2, 1])]
    data = _model("yolo", nodes, [_value("x", [None, 4, 6])], [_value("output0", [None, 6, 4])], [])

    def reference(feeds: Feeds) -> Feeds:
        return {"output0": np.ascontiguousarray(feeds["x"].transpose(0, 2, 1))}

    head = {
        "task": "detection",
        "decoder": "yolo",
        "boxes": "output0",
        "yolo": {"objectness": False, "transposed": True},
        "normalized": False,
        "score_threshold": 0.25,
        "iou_threshold": 0.45,
        "labels": ["person", "car"],
    }
    return ZooModel(
        "yolo_detector",
        data,
        head,
        "YOLOv8 layout [None, 4 + 2, 4]: the [None, 4, 6] input transposed",
        reference,
    )


# -- other tasks --------------------------------------------------------------------------------
def keypoint_model() -> ZooModel:
    nodes: list[Any] = [helper.make_node("Flatten", ["image"], ["flat"], axis=1)]
    inits: list[Any] = [_const("px", np.array(32.0, np.float32))]
    for part in (_slice("flat", "raw_points", 0, 15), _slice("flat", "presence", 15, 16)):
        nodes += part[0]
        inits += part[1]
    nodes.append(helper.make_node("Mul", ["raw_points", "px"], ["points"]))
    data = _model(
        "keypoints",
        nodes,
        [_value("image", [None, 32, 32, 3])],
        [_value("points", [None, 15]), _value("presence", [None, 1])],
        inits,
    )

    def reference(feeds: Feeds) -> Feeds:
        flat = feeds["image"].reshape(len(feeds["image"]), -1)
        return {"points": flat[:, :15] * np.float32(32.0), "presence": flat[:, 15:16]}

    head = {
        "task": "keypoints",
        "output": "points",
        "values_per_point": 3,
        "normalized": False,
        "presence": "presence",
        "presence_activation": "sigmoid",
    }
    return ZooModel(
        "keypoint_model",
        data,
        head,
        "5 points (x, y, z in input pixels: the first 15 flattened values x 32), presence logit",
        reference,
        {"input_kind": "image", "size": [32, 32], "color": "rgb", "scale": 1 / 255},
    )


def segmentation_model() -> ZooModel:
    weights = SEG_WEIGHTS.reshape(3, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"], kernel_shape=[1, 1])]
    data = _model(
        "segmentation",
        nodes,
        [_value("image", [None, 3, 16, 16])],
        [_value("logits", [None, 3, 16, 16])],
        [_const("w", weights), _const("b", SEG_BIAS)],
    )

    def reference(feeds: Feeds) -> Feeds:
        x = feeds["image"]
        out = np.einsum("oc,nchw->nohw", SEG_WEIGHTS, x) + SEG_BIAS[None, :, None, None]
        return {"logits": out.astype(np.float32)}

    head = {
        "task": "segmentation",
        "output": "logits",
        "layout": "NCHW",
        "labels": ["red", "green", "dark"],
        "activation": "softmax",
    }
    return ZooModel(
        "segmentation_model",
        data,
        head,
        "NCHW class logits: a fixed 1x1 convolution of the 3 channels",
        reference,
        {
            "input_kind": "image",
            "layout": "NCHW",
            "size": [16, 16],
            "color": "rgb",
            "scale": 1 / 255,
        },
    )


def embedding_model() -> ZooModel:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["embedding"]),
    ]
    data = _model(
        "embedding",
        nodes,
        [_value("x", [None, 4])],
        [_value("embedding", [None, 8])],
        [_const("w", EMB_WEIGHTS), _const("b", EMB_BIAS)],
    )

    def reference(feeds: Feeds) -> Feeds:
        return {"embedding": (feeds["x"] @ EMB_WEIGHTS + EMB_BIAS).astype(np.float32)}

    return ZooModel(
        "embedding_model",
        data,
        {"task": "embedding", "output": "embedding", "normalize": False},
        "an 8-vector per row: x @ EMB_WEIGHTS + EMB_BIAS",
        reference,
    )


def multi_input_model() -> ZooModel:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["product"]),
    ]
    data = _model(
        "multi",
        nodes,
        [_value("a", [None, 3]), _value("b", [None, 3])],
        [_value("sum", [None, 3]), _value("product", [None, 3])],
        [],
    )

    def reference(feeds: Feeds) -> Feeds:
        return {"sum": feeds["a"] + feeds["b"], "product": feeds["a"] * feeds["b"]}

    return ZooModel(
        "multi_input_model",
        data,
        None,
        "two inputs by name (a, b) -> their sum and product",
        reference,
    )


def fixed_batch_model() -> ZooModel:
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
    ]
    data = _model(
        "fixed",
        nodes,
        [_value("x", [3, 2])],
        [_value("y", [3, 2])],
        [_const("two", np.array(2.0, np.float32)), _const("one", np.array(1.0, np.float32))],
    )

    def reference(feeds: Feeds) -> Feeds:
        return {"y": feeds["x"] * np.float32(2.0) + np.float32(1.0)}

    return ZooModel(
        "fixed_batch_model", data, None, "a fixed batch of 3 rows: y = 2 x + 1", reference
    )


def all_zoo_models() -> dict[str, ZooModel]:
    """Every zoo model by name."""
    builders = (
        ssd_detector,
        box_detector,
        yolo_detector,
        keypoint_model,
        segmentation_model,
        embedding_model,
        multi_input_model,
        fixed_batch_model,
    )
    models = [build() for build in builders]
    return {m.name: m for m in models}
