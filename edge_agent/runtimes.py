"""One inference interface over onnxruntime and LiteRT.

The engine is chosen by the artifact's format. Only numpy is imported at module import time: the
engines are imported when a model is loaded, so the on-device agent pays only for the one it uses.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ModelFormat = Literal["onnx", "tflite"]
MODEL_FORMATS: tuple[ModelFormat, ...] = ("onnx", "tflite")

__all__ = [
    "MODEL_FORMATS",
    "ModelFormat",
    "ModelLoadError",
    "Runtime",
    "RuntimeUnavailable",
    "TensorSpec",
    "detect_format",
    "load_runtime",
]


class RuntimeUnavailable(Exception):
    """The inference engine needed for a model format is not installed."""


class ModelLoadError(Exception):
    """The bytes given are not a model the engine can load."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and numpy dtype name of a model tensor."""

    name: str
    shape: list[int | None]
    dtype: str


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "float32", "float64")


class Runtime(ABC):
    """A loaded model: `predict` maps a batch of inputs to class scores."""

    format: ModelFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class scores, shape (N, C) float32, for a batch `x` of any size N."""

    @property
    def input(self) -> TensorSpec:
        """The (single) input tensor the model is fed through."""
        return self.inputs[0]

    def _check_input(self, x: np.ndarray) -> None:
        spec = self.input
        expected = spec.shape
        shape_ok = x.ndim == len(expected) and all(
            want is None or want == got for want, got in zip(expected, x.shape, strict=True)
        )
        if not shape_ok:
            shown = "[" + ", ".join("None" if d is None else str(d) for d in expected) + "]"
            raise ValueError(f"expected input shape {shown}, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("expected a batch of at least one sample, got an empty batch")


def _score_index(outputs: list[TensorSpec], quantized: set[int] | None = None) -> int:
    """Index of the first rank-2 output with a float (or quantized, dequantizable) dtype."""
    for i, spec in enumerate(outputs):
        floatish = _is_float(spec.dtype) or (quantized is not None and i in quantized)
        if floatish and len(spec.shape) == 2:
            return i
    described = ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in outputs)
    raise ModelLoadError(f"model has no class-score output (a rank-2 float tensor): {described}")


class OnnxRuntime(Runtime):
    """An ONNX model run by onnxruntime on the CPU."""

    format: ModelFormat = "onnx"

    def __init__(self, data: bytes, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeUnavailable(
                "onnxruntime is not installed; install it to run .onnx models"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise ModelLoadError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc
        self.inputs = [self._spec(arg) for arg in self._session.get_inputs()]
        self.outputs = [self._spec(arg) for arg in self._session.get_outputs()]
        if len(self.inputs) != 1:
            raise ModelLoadError(f"expected a model with one input, found {len(self.inputs)}")
        self._score = _score_index(self.outputs)
        self._input_dtype = np.dtype(self.input.dtype)
        self._output_names = [self.outputs[self._score].name]

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
        return TensorSpec(name=arg.name, shape=shape, dtype=_ONNX_DTYPES.get(arg.type, arg.type))

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self._check_input(x)
        feed = {self.input.name: np.ascontiguousarray(x, dtype=self._input_dtype)}
        (scores,) = self._session.run(self._output_names, feed)
        return np.asarray(scores, dtype=np.float32)


def _import_interpreter() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeUnavailable(
                "neither ai-edge-litert nor tflite-runtime is installed; "
                "install ai-edge-litert to run .tflite models"
            ) from exc
    return Interpreter


class LiteRtRuntime(Runtime):
    """A TFLite model run by the LiteRT interpreter.

    The interpreter has a fixed batch size: the input is resized when the batch size changes. A
    quantized (int8/uint8) input is quantized with its scale and zero point, and quantized outputs
    are dequantized, so callers always feed and get floats.
    """

    format: ModelFormat = "tflite"

    def __init__(self, data: bytes, *, threads: int = 1) -> None:
        interpreter_cls = _import_interpreter()
        try:
            self._interpreter = interpreter_cls(model_content=data, num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad models
            raise ModelLoadError(f"LiteRT cannot load the model: {_first_line(exc)}") from exc
        in_details = self._interpreter.get_input_details()
        out_details = self._interpreter.get_output_details()
        if len(in_details) != 1:
            raise ModelLoadError(f"expected a model with one input, found {len(in_details)}")
        self._in = in_details[0]
        self._outs = out_details
        self.inputs = [self._spec(d) for d in in_details]
        self.outputs = [self._spec(d) for d in out_details]
        quantized = {i for i, d in enumerate(out_details) if self._quant(d) is not None}
        self._score = _score_index(self.outputs, quantized)
        self._batch = int(self._in["shape"][0])
        self._lock = threading.Lock()

    @staticmethod
    def _quant(detail: dict[str, Any]) -> tuple[float, int] | None:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if np.dtype(detail["dtype"]).kind in "iu" and scale:
            return float(scale), int(zero_point)
        return None

    @staticmethod
    def _spec(detail: dict[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature")
        dims = signature if signature is not None and len(signature) else detail["shape"]
        shape = [int(d) if d >= 0 else None for d in dims]
        if shape:  # the batch dimension is resized on demand
            shape[0] = None
        return TensorSpec(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name)

    def _quantize_input(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        quant = self._quant(self._in)
        if quant is None:
            return np.ascontiguousarray(x, dtype=dtype)
        scale, zero_point = quant
        info = np.iinfo(dtype)
        q = np.round(np.asarray(x, dtype=np.float32) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        shape = [batch, *(int(d) for d in self._in["shape"][1:])]
        self._interpreter.resize_tensor_input(self._in["index"], shape, strict=False)
        self._interpreter.allocate_tensors()
        self._batch = batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self._check_input(x)
        fed = self._quantize_input(x)
        out = self._outs[self._score]
        with self._lock:
            self._resize(int(x.shape[0]))
            self._interpreter.set_tensor(self._in["index"], fed)
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(out["index"])
        quant = self._quant(out)
        if quant is None:
            return np.array(raw, dtype=np.float32)
        scale, zero_point = quant
        return ((raw.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _read(model: bytes | Path) -> bytes:
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    try:
        return Path(model).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {model}: {exc.strerror or exc}") from exc


def load_runtime(model: bytes | Path, fmt: ModelFormat, *, threads: int = 1) -> Runtime:
    """Load a model (bytes or a file path) with the engine for its format.

    Raises ModelLoadError when the data is not a loadable model, RuntimeUnavailable when the
    engine is not installed, and ValueError for an unknown format or a bad thread count.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    data = _read(model)
    if not data:
        raise ModelLoadError("the model is empty (0 bytes)")
    if fmt == "onnx":
        return OnnxRuntime(data, threads=threads)
    if fmt == "tflite":
        if data[4:8] != b"TFL3":
            raise ModelLoadError("not a TFLite model: the TFL3 identifier is missing")
        return LiteRtRuntime(data, threads=threads)
    raise ValueError(f"unknown model format {fmt!r}; expected one of {', '.join(MODEL_FORMATS)}")


def detect_format(data: bytes) -> ModelFormat | None:
    """The format of a serialised model, from its content, or None if it is neither."""
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return "tflite"
    if not data:
        return None
    try:
        import onnx
    except ImportError:
        return _detect_onnx_with_onnxruntime(data)
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    if proto.ir_version > 0 and proto.HasField("graph") and len(proto.graph.node) > 0:
        return "onnx"
    return None


def _detect_onnx_with_onnxruntime(data: bytes) -> ModelFormat | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception:  # any failure to load means "not an ONNX model we can use"
        return None
    return "onnx"
