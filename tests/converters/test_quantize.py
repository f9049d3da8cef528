"""converters.quantize: onnxruntime int8 quantization of CNN and MLP graphs, run for real."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import (
    ConversionError,
    QuantizationUnsupported,
    cpu_has_fast_int8,
    keras_to_onnx,
    quantize_onnx,
    sklearn_to_onnx,
)
from edge_agent.core.runtimes import load_runtime

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def cnn_onnx(digits_cnn: Any) -> bytes:
    return keras_to_onnx(digits_cnn)


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


def test_static_qdq_on_cnn(cnn_onnx: bytes, digits: Data) -> None:
    fp32 = cnn_onnx
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


def test_static_qdq_on_mlp(scaled_mlp: tuple[Any, bytes], digits: Data) -> None:
    _, fp32 = scaled_mlp
    X_train, X_test, _, y_test = digits
    quantized = quantize_onnx(fp32, X_train[:300], method="static")
    assert quantized.method == "static"
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= _ops(quantized.data)
    assert len(quantized.data) < 0.7 * len(fp32)
    _check_int8(fp32, quantized.data, X_test, y_test, 0.98)


def test_dynamic_on_mlp(scaled_mlp: tuple[Any, bytes], digits: Data) -> None:
    _, fp32 = scaled_mlp
    X_train, X_test, _, y_test = digits
    quantized = quantize_onnx(fp32, X_train[:300], method="dynamic")
    assert quantized.method == "dynamic"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(quantized.data)
    assert "QuantizeLinear" not in _ops(quantized.data)
    _check_int8(fp32, quantized.data, X_test, y_test, 0.98)


def test_auto_on_mlp_follows_cpu(scaled_mlp: tuple[Any, bytes], digits: Data) -> None:
    expected = "static" if cpu_has_fast_int8() else "dynamic"
    assert quantize_onnx(scaled_mlp[1], digits[0][:100], method="auto").method == expected


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


def test_bad_inputs(scaled_mlp: tuple[Any, bytes]) -> None:
    _, fp32 = scaled_mlp
    with pytest.raises(ConversionError, match=r"does not fit the model input"):
        quantize_onnx(fp32, np.zeros((10, 8, 8, 1), np.float32))
    with pytest.raises(ConversionError, match="calibration data is empty"):
        quantize_onnx(fp32, np.zeros((0, 64), np.float32))
    with pytest.raises(ConversionError, match="not an ONNX model"):
        quantize_onnx(b"\x00garbage", np.zeros((10, 64), np.float32))
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_onnx(fp32, np.zeros((10, 64), np.float32), method="fp16")  # type: ignore[arg-type]


def test_temporary_files_are_removed(
    scaled_mlp: tuple[Any, bytes], digits: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    quantize_onnx(scaled_mlp[1], digits[0][:64], method="static")
    quantize_onnx(scaled_mlp[1], digits[0][:64], method="dynamic")
    assert list(tmp_path.iterdir()) == []
