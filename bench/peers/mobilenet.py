"""A MobileNetV2-shaped ONNX model with random weights (no download): torchvision's layer
plan (inverted residuals, ReLU6, 1280-wide head, 1000 classes), batch norm folded into the
convolutions' biases as an exported, optimised model has it, softmax scores out.
Input `x`: [N, 3, 224, 224] float32 (NCHW)."""

from __future__ import annotations

import numpy as np

# (expansion t, channels c, repeats n, first stride s): torchvision's mobilenet_v2
PLAN = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
PLAN += [(6, 160, 3, 2), (6, 320, 1, 1)]
CLASSES = 1000
SIZE = 224


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[object] = []
        self.inits: list[object] = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, groups: int = 1) -> str:
        from onnx import helper, numpy_helper

        fan_in = c_in // groups * k * k
        w = self.rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(c_out) * 0.01
        wn, bn, out = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [
            numpy_helper.from_array(w.astype(np.float32), wn),
            numpy_helper.from_array(b.astype(np.float32), bn),
        ]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=groups,
            )
        )
        return out

    def relu6(self, x: str) -> str:
        from onnx import helper, numpy_helper

        if not any(getattr(i, "name", "") == "zero" for i in self.inits):
            self.inits += [
                numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                numpy_helper.from_array(np.array(6.0, np.float32), "six"),
            ]
        out = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, "zero", "six"], [out]))
        return out

    def add(self, a: str, b: str) -> str:
        from onnx import helper

        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out]))
        return out


def mobilenet_v2_bytes(seed: int = 0) -> bytes:
    """The serialized model (about 14 MB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(seed)
    x = g.relu6(g.conv("x", 3, 32, 3, 2))
    c_in = 32
    for t, c, n, s in PLAN:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            h = x
            if t != 1:
                h = g.relu6(g.conv(h, c_in, hidden, 1, 1))
            h = g.relu6(g.conv(h, hidden, hidden, 3, stride, groups=hidden))
            h = g.conv(h, hidden, c, 1, 1)
            x = g.add(x, h) if stride == 1 and c_in == c else h
            c_in = c
    x = g.relu6(g.conv(x, c_in, 1280, 1, 1))
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    w = g.rng.standard_normal((1280, CLASSES)) * 0.01
    g.inits += [
        numpy_helper.from_array(w.astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    g.nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]))
    g.nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    graph = helper.make_graph(
        g.nodes,  # type: ignore[arg-type]
        "mobilenet_v2_random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])],
        g.inits,  # type: ignore[arg-type]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# what the hub's `preprocess` step and every peer apply to a JPEG (ImageNet's normalisation)
PREPROCESSING = {
    "input_kind": "image",
    "layout": "NCHW",
    "size": [SIZE, SIZE],
    "color": "rgb",
    "scale": 1.0 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
