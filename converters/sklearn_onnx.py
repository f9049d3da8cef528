"""scikit-learn classifiers to ONNX, with skl2onnx."""

from __future__ import annotations

from typing import Any

from converters.errors import ConversionError

#: Opsets the exported graphs use: onnxruntime 1.20+ runs both.
ONNX_OPSET = 17
ONNX_ML_OPSET = 3


def _final_estimator(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def sklearn_to_onnx(estimator: Any, n_features: int) -> bytes:
    """Serialise a fitted scikit-learn classifier (or pipeline ending in one) as ONNX.

    The graph has one float32 input named "input" of shape [None, n_features] and emits a
    "label" output then a "probabilities" output of shape [None, n_classes] (no ZipMap).
    """
    if n_features < 1:
        raise ConversionError(f"n_features must be at least 1, got {n_features}")
    final = _final_estimator(estimator)
    if not hasattr(final, "predict_proba"):
        raise ConversionError(
            f"{type(final).__name__} is not a probabilistic classifier (no predict_proba)"
        )
    if not hasattr(final, "classes_"):
        raise ConversionError(f"{type(final).__name__} is not fitted")

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    try:
        proto = convert_sklearn(
            estimator,
            initial_types=[("input", FloatTensorType([None, n_features]))],
            options={id(final): {"zipmap": False}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
        )
    except Exception as exc:  # skl2onnx raises many types (RuntimeError, NotImplementedError...)
        raise ConversionError(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    data: bytes = proto.SerializeToString()
    return data
