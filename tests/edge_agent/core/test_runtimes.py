"""edge_agent.core.runtimes: real onnxruntime and LiteRT inference behind one interface."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from converters import keras_to_tflite, sklearn_to_onnx
from converters._tf import import_tensorflow
from edge_agent.core.runtimes import (
    ModelLoadError,
    TensorSpec,
    detect_format,
    load_runtime,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target


@pytest.fixture(scope="module")
def mlp(digits: tuple[np.ndarray, np.ndarray]) -> tuple[Any, bytes]:
    X, y = digits
    estimator = MLPClassifier((32,), max_iter=1000, random_state=0).fit(X, y)
    return estimator, sklearn_to_onnx(estimator, n_features=64)


@pytest.fixture(scope="module")
def keras_model(digits: tuple[np.ndarray, np.ndarray]) -> Any:
    import_tensorflow()
    import keras

    X, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="input"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(X.reshape(-1, 8, 8, 1), y, epochs=3, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def tflite_fp32(keras_model: Any) -> bytes:
    return keras_to_tflite(keras_model)


@pytest.fixture(scope="module")
def tflite_int8_io(keras_model: Any, digits: tuple[np.ndarray, np.ndarray]) -> bytes:
    """A TFLite model whose input and output tensors themselves are int8."""
    tf = import_tensorflow()
    images = digits[0].reshape(-1, 8, 8, 1)[:200]
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected"
        warnings.simplefilter("ignore", UserWarning)
        data: bytes = converter.convert()
    return data


def test_onnx_runtime_returns_class_probabilities(
    mlp: tuple[Any, bytes], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    estimator, data = mlp
    X, _ = digits
    runtime = load_runtime(data, "onnx")
    assert runtime.format == "onnx"
    assert runtime.inputs == [TensorSpec("input", [None, 64], "float32")]
    # skl2onnx emits the int64 label first: the score output is the second one
    assert [o.name for o in runtime.outputs] == ["label", "probabilities"]
    for n in (1, 7, 64, 300):
        scores = runtime.predict(X[:n])
        assert scores.shape == (n, 10)
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, estimator.predict_proba(X[:n]), atol=1e-5)


def test_onnx_runtime_casts_float64_input(mlp: tuple[Any, bytes]) -> None:
    estimator, data = mlp
    x = np.random.default_rng(0).random((5, 64))  # float64
    np.testing.assert_allclose(
        load_runtime(data, "onnx").predict(x), estimator.predict_proba(x), atol=1e-5
    )


def test_load_from_path_and_threads(mlp: tuple[Any, bytes], tmp_path: Path) -> None:
    _, data = mlp
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    x = np.random.default_rng(1).random((4, 64)).astype(np.float32)
    one = load_runtime(path, "onnx", threads=1).predict(x)
    two = load_runtime(path, "onnx", threads=2).predict(x)
    np.testing.assert_allclose(one, two, atol=1e-6)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        load_runtime(path, "onnx", threads=0)


def test_tflite_runtime_resizes_batch(
    tflite_fp32: bytes, keras_model: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits[0].reshape(-1, 8, 8, 1)
    runtime = load_runtime(tflite_fp32, "tflite")
    assert runtime.format == "tflite"
    assert runtime.inputs[0].shape == [None, 8, 8, 1]
    assert runtime.inputs[0].dtype == "float32"
    expected = keras_model.predict(images[:64], verbose=0)
    for n in (1, 5, 64, 5, 1):  # grow, shrink, grow again
        scores = runtime.predict(images[:n])
        assert scores.shape == (n, 10)
        np.testing.assert_allclose(scores, expected[:n], atol=1e-5)


def test_tflite_runtime_quantizes_int8_input_and_dequantizes_output(
    tflite_int8_io: bytes, keras_model: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits[0].reshape(-1, 8, 8, 1)
    runtime = load_runtime(tflite_int8_io, "tflite")
    assert runtime.inputs[0].dtype == "int8"
    assert runtime.outputs[0].dtype == "int8"
    scores = runtime.predict(images)
    assert scores.dtype == np.float32
    reference = keras_model.predict(images, verbose=0)
    # dequantized probabilities, not raw int8 codes
    assert scores.min() >= -0.01 and scores.max() <= 1.01
    assert np.abs(scores - reference).max() < 0.1
    assert np.mean(scores.argmax(1) == reference.argmax(1)) >= 0.97


def test_tflite_runtime_is_safe_across_threads(
    tflite_fp32: bytes, keras_model: Any, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits[0].reshape(-1, 8, 8, 1)
    runtime = load_runtime(tflite_fp32, "tflite")
    expected = keras_model.predict(images[:40], verbose=0)
    sizes = [1, 3, 8, 40] * 10

    def run(n: int) -> bool:
        return bool(np.allclose(runtime.predict(images[:n]), expected[:n], atol=1e-5))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, sizes))


@pytest.mark.parametrize(
    ("fmt", "bad", "message"),
    [
        ("onnx", np.zeros((3, 8, 8, 1)), r"expected input shape \[None, 64\], got \(3, 8, 8, 1\)"),
        ("onnx", np.zeros((3, 63)), r"expected input shape \[None, 64\], got \(3, 63\)"),
        ("onnx", np.zeros((0, 64)), "empty batch"),
        ("tflite", np.zeros((3, 64)), r"expected input shape \[None, 8, 8, 1\], got \(3, 64\)"),
        ("tflite", np.zeros((2, 8, 8, 3)), r"got \(2, 8, 8, 3\)"),
    ],
)
def test_wrong_input_shape_is_refused(
    fmt: str, bad: np.ndarray, message: str, mlp: tuple[Any, bytes], tflite_fp32: bytes
) -> None:
    data = mlp[1] if fmt == "onnx" else tflite_fp32
    runtime = load_runtime(data, fmt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        runtime.predict(bad)


def test_detect_format(mlp: tuple[Any, bytes], tflite_fp32: bytes) -> None:
    assert detect_format(mlp[1]) == "onnx"
    assert detect_format(tflite_fp32) == "tflite"
    assert detect_format(b"") is None
    assert detect_format(b"hello world, not a model") is None
    assert detect_format(np.random.default_rng(0).bytes(4096)) is None
    assert detect_format(mlp[1][: len(mlp[1]) // 2]) is None


def test_not_a_model_raises_model_load_error(
    mlp: tuple[Any, bytes], tflite_fp32: bytes, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="empty"):
        load_runtime(b"", "onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        load_runtime(b"garbage" * 100, "onnx")
    with pytest.raises(ModelLoadError, match="TFL3"):
        load_runtime(mlp[1], "tflite")  # an ONNX model is not TFLite
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        load_runtime(tflite_fp32, "onnx")
    with pytest.raises(ModelLoadError, match="LiteRT cannot load"):
        load_runtime(tflite_fp32[: len(tflite_fp32) // 2], "tflite")
    with pytest.raises(ModelLoadError, match="cannot read model file"):
        load_runtime(tmp_path / "missing.onnx", "onnx")
    with pytest.raises(ValueError, match="unknown model format"):
        load_runtime(mlp[1], "pt")  # type: ignore[arg-type]


def test_module_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edge_agent.core.runtimes; "
        "heavy = [m for m in ('onnxruntime', 'ai_edge_litert', 'tensorflow', 'onnx', 'torch') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
