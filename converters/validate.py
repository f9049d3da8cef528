"""Checks that uploaded bytes are an ONNX or TFLite model its runtime loads, and describes it."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import BaseModel, ConfigDict

from converters.errors import InvalidModelFile
from edge_agent.core.runtimes import (
    ModelFormat,
    ModelLoadError,
    TensorSpec,
    detect_format,
    load_runtime,
)

#: File extensions and the format each promises.
EXTENSIONS: dict[str, ModelFormat] = {".onnx": "onnx", ".tflite": "tflite"}
_FORMAT_NAMES = {"onnx": "ONNX", "tflite": "TFLite"}


class ModelFileInfo(BaseModel):
    """What a model file holds: its format, every input and output tensor, and notes for the
    uploader (an extension that did not match the content)."""

    model_config = ConfigDict(frozen=True)

    format: ModelFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = []


def inspect_model_file(data: bytes, filename: str | None = None) -> ModelFileInfo:
    """Detect the format of `data` by its content, load it with the real runtime (onnxruntime
    for ONNX, LiteRT for TFLite) and describe it.

    Any model that loads is accepted, whatever its inputs and outputs are: what they mean is the
    version's task head, not a rule of the file. The file name's extension is not trusted: a
    TFLite file named `.onnx` is read as TFLite (and `notes` says so). Raises InvalidModelFile
    naming the file and the reason for empty or garbage bytes ("<name> is not an ONNX or TFLite
    model: ...") and for a model its runtime cannot load ("<name> does not load: <the runtime's
    message>", e.g. a truncated file, or a custom op the runtime lacks, named).
    RuntimeUnavailable (from edge_agent.core.runtimes) means the engine for the detected format is
    not installed.
    """
    name = filename or "the uploaded file"

    def invalid(reason: str) -> InvalidModelFile:
        return InvalidModelFile(f"{name} is not an ONNX or TFLite model: {reason}")

    if not data:
        raise invalid("the file is empty")
    fmt = detect_format(data)
    if fmt is None:
        raise invalid("its content is neither a TFLite flatbuffer nor an ONNX protobuf")
    notes = []
    if filename is not None:
        suffix = PurePath(filename).suffix.lower()
        expected = EXTENSIONS.get(suffix)
        if expected is not None and expected != fmt:
            notes.append(
                f"{name}: the {suffix} extension says {_FORMAT_NAMES[expected]} but the content "
                f"is {_FORMAT_NAMES[fmt]}: loaded as {_FORMAT_NAMES[fmt]}"
            )
    try:
        runtime = load_runtime(data, fmt)
    except ModelLoadError as exc:
        raise InvalidModelFile(f"{name} does not load: {exc}") from exc
    return ModelFileInfo(format=fmt, inputs=runtime.inputs, outputs=runtime.outputs, notes=notes)
