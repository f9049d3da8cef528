"""converters.keras_convert: Keras CNN to ONNX and TFLite, checked with real runtimes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from converters import ConversionError, keras_to_onnx, keras_to_tflite
from edge_agent.core.runtimes import load_runtime

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_keras_to_onnx_agrees(digits_cnn: Any, digits_images: Data) -> None:
    _, X_test, _, _ = digits_images
    model = keras_to_onnx(digits_cnn)
    runtime = load_runtime(model, "onnx")
    assert runtime.inputs[0].name == "input"
    assert runtime.inputs[0].shape == [None, 8, 8, 1]
    assert [o.name for o in runtime.outputs] == ["probabilities"]
    expected = digits_cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    assert _agreement(scores, expected) >= 0.99
    assert np.abs(scores - expected).max() < 1e-4
    assert runtime.predict(X_test[:1]).shape == (1, 10)


def test_keras_to_tflite_fp32_agrees(digits_cnn: Any, digits_images: Data) -> None:
    _, X_test, _, _ = digits_images
    model = keras_to_tflite(digits_cnn)
    n_params = digits_cnn.count_params()
    assert len(model) > 4 * n_params  # all fp32 weights are in the file
    runtime = load_runtime(model, "tflite")
    expected = digits_cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    assert _agreement(scores, expected) >= 0.99
    assert np.abs(scores - expected).max() < 1e-4


def test_keras_to_tflite_int8_keeps_accuracy(digits_cnn: Any, digits_images: Data) -> None:
    X_train, X_test, _, y_test = digits_images
    fp32 = keras_to_tflite(digits_cnn)
    int8 = keras_to_tflite(digits_cnn, representative=X_train[:200])
    assert len(int8) < 0.4 * len(fp32)
    runtime = load_runtime(int8, "tflite")
    # float32 in and out: callers feed floats
    assert runtime.inputs[0].dtype == "float32"
    assert runtime.outputs[0].dtype == "float32"
    expected = digits_cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    fp32_accuracy = np.mean(expected.argmax(1) == y_test)
    int8_accuracy = np.mean(scores.argmax(1) == y_test)
    assert fp32_accuracy >= 0.9
    assert int8_accuracy >= fp32_accuracy - 0.02
    assert _agreement(scores, expected) >= 0.98


def test_tflite_int8_ops_are_quantized(digits_cnn: Any, digits_images: Data) -> None:
    from ai_edge_litert.interpreter import Interpreter

    int8 = keras_to_tflite(digits_cnn, representative=digits_images[0][:100])
    interpreter = Interpreter(model_content=int8)
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes and np.int32 in dtypes  # int8 weights/activations, int32 biases


def test_bad_representative_data_is_refused(digits_cnn: Any) -> None:
    with pytest.raises(
        ConversionError, match=r"representative data must have shape \(N, 8, 8, 1\)"
    ):
        keras_to_tflite(digits_cnn, representative=np.zeros((10, 64), np.float32))
    with pytest.raises(ConversionError, match="empty"):
        keras_to_tflite(digits_cnn, representative=np.zeros((0, 8, 8, 1), np.float32))
