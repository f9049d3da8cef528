"""int8 quantization of ONNX graphs with onnxruntime's quantizers.

Static QDQ quantization (weights and activations int8, ranges calibrated on sample inputs) suits
convolutional graphs; dynamic quantization (int8 weights, activations quantized per batch at run
time) suits MatMul-only graphs (MLPs) on CPUs without fast int8 dot products.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.errors import ConversionError, QuantizationUnsupported

QuantizeMethod = Literal["auto", "static", "dynamic"]

#: Operators onnxruntime quantizes to int8 that dominate a classifier's compute.
QUANTIZABLE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
#: Calibration samples used at most, and per batch fed to the calibrator.
MAX_CALIBRATION = 512
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class QuantizedModel:
    """An int8 ONNX graph and how it was quantized ("static" or "dynamic")."""

    data: bytes
    method: Literal["static", "dynamic"]


def cpu_has_fast_int8(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has int8 dot-product instructions (x86 VNNI, Arm dotprod).

    Without them onnxruntime's static QDQ MatMul is often slower than fp32 on small MLPs.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return platform.system() == "Darwin" and platform.machine() == "arm64"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})


class _DropPreprocessingHint(logging.Filter):
    """Drops onnxruntime's "Please consider pre-processing" warning: its shape pre-processing
    (quant_pre_process) drops the float value_info of scikit-learn graphs and breaks
    calibration, so it is skipped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    hint_filter = _DropPreprocessingHint()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)


class _CalibrationReader:
    """Feeds `calibration` to onnxruntime's calibrator in small batches."""

    def __init__(self, input_name: str, calibration: np.ndarray) -> None:
        self._batches = [
            {input_name: calibration[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(calibration), CALIBRATION_BATCH)
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        batch = self._batches[self._next]
        self._next += 1
        return batch

    def rewind(self) -> None:
        self._next = 0


def _load_proto(model: bytes) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(model)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"not an ONNX model: {exc}") from exc
    if not proto.HasField("graph") or not proto.graph.node:
        raise ConversionError("not an ONNX model: it has no graph")
    return proto


def _op_types(proto: Any) -> set[str]:
    """Operator types; those outside the default ONNX domain are prefixed with their domain."""
    return {
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        for node in proto.graph.node
    }


def _check_calibration(proto: Any, calibration: np.ndarray) -> tuple[str, np.ndarray]:
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(f"expected a graph with one input, found {len(inputs)}")
    graph_input = inputs[0]
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in graph_input.type.tensor_type.shape.dim
    ]
    data = np.ascontiguousarray(calibration, dtype=np.float32)[:MAX_CALIBRATION]
    fits = data.ndim == len(dims) and all(
        want is None or want == got for want, got in zip(dims[1:], data.shape[1:], strict=True)
    )
    if not fits:
        raise ConversionError(
            f"calibration data of shape {data.shape} does not fit the model input "
            f"{['None' if d is None else d for d in dims]}"
        )
    if len(data) == 0:
        raise ConversionError("calibration data is empty")
    return graph_input.name, data


def _choose_method(ops: set[str], method: QuantizeMethod) -> Literal["static", "dynamic"]:
    if not ops & QUANTIZABLE_OPS:
        raise QuantizationUnsupported(
            "the graph has no Conv, MatMul or Gemm to quantize (its operators: "
            f"{', '.join(sorted(ops))})"
        )
    if method == "dynamic" and not ops & {"MatMul", "Gemm"}:
        raise QuantizationUnsupported(
            "dynamic quantization covers MatMul/Gemm only and this graph has none"
        )
    if method in ("static", "dynamic"):
        return method
    if ops & CONV_OPS:
        return "static"  # dynamic emits ConvInteger, which is several times slower than fp32
    return "static" if cpu_has_fast_int8() else "dynamic"


def quantize_onnx(
    model: bytes, calibration: np.ndarray, method: QuantizeMethod = "auto"
) -> QuantizedModel:
    """Quantize an ONNX classifier to int8.

    "static": QDQ with per-channel int8 weights and uint8 activations (U8S8) calibrated (min/max)
    on `calibration` (samples shaped like the model input). U8S8 rather than S8S8: with int8
    activations onnxruntime 1.32 left a Conv of the built-in CNN unfused (float Conv between
    DequantizeLinear/QuantizeLinear) and ran it 2x slower on x86.
    "dynamic": int8 MatMul/Gemm weights, activations quantized per batch at run time.
    "auto": static for graphs with convolutions; for MatMul-only graphs static when the CPU has
    int8 dot products (VNNI / Arm dotprod), else dynamic. Raises QuantizationUnsupported when the
    graph has nothing to quantize (for example the ai.onnx.ml LinearClassifier or tree ensembles).
    """
    if method not in ("auto", "static", "dynamic"):
        raise ValueError(f"unknown quantization method {method!r}; use auto, static or dynamic")
    proto = _load_proto(model)
    chosen = _choose_method(_op_types(proto), method)
    input_name, data = _check_calibration(proto, calibration)

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="edgepilot-quant-") as tmp:
        source = Path(tmp) / "model.onnx"
        target = Path(tmp) / "model.int8.onnx"
        source.write_bytes(model)
        try:
            with _quiet_quantizer():
                if chosen == "static":
                    quantize_static(
                        str(source),
                        str(target),
                        _CalibrationReader(input_name, data),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"QDQDisableWeightAdjustForInt32Bias": True},
                    )
                else:
                    quantize_dynamic(
                        str(source),
                        str(target),
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"],
                    )
        except Exception as exc:  # the quantizers raise many types
            raise ConversionError(f"{chosen} int8 quantization failed: {exc}") from exc
        quantized = target.read_bytes()
    _check_loads(quantized)
    return QuantizedModel(data=quantized, method=chosen)


def _check_loads(data: bytes) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ConversionError(f"the quantized graph does not load in onnxruntime: {exc}") from exc
