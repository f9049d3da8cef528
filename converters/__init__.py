"""EdgePilot."""

from converters.errors import ConversionError, InvalidModelFile, QuantizationUnsupported
from converters.keras_convert import keras_to_onnx, keras_to_tflite
from converters.quantize import QuantizedModel, QuantizeMethod, cpu_has_fast_int8, quantize_onnx
from converters.report import (
    ArtifactReport,
    ConversionReport,
    ReferenceMetrics,
    build_report,
    evaluate_artifact,
)
from converters.sklearn_onnx import sklearn_to_onnx
from converters.torch_onnx import torch_to_onnx
from converters.validate import ModelFileInfo, inspect_model_file

__all__ = [
    "ArtifactReport",
    "ConversionError",
    "ConversionReport",
    "InvalidModelFile",
    "ModelFileInfo",
    "QuantizationUnsupported",
    "QuantizeMethod",
    "QuantizedModel",
    "ReferenceMetrics",
    "build_report",
    "cpu_has_fast_int8",
    "evaluate_artifact",
    "inspect_model_file",
    "keras_to_onnx",
    "keras_to_tflite",
    "quantize_onnx",
    "sklearn_to_onnx",
    "torch_to_onnx",
]
