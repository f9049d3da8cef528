"""Keras 3 (TensorFlow backend) models to ONNX (tf2onnx) and TFLite (TFLiteConverter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from converters._tf import import_tensorflow
from converters.errors import ConversionError
from converters.quiet import quiet

ONNX_OPSET = 17
#: Name given to the class-score output of converted graphs.
SCORES_NAME = "probabilities"
#: How many representative samples the int8 TFLite converter calibrates on, at most.
MAX_REPRESENTATIVE = 300


def _input_shape(model: Any) -> tuple[int, ...]:
    shape = tuple(model.input_shape)
    if any(d is None for d in shape[1:]):
        raise ConversionError(f"the model's per-sample input shape must be fixed, got {shape}")
    return tuple(int(d) for d in shape[1:])


def _rename_output(proto: Any, old: str, new: str) -> None:
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for out in proto.graph.output:
        if out.name == old:
            out.name = new


def keras_to_onnx(model: Any) -> bytes:
    """Convert a Keras classifier to ONNX: input "input" [None, *shape], output "probabilities"."""
    tf = import_tensorflow()
    shape = _input_shape(model)
    spec = tf.TensorSpec((None, *shape), tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def serve(x: Any) -> Any:
        return model(x, training=False)

    import tf2onnx

    try:
        with quiet():
            proto, _ = tf2onnx.convert.from_function(
                serve, input_signature=[spec], opset=ONNX_OPSET
            )
    except Exception as exc:  # tf2onnx raises whatever its handlers raise
        raise ConversionError(f"tf2onnx cannot convert the model: {exc}") from exc
    if len(proto.graph.output) != 1:
        raise ConversionError(f"expected one output, tf2onnx made {len(proto.graph.output)}")
    _rename_output(proto, proto.graph.output[0].name, SCORES_NAME)
    data: bytes = proto.SerializeToString()
    return data


def keras_to_tflite(model: Any, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras classifier to TFLite.

    Without `representative` the model stays float32. With it (a few hundred samples shaped like
    the model's input) every op is quantized to int8 (TFLITE_BUILTINS_INT8) from the activation
    ranges seen on those samples; input and output stay float32 so callers feed floats.
    """
    tf = import_tensorflow()
    shape = _input_shape(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        samples = np.asarray(representative, dtype=np.float32)
        if samples.ndim != len(shape) + 1 or tuple(samples.shape[1:]) != shape:
            raise ConversionError(
                f"representative data must have shape (N, {', '.join(map(str, shape))}), "
                f"got {samples.shape}"
            )
        if len(samples) == 0:
            raise ConversionError("representative data is empty")
        samples = samples[:MAX_REPRESENTATIVE]

        def dataset() -> Iterator[list[np.ndarray]]:
            for sample in samples:
                yield [sample[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    try:
        with quiet():
            data: bytes = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and others
        raise ConversionError(f"TFLiteConverter cannot convert the model: {exc}") from exc
    return data
