"""Models with random weights, built here, for benchmarks and tests: real ONNX graphs that
onnxruntime runs, whose cost is known from their shape (nothing is downloaded)."""

from __future__ import annotations

import numpy as np

__all__ = ["random_mlp"]


def random_mlp(d_in: int, width: int, depth: int, classes: int = 10, seed: int = 0) -> bytes:
    """An ONNX MLP (Gemm + Relu layers, softmax) with random weights. Wide enough, a row costs
    about a millisecond alone on one thread, because its weights stream from memory for every
    call, while a batch reads them once for all its rows: the model where batching pays."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    dims = [d_in] + [width] * depth + [classes]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < depth:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["scores"], axis=1))
    graph = helper.make_graph(
        nodes,
        "random_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
