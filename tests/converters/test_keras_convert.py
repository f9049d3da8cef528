"""converters.keras_convert: Keras CNN to ONNX and TFLite, checked with real runtimes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from converters import ConversionError, keras_to_onnx, keras_to_tflite
from converters._tf import import_tensorflow
from edge_agent.runtimes import load_runtime

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def data() -> Data:
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    X_train, X_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def cnn(data: Data) -> Any:
    import_tensorflow()
    import keras

    X_train, _, y_train, _ = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="input"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(X_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_keras_to_onnx_agrees(cnn: Any, data: Data) -> None:
    _, X_test, _, _ = data
    model = keras_to_onnx(cnn)
    runtime = load_runtime(model, "onnx")
    assert runtime.inputs[0].name == "input"
    assert runtime.inputs[0].shape == [None, 8, 8, 1]
    assert [o.name for o in runtime.outputs] == ["probabilities"]
    expected = cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    assert _agreement(scores, expected) >= 0.99
    assert np.abs(scores - expected).max() < 1e-4
    assert runtime.predict(X_test[:1]).shape == (1, 10)


def test_keras_to_tflite_fp32_agrees(cnn: Any, data: Data) -> None:
    _, X_test, _, _ = data
    model = keras_to_tflite(cnn)
    n_params = cnn.count_params()
    assert len(model) > 4 * n_params  # all fp32 weights are in the file
    runtime = load_runtime(model, "tflite")
    expected = cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    assert _agreement(scores, expected) >= 0.99
    assert np.abs(scores - expected).max() < 1e-4


def test_keras_to_tflite_int8_keeps_accuracy(cnn: Any, data: Data) -> None:
    X_train, X_test, _, y_test = data
    fp32 = keras_to_tflite(cnn)
    int8 = keras_to_tflite(cnn, representative=X_train[:200])
    assert len(int8) < 0.4 * len(fp32)
    runtime = load_runtime(int8, "tflite")
    # float32 in and out: callers feed floats
    assert runtime.inputs[0].dtype == "float32"
    assert runtime.outputs[0].dtype == "float32"
    expected = cnn.predict(X_test, verbose=0)
    scores = runtime.predict(X_test)
    fp32_accuracy = np.mean(expected.argmax(1) == y_test)
    int8_accuracy = np.mean(scores.argmax(1) == y_test)
    assert fp32_accuracy >= 0.9
    assert int8_accuracy >= fp32_accuracy - 0.02
    assert _agreement(scores, expected) >= 0.98


def test_tflite_int8_ops_are_quantized(cnn: Any, data: Data) -> None:
    from ai_edge_litert.interpreter import Interpreter

    int8 = keras_to_tflite(cnn, representative=data[0][:100])
    interpreter = Interpreter(model_content=int8)
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes and np.int32 in dtypes  # int8 weights/activations, int32 biases


def test_bad_representative_data_is_refused(cnn: Any) -> None:
    with pytest.raises(
        ConversionError, match=r"representative data must have shape \(N, 8, 8, 1\)"
    ):
        keras_to_tflite(cnn, representative=np.zeros((10, 64), np.float32))
    with pytest.raises(ConversionError, match="empty"):
        keras_to_tflite(cnn, representative=np.zeros((0, 8, 8, 1), np.float32))
