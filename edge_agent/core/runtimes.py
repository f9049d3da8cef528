"""One inference interface over onnxruntime and LiteRT: named tensors in, every output out.

The engine is chosen by the artifact's format. Only numpy is imported at module import time: the
engines are imported when a model is loaded, so the on-device agent pays only for the one it uses.

`Runtime.run` takes one array per input (a mapping by name, or a bare array for a one-input
model) and returns every output by name, exactly as the engine gives it (a quantized output stays
integer; `dequantize` turns it into floats with its scale and zero point). Batches:

- a model whose every input and output starts with the same *dynamic* dimension takes any batch;
- a model whose every input and output starts with the same *fixed* dimension B (1, 3, ...) is a
  fixed-batch model: a batch of N rows is run in chunks of B, the last one padded (with copies of
  its last row), and the outputs trimmed back to N rows;
- any other model (no shared leading dimension) takes exactly the shapes it declares.

A feed the model cannot take (a missing or unknown input name, a wrong shape or rank, a dtype
that does not convert, different batch sizes across inputs) raises `InputError` (a ValueError)
naming the input and what it expects. `predict` keeps the older view of a classifier: the scores
of the first rank-2 float (or quantized) output, shape (N, C) float32.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ModelFormat = Literal["onnx", "tflite"]
MODEL_FORMATS: tuple[ModelFormat, ...] = ("onnx", "tflite")

__all__ = [
    "MODEL_FORMATS",
    "InputError",
    "ModelFormat",
    "ModelLoadError",
    "NoScoreOutput",
    "Quantization",
    "Runtime",
    "RuntimeUnavailable",
    "TensorSpec",
    "detect_format",
    "dims",
    "load_runtime",
]


class RuntimeUnavailable(Exception):
    """The inference engine needed for a model format is not installed."""


class ModelLoadError(Exception):
    """The bytes given are not a model the engine can load."""


class InputError(ValueError):
    """A feed the model cannot take; the message names the input and what it expects."""


class NoScoreOutput(ValueError):
    """`predict` was asked for class scores of a model that has no rank-2 float output."""


@dataclass(frozen=True)
class Quantization:
    """An int8/uint8 tensor's affine quantization: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor: name, shape (None for a truly dynamic dimension; fixed ones stay fixed),
    numpy dtype name, and the quantization of an int8/uint8 tensor."""

    name: str
    shape: list[int | None]
    dtype: str
    quantization: Quantization | None = None


def dims(shape: list[int | None] | tuple[int | None, ...]) -> str:
    """A shape as people read it: [None, 224, 224, 3]."""
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "float32", "float64")


class Runtime(ABC):
    """A loaded model. Subclasses set `format`, `inputs`, `outputs` and implement `_invoke`."""

    format: ModelFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def _init_batching(self) -> None:
        leading = {spec.shape[0] if spec.shape else "scalar" for spec in self.inputs}
        out_leading = {spec.shape[0] if spec.shape else "scalar" for spec in self.outputs}
        out_leading.discard("unknown")
        if len(leading) == 1 and "scalar" not in leading and out_leading <= leading | {None}:
            (first,) = leading
            self.batched = True
            self.batch_size: int | None = first if isinstance(first, int) else None
        else:
            self.batched = False
            self.batch_size = None

    @property
    def input(self) -> TensorSpec:
        """The first input (the only one of most models)."""
        return self.inputs[0]

    # -- feeds ----------------------------------------------------------------------------------
    def _feeds(self, feeds: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(spec.name for spec in self.inputs)
                raise InputError(
                    f"the model has {len(self.inputs)} inputs ({names}): feed each by name"
                )
            feeds = {self.inputs[0].name: feeds}
        wanted = {spec.name for spec in self.inputs}
        unknown = sorted(set(feeds) - wanted)
        missing = [spec.name for spec in self.inputs if spec.name not in feeds]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            expected = ", ".join(f"{s.name} {dims(s.shape)}" for s in self.inputs)
            raise InputError(f"{'; '.join(parts)}: the model takes {expected}")
        return {spec.name: self._convert(spec, feeds[spec.name]) for spec in self.inputs}

    @staticmethod
    def _convert(spec: TensorSpec, value: Any) -> np.ndarray:
        try:
            x = np.asarray(value)
        except ValueError as exc:
            raise InputError(f"input {spec.name}: ragged or malformed values ({exc})") from None
        if spec.dtype == "str":
            return x.astype(object)
        if x.dtype.kind not in "fiub":
            raise InputError(f"input {spec.name} takes numbers, got {x.dtype.name} values")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError(f"input {spec.name} contains NaN or infinity")
        want = np.dtype(spec.dtype)
        if spec.quantization is not None and x.dtype.kind == "f":
            info = np.iinfo(want)
            q = np.round(x.astype(np.float32) / spec.quantization.scale)
            q += spec.quantization.zero_point
            return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(want))
        if want.kind in "iu" and x.dtype.kind == "f":
            if not np.array_equal(x, np.round(x)):
                raise InputError(f"input {spec.name} takes {want.name} values: got fractions")
            info = np.iinfo(want)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise InputError(
                    f"input {spec.name} takes {want.name} values in [{info.min}, {info.max}]"
                )
        return np.ascontiguousarray(x.astype(want, copy=False))

    def _check_shapes(self, feeds: dict[str, np.ndarray]) -> int:
        """The batch size of the feeds (1 for a model without a batch), or InputError."""
        rows: set[int] = set()
        for spec in self.inputs:
            x = feeds[spec.name]
            want = spec.shape
            skip_first = self.batched and self.batch_size is not None
            ok = x.ndim == len(want) and all(
                w is None or w == g or (skip_first and i == 0)
                for i, (w, g) in enumerate(zip(want, x.shape, strict=True))
            )
            if not ok:
                note = ""
                if skip_first:
                    note = f" (any number of rows: it is run {self.batch_size} at a time)"
                raise InputError(
                    f"input {spec.name}: expected input shape {dims(want)}, "
                    f"got {tuple(x.shape)}{note}"
                )
            if self.batched:
                rows.add(int(x.shape[0]))
        if not self.batched:
            return 1
        if len(rows) > 1:
            raise InputError(f"the inputs have different numbers of rows: {sorted(rows)}")
        (n,) = rows
        if n == 0:
            raise InputError("expected a batch of at least one row, got an empty batch")
        return n

    # -- running --------------------------------------------------------------------------------
    def run(
        self, feeds: Mapping[str, Any] | np.ndarray, names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Every output (or those in `names`) by name for the given feeds. InputError for a
        feed the model cannot take."""
        fed = self._feeds(feeds)
        n = self._check_shapes(fed)
        wanted = names or [spec.name for spec in self.outputs]
        size = self.batch_size
        if size is None or n == size:
            return self._invoke(fed, wanted)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, size):
            chunk = {k: v[start : start + size] for k, v in fed.items()}
            got = len(next(iter(chunk.values())))
            if got < size:  # pad the last chunk with copies of its last row
                chunk = {
                    k: np.concatenate([v, np.repeat(v[-1:], size - got, axis=0)])
                    for k, v in chunk.items()
                }
            out = self._invoke(chunk, wanted)
            parts.append({k: v[:got] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in wanted}

    @abstractmethod
    def _invoke(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One engine call with feeds already checked and converted."""

    def spec(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def dequantize(self, name: str, value: np.ndarray) -> np.ndarray:
        """Output `name` as float32 (dequantized when it is a quantized tensor)."""
        quant = self.spec(name).quantization
        if quant is None:
            return np.asarray(value, dtype=np.float32)
        return ((value.astype(np.float32) - quant.zero_point) * quant.scale).astype(np.float32)

    def score_output(self) -> str:
        """The output `predict` returns: the first rank-2 float or quantized one."""
        for spec in self.outputs:
            if len(spec.shape) == 2 and (_is_float(spec.dtype) or spec.quantization is not None):
                return spec.name
        described = ", ".join(f"{s.name} {s.dtype} {dims(s.shape)}" for s in self.outputs)
        raise NoScoreOutput(f"the model has no class-score output (rank-2 float): {described}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class scores, shape (N, C) float32, for a batch `x` (a one-input classifier)."""
        name = self.score_output()
        out = self.run(x, [name])[name]
        return self.dequantize(name, out)


class OnnxRuntime(Runtime):
    """An ONNX model run by onnxruntime on the CPU.

    A sequence-of-maps output (scikit-learn's ZipMap: one {class: probability} per row) is
    turned into a (N, C) float32 array, columns in key order; its keys are in `map_keys`.
    """

    format: ModelFormat = "onnx"

    def __init__(self, data: bytes, *, threads: int = 1, memory_arena: bool = True) -> None:
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
        options.enable_cpu_mem_arena = memory_arena
        try:
            self._session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise ModelLoadError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc
        self.map_keys: dict[str, list[Any]] = {}
        self._maps: set[str] = set()
        self.inputs = [self._spec(arg) for arg in self._session.get_inputs()]
        self.outputs = [self._output_spec(arg) for arg in self._session.get_outputs()]
        if not self.inputs:
            raise ModelLoadError("the model has no inputs")
        self._init_batching()

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
        dtype = _ONNX_DTYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(f"input {arg.name} has type {arg.type}: only tensors can be fed")
        return TensorSpec(name=arg.name, shape=shape, dtype=dtype)

    def _output_spec(self, arg: Any) -> TensorSpec:
        kind = str(arg.type)
        if kind.startswith("seq(map("):
            self._maps.add(arg.name)
            return TensorSpec(name=arg.name, shape=[None, None], dtype="float32")
        dtype = _ONNX_DTYPES.get(kind)
        if dtype is None:
            raise ModelLoadError(f"output {arg.name} has type {kind}, which EdgePilot cannot read")
        shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
        return TensorSpec(name=arg.name, shape=shape, dtype=dtype)

    def _invoke(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        values = self._session.run(names, feeds)
        out: dict[str, np.ndarray] = {}
        for name, value in zip(names, values, strict=True):
            if name in self._maps:
                keys = sorted(value[0]) if value else []
                self.map_keys[name] = keys
                out[name] = np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
            else:
                out[name] = np.asarray(value)
        return out


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

    A model whose batch dimension is dynamic (-1 in its shape signature) is resized when the
    batch size changes; one with a fixed batch is run in chunks (see the module's docstring).
    """

    format: ModelFormat = "tflite"

    def __init__(self, data: bytes, *, threads: int = 1) -> None:
        interpreter_cls = _import_interpreter()
        try:
            self._interpreter = interpreter_cls(model_content=data, num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad models
            raise ModelLoadError(f"LiteRT cannot load the model: {_litert_reason(exc)}") from exc
        self._ins = self._interpreter.get_input_details()
        self._outs = {d["name"]: d for d in self._interpreter.get_output_details()}
        self.inputs = [self._spec(d) for d in self._ins]
        self.outputs = [self._spec(d) for d in self._outs.values()]
        if not self.inputs:
            raise ModelLoadError("the model has no inputs")
        self._init_batching()
        self._rows = {d["name"]: int(d["shape"][0]) if len(d["shape"]) else 0 for d in self._ins}
        self._lock = threading.Lock()

    @staticmethod
    def _spec(detail: dict[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature")
        shape_dims = signature if signature is not None and len(signature) else detail["shape"]
        shape = [int(d) if d >= 0 else None for d in shape_dims]
        scale, zero_point = detail.get("quantization", (0.0, 0))
        dtype = np.dtype(detail["dtype"])
        quant = (
            Quantization(float(scale), int(zero_point)) if dtype.kind in "iu" and scale else None
        )
        return TensorSpec(name=detail["name"], shape=shape, dtype=dtype.name, quantization=quant)

    def _resize(self, feeds: dict[str, np.ndarray]) -> None:
        changed = False
        for detail in self._ins:
            x = feeds[detail["name"]]
            if x.ndim and self._rows[detail["name"]] != x.shape[0]:
                self._interpreter.resize_tensor_input(detail["index"], list(x.shape), strict=False)
                self._rows[detail["name"]] = int(x.shape[0])
                changed = True
        if changed:
            self._interpreter.allocate_tensors()

    def _invoke(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            if self.batched and self.batch_size is None:
                self._resize(feeds)
            for detail in self._ins:
                self._interpreter.set_tensor(detail["index"], feeds[detail["name"]])
            self._interpreter.invoke()
            return {
                n: np.array(self._interpreter.get_tensor(self._outs[n]["index"])) for n in names
            }


def _litert_reason(exc: BaseException) -> str:
    text = str(exc)
    marker = "unresolved custom op:"
    if marker in text:
        op = text.split(marker, 1)[1].strip().split()[0].rstrip(".")
        return f"it needs the custom op {op}, which this LiteRT build does not provide"
    return _first_line(exc)


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


def load_runtime(
    model: bytes | Path, fmt: ModelFormat, *, threads: int = 1, memory_arena: bool = True
) -> Runtime:
    """Load a model (bytes or a file path) with the engine for its format.

    `memory_arena=False` turns off onnxruntime's CPU arena (memory goes back when a request's
    tensors are freed, at some speed cost). Raises ModelLoadError when the data is not a
    loadable model, RuntimeUnavailable when the engine is not installed, and ValueError for an
    unknown format or a bad thread count.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    data = _read(model)
    if not data:
        raise ModelLoadError("the model is empty (0 bytes)")
    if fmt == "onnx":
        return OnnxRuntime(data, threads=threads, memory_arena=memory_arena)
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
