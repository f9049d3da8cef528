"""converters.quantize: onnxruntime int8 quantization of CNN and MLP graphs, run for real."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from converters import (
    ConversionError,
    QuantizationUnsupported,
    cpu_has_fast_int8,
    keras_to_onnx,
    quantize_onnx,
    sklearn_to_onnx,
)
from converters._tf import import_tensorflow
from edge_agent.runtimes import load_runtime

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """Small scikit-learn fits are faster (and not erratic on a busy CPU) with one BLAS thread."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits() -> Data:
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def mlp(digits: Data) -> tuple[Any, bytes]:
    X_train, _, y_train, _ = digits
    estimator = make_pipeline(
        StandardScaler(), MLPClassifier((64,), max_iter=300, random_state=0)
    ).fit(X_train, y_train)
    return estimator, sklearn_to_onnx(estimator, n_features=64)


@pytest.fixture(scope="module")
def cnn(digits: Data) -> tuple[Any, bytes]:
    import_tensorflow()
    import keras

    X_train, _, y_train, _ = digits
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
    model.fit(X_train.reshape(-1, 8, 8, 1), y_train, epochs=10, batch_size=32, verbose=0)
    return model, keras_to_onnx(model)


def _ops(model: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(model).graph.node}


def _check_int8(
    fp32: bytes, int8: bytes, X_test: np.ndarray, y_test: np.ndarray, min_agreement: float
) -> None:
    reference = load_runtime(fp32, "onnx").predict(X_test)
    scores = load_runtime(int8, "onnx").predict(X_test)
    fp32_accuracy = np.mean(reference.argmax(1) == y_test)
    int8_accuracy = np.mean(scores.argmax(1) == y_test)
    assert int8_accuracy >= fp32_accuracy - 0.01
    assert np.mean(scores.argmax(1) == reference.argmax(1)) >= min_agreement


def test_static_qdq_on_cnn(cnn: tuple[Any, bytes], digits: Data) -> None:
    _, fp32 = cnn
    X_train, X_test, _, y_test = digits
    images = X_train.reshape(-1, 8, 8, 1)
    quantized = quantize_onnx(fp32, images[:300], method="static")
    assert quantized.method == "static"
    ops = _ops(quantized.data)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert len(quantized.data) < 0.5 * len(fp32)
    _check_int8(fp32, quantized.data, X_test.reshape(-1, 8, 8, 1), y_test, 0.98)
    # "auto" picks static QDQ for convolutional graphs on every CPU
    assert quantize_onnx(fp32, images[:100]).method == "static"


def test_static_qdq_on_mlp(mlp: tuple[Any, bytes], digits: Data) -> None:
    _, fp32 = mlp
    X_train, X_test, _, y_test = digits
    quantized = quantize_onnx(fp32, X_train[:300], method="static")
    assert quantized.method == "static"
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= _ops(quantized.data)
    assert len(quantized.data) < 0.7 * len(fp32)
    _check_int8(fp32, quantized.data, X_test, y_test, 0.98)


def test_dynamic_on_mlp(mlp: tuple[Any, bytes], digits: Data) -> None:
    _, fp32 = mlp
    X_train, X_test, _, y_test = digits
    quantized = quantize_onnx(fp32, X_train[:300], method="dynamic")
    assert quantized.method == "dynamic"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(quantized.data)
    assert "QuantizeLinear" not in _ops(quantized.data)
    _check_int8(fp32, quantized.data, X_test, y_test, 0.98)


def test_auto_on_mlp_follows_cpu(mlp: tuple[Any, bytes], digits: Data) -> None:
    expected = "static" if cpu_has_fast_int8() else "dynamic"
    assert quantize_onnx(mlp[1], digits[0][:100], method="auto").method == expected


def test_cpu_flags() -> None:
    assert cpu_has_fast_int8("flags\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_fast_int8("flags\t: fpu sse avx2 avx_vnni\n")
    assert not cpu_has_fast_int8("flags\t: fpu sse sse2 avx avx2 fma\n")
    assert cpu_has_fast_int8("Features\t: fp asimd evtstrm crc32 cpuid asimdhp asimddp\n")
    assert not cpu_has_fast_int8("Features\t: fp asimd evtstrm crc32 cpuid\n")  # Pi 3/4


@pytest.mark.parametrize(
    ("estimator", "operator"),
    [
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), "LinearClassifier"),
        (RandomForestClassifier(n_estimators=5, random_state=0), "TreeEnsembleClassifier"),
    ],
    ids=["logreg", "random_forest"],
)
@pytest.mark.parametrize("method", ["auto", "static", "dynamic"])
def test_nothing_to_quantize(estimator: Any, operator: str, method: Any) -> None:
    X, y = load_iris(return_X_y=True)
    model = sklearn_to_onnx(estimator.fit(X, y), n_features=4)
    with pytest.raises(QuantizationUnsupported, match="no Conv, MatMul or Gemm") as info:
        quantize_onnx(model, X.astype(np.float32), method=method)
    assert operator in str(info.value)


def test_bad_inputs(mlp: tuple[Any, bytes]) -> None:
    _, fp32 = mlp
    with pytest.raises(ConversionError, match=r"does not fit the model input"):
        quantize_onnx(fp32, np.zeros((10, 8, 8, 1), np.float32))
    with pytest.raises(ConversionError, match="calibration data is empty"):
        quantize_onnx(fp32, np.zeros((0, 64), np.float32))
    with pytest.raises(ConversionError, match="not an ONNX model"):
        quantize_onnx(b"\x00garbage", np.zeros((10, 64), np.float32))
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_onnx(fp32, np.zeros((10, 64), np.float32), method="fp16")  # type: ignore[arg-type]


def test_temporary_files_are_removed(
    mlp: tuple[Any, bytes], digits: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    quantize_onnx(mlp[1], digits[0][:64], method="static")
    quantize_onnx(mlp[1], digits[0][:64], method="dynamic")
    assert list(tmp_path.iterdir()) == []
